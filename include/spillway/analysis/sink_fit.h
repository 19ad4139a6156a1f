// Virtual sinks fitted to the real ones, for nullsink:W,fit=FILE (kv/virtual_sinks.h):
// one logit and, optionally, one value vector per layer and query head, chosen so that a
// window of W tokens plus the virtual sink gives each head the output the real sinks give
// it.
//
// The calibration stream runs under sink:S+W. Every query whose window is full (stream
// index >= S + W - 1) gives, per head with sink slots, a sample: the head's output o
// (the target), its window's mean value o_w (the probability-weighted mean over the window
// alone) and the window's log-sum-exp lse_w, from the recorded probabilities and the
// cached values. A virtual sink of logit c and value u in place of the real sinks outputs
//
//   o(c, u) = (1 - pi) o_w + pi u,   pi = sigmoid(c - lse_w),
//
// and the fit minimizes, per head, the squared error sum_t |o_t - o(c, u)_t|^2 over the
// samples. For a fixed c the best u is a linear least-squares problem with the closed form
// u = sum_t pi_t r_t / sum_t pi_t^2, r_t = o_t - (1 - pi_t) o_w,t (with a small ridge,
// 1e-8 per sample, added to the denominator: it keeps u finite for a sink whose share
// vanishes); what remains is a function of c alone, minimized by a scan and a
// golden-section search. Without values u = 0 and only c is searched. Each layer is
// fitted with the real sinks in the layers below (teacher forcing), not with the virtual
// ones.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "spillway/core/types.h"
#include "spillway/kv/policy.h"
#include "spillway/kv/virtual_sinks.h"
#include "spillway/model/model.h"

namespace spillway::analysis {

// One head's samples.
struct HeadSamples {
  int64_t head_dim = 0;
  std::vector<float> target;       // [n][head_dim] the head's output with its real sinks
  std::vector<float> window;       // [n][head_dim] the window's mean value o_w
  std::vector<double> window_lse;  // [n] lse_w; -inf when the window has no mass at all
  std::vector<double> sink_lse;    // [n] the log-sum-exp of the scores on the real sinks
  int64_t size() const { return static_cast<int64_t>(window_lse.size()); }
};

// The squared error sum_t |o_t - o(c, u)_t|^2 of a virtual sink (c, u) over the samples;
// u empty: no value (u = 0); c = -inf: no sink (the window alone).
double sink_fit_error(const HeadSamples& s, double c, std::span<const float> u = {});
// The same with the real sinks' exact logit of each query (sink_lse) and no value.
double sink_fit_error_exact_logit(const HeadSamples& s);

struct HeadFit {
  double logit = 0;          // -inf: no sink does better than the window alone
  std::vector<float> value;  // [head_dim], empty when fitted without values (or no sink)
  double error = 0;          // sink_fit_error at the fit
};
// The best (c, u), or c alone with values = false. No samples: no sink.
HeadFit fit_head_sink(const HeadSamples& s, bool values);

struct SinkFitOptions {
  // The real sinks to imitate: a sink:S+W (S >= 1, W > S) with an f32 cache. The fit is for
  // nullsink:W; other windows use it too, less exactly.
  kv::PolicySpec policy = kv::PolicySpec("sink:4+256");
  bool values = true;       // fit a value vector per head (else the logit alone)
  int64_t chunk = 64;       // tokens per forward pass
  int threads = 0;          // 0: all cores
  std::string calibration;  // the stream in words (text, offset), recorded in the file
  // Called as tokens are fed, with (tokens done, tokens in all).
  std::function<void(int64_t, int64_t)> progress;
};

struct SinkFitResult {
  kv::VirtualSinks sinks;  // the fit, with the model's identity
  int64_t samples = 0;     // queries per head
  // Per head, [n_layer * n_head] (NaN for a head without sink slots): the mean share of
  // its softmax on the real sinks over the samples; the logit nullsink:W's default
  // calibration (calib=first:S) would freeze on this stream (the mean over queries
  // S..W-1 of the log-sum-exp on the first S tokens); and the squared error of its output
  // summed over the samples with no sink (window), with the real sinks' exact per-query
  // logit and no value (exact), the frozen logit (frozen), the fitted logit without value
  // (logit) and the fit (fit; equal to logit when fitted without values), and sum_t |o_t|^2
  // (target).
  std::vector<double> sink_mass, frozen_logit;
  std::vector<double> err_window, err_exact, err_frozen, err_logit, err_fit, target;
  double seconds = 0;
};

// Fits the virtual sinks of `model` on the stream `tokens` (which must reach past the
// cache: at least S + W tokens). InvalidArgument for another policy, another KV type or a
// stream too short.
SinkFitResult fit_virtual_sinks(const model::Model& model, std::span<const TokenId> tokens,
                                const SinkFitOptions& opts);

}  // namespace spillway::analysis
