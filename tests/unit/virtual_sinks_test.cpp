// The virtual sink file (kv/virtual_sinks.h) as a reader of hostile input: a file written
// and read back is the same table; every truncation, a wrong magic, version, flags or size,
// a NaN or infinite number, and random corruption are a FormatError naming the file, never
// a crash or an allocation the file does not back; a table of another model is refused
// when a cache is made (InvalidArgument), and nullsink's fit= option is checked.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>

#include "spillway/core/error.h"
#include "spillway/kv/cache.h"
#include "spillway/kv/policy.h"
#include "spillway/kv/virtual_sinks.h"
#include "spillway/model/model.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway {
namespace {

using kv::VirtualSinks;

VirtualSinks example(bool values) {
  VirtualSinks s;
  s.architecture = "llama";
  s.model_name = "tiny-test";
  s.n_layer = 2;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.head_dim = 8;
  s.model_fingerprint = 0x0123456789abcdefULL;
  s.calibration = "a test";
  for (int i = 0; i < 8; ++i) s.logits.push_back(0.25f * static_cast<float>(i) - 1.0f);
  s.logits[5] = -std::numeric_limits<float>::infinity();  // a head without a sink
  if (values)
    for (int i = 0; i < 8 * 8; ++i) s.values.push_back(std::sin(static_cast<float>(i)));
  return s;
}

std::string path_of(const std::string& name) {
  return (test::temp_dir() / name).string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Loading `bytes` is a FormatError whose message names the file and contains `what`.
void expect_format_error(const std::string& bytes, const std::string& what) {
  const std::string p = path_of("bad.sinks");
  write_bytes(p, bytes);
  try {
    kv::load_virtual_sinks(p);
    ADD_FAILURE() << "loaded a bad file; expected an error about '" << what << "'";
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

// Offsets of the fixed header (the format in kv/virtual_sinks.h).
constexpr size_t kVersionAt = 8, kFlagsAt = 12, kSizesAt = 16, kStringsAt = 40;

template <class T>
std::string with(std::string bytes, size_t at, T v) {
  std::memcpy(bytes.data() + at, &v, sizeof v);
  return bytes;
}

TEST(VirtualSinks, ReadBackAsWritten) {
  for (bool values : {false, true}) {
    const VirtualSinks s = example(values);
    const std::string p = path_of("ok.sinks");
    kv::save_virtual_sinks(s, p);
    const VirtualSinks r = kv::load_virtual_sinks(p);
    EXPECT_EQ(r.architecture, s.architecture);
    EXPECT_EQ(r.model_name, s.model_name);
    EXPECT_EQ(r.calibration, s.calibration);
    EXPECT_EQ(r.n_layer, s.n_layer);
    EXPECT_EQ(r.n_head, s.n_head);
    EXPECT_EQ(r.n_head_kv, s.n_head_kv);
    EXPECT_EQ(r.head_dim, s.head_dim);
    EXPECT_EQ(r.model_fingerprint, s.model_fingerprint);
    EXPECT_EQ(r.logits, s.logits);
    EXPECT_EQ(r.values, s.values);
    EXPECT_EQ(r.has_values(), values);
    EXPECT_EQ(r.layer_logits(1), r.logits.data() + 4);
    EXPECT_EQ(r.layer_values(1), values ? r.values.data() + 32 : nullptr);
    // The size the header promises, to the byte.
    const std::string bytes = read_bytes(p);
    EXPECT_EQ(bytes.size(), kStringsAt + 12 + 5 + 9 + 6 + 4 * 8 + (values ? 4 * 64 : 0));
  }
}

TEST(VirtualSinks, EveryTruncationIsAFormatError) {
  kv::save_virtual_sinks(example(true), path_of("ok.sinks"));
  const std::string good = read_bytes(path_of("ok.sinks"));
  for (size_t n = 0; n < good.size(); ++n) {
    SCOPED_TRACE(n);
    expect_format_error(good.substr(0, n), "");
  }
  expect_format_error(good.substr(0, 20), "truncated");
  expect_format_error(good.substr(0, good.size() - 1), "truncated");
  expect_format_error(good + '\0', "extra bytes");
}

TEST(VirtualSinks, BadHeadersAndNumbersAreFormatErrors) {
  kv::save_virtual_sinks(example(true), path_of("ok.sinks"));
  const std::string good = read_bytes(path_of("ok.sinks"));
  std::string magic = good;
  magic[0] = 'G';
  expect_format_error(magic, "bad magic");
  expect_format_error(with<uint32_t>(good, kVersionAt, 2), "version 2");
  expect_format_error(with<uint32_t>(good, kFlagsAt, 3), "unknown flags");
  // Values announced but not there (the logits-only file with the flag set), and the
  // other way round.
  expect_format_error(with<uint32_t>(good, kFlagsAt, 0), "extra bytes");
  expect_format_error(with<uint32_t>(good, kSizesAt, 0), "layers 0");
  expect_format_error(with<uint32_t>(good, kSizesAt + 4, 0xffffffffu), "heads 4294967295");
  expect_format_error(with<uint32_t>(good, kSizesAt + 8, 3), "KV heads");
  // A size that would need gigabytes the file does not have: refused before any allocation.
  expect_format_error(with<uint32_t>(with<uint32_t>(good, kSizesAt, 65536), kSizesAt + 12, 65536),
                      "truncated");
  expect_format_error(with<uint32_t>(good, kStringsAt, 1u << 30), "at most 4096");
  expect_format_error(with<uint32_t>(good, kStringsAt, 1000), "truncated");
  // The numbers: logits after the three strings ("llama", "tiny-test", "a test").
  const size_t logits = kStringsAt + 12 + 5 + 9 + 6, values = logits + 4 * 8;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  expect_format_error(with<float>(good, logits + 4 * 6, nan), "logit of layer 1 head 2 is nan");
  expect_format_error(with<float>(good, logits, inf), "logit of layer 0 head 0 is inf");
  expect_format_error(with<float>(good, values + 4 * 9, -inf), "value 1 of layer 0 head 1");
  expect_format_error(with<float>(good, values + 4 * 63, nan), "value 7 of layer 1 head 3");
  // -inf is a logit: a head without a sink.
  write_bytes(path_of("neg.sinks"), with<float>(good, logits, -inf));
  EXPECT_TRUE(std::isinf(kv::load_virtual_sinks(path_of("neg.sinks")).logits[0]));
}

TEST(VirtualSinks, RandomCorruptionIsAnErrorOrAValidTable) {
  kv::save_virtual_sinks(example(true), path_of("ok.sinks"));
  const std::string good = read_bytes(path_of("ok.sinks"));
  std::mt19937 rng(9);
  int errors = 0;
  for (int i = 0; i < 500; ++i) {
    std::string b = good;
    for (int flips = 1 + static_cast<int>(rng() % 4); flips > 0; --flips)
      b[rng() % b.size()] = static_cast<char>(rng());
    if (rng() % 4 == 0) b.resize(rng() % b.size());
    const std::string p = path_of("fuzz.sinks");
    write_bytes(p, b);
    try {
      const VirtualSinks s = kv::load_virtual_sinks(p);
      EXPECT_EQ(s.fault(), "");  // what loads is usable
    } catch (const FormatError&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 50);
}

TEST(VirtualSinks, MissingFilesAndBadTablesAreErrors) {
  EXPECT_THROW(kv::load_virtual_sinks(path_of("no-such.sinks")), IoError);
  VirtualSinks s = example(true);
  s.values[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(kv::save_virtual_sinks(s, path_of("x.sinks")), InvalidArgument);
  s = example(false);
  s.logits.pop_back();
  EXPECT_NE(s.fault(), "");
  EXPECT_THROW(kv::save_virtual_sinks(s, path_of("x.sinks")), InvalidArgument);
  EXPECT_THROW(kv::save_virtual_sinks(example(false), (test::temp_dir() / "no-dir" / "x").string()),
               IoError);
}

// The tiny model's table: every head gets logit 0.5, no value.
VirtualSinks table_for(const model::Model& m) {
  const model::ModelConfig& c = m.config();
  VirtualSinks s;
  s.architecture = c.architecture;
  s.n_layer = c.n_layer;
  s.n_head = c.n_head;
  s.n_head_kv = c.n_head_kv;
  s.head_dim = c.head_dim;
  s.model_fingerprint = c.fingerprint;
  s.logits.assign(static_cast<size_t>(c.n_layer * c.n_head), 0.5f);
  return s;
}

TEST(VirtualSinks, ACacheOfAnotherModelRefusesThem) {
  test::TinyModelSpec a;
  const auto ma = model::Model::load(test::write_tiny_model(test::temp_dir(), a, "a.gguf"));
  const auto ma2 = model::Model::load(test::write_tiny_model(test::temp_dir(), a, "a2.gguf"));
  test::TinyModelSpec b = a;
  b.seed = 2;  // the same shapes and tensor table, other weights
  const auto mb = model::Model::load(test::write_tiny_model(test::temp_dir(), b, "b.gguf"));
  test::TinyModelSpec c = a;
  c.n_layer = 3;
  const auto mc = model::Model::load(test::write_tiny_model(test::temp_dir(), c, "c.gguf"));
  EXPECT_NE(ma->config().fingerprint, 0u);
  EXPECT_EQ(ma->config().fingerprint, ma2->config().fingerprint);  // the same model, two files
  EXPECT_NE(ma->config().fingerprint, mb->config().fingerprint);
  EXPECT_NE(ma->config().fingerprint, mc->config().fingerprint);

  const std::string p = path_of("a.sinks");
  kv::save_virtual_sinks(table_for(*ma), p);
  SessionOptions so;
  so.policy = kv::PolicySpec("nullsink:16,fit=" + p);
  EXPECT_EQ(so.policy.str(), "nullsink:16,fit=" + p);
  EXPECT_NO_THROW({ Session s(*ma, so); });
  EXPECT_NO_THROW({ Session s(*ma2, so); });
  for (const model::Model* other : {mb.get(), mc.get()}) {
    try {
      Session s(*other, so);
      ADD_FAILURE() << "a session of another model took the sinks";
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p), std::string::npos) << msg;
      EXPECT_NE(msg.find("not to this model"), std::string::npos) << msg;
    }
  }
  // A shape built by hand (no fingerprint) is checked by its sizes.
  kv::CacheShape shape;
  shape.n_head_kv = 2;
  shape.head_dim = 16;
  shape.layers.resize(2);
  EXPECT_NO_THROW(kv::check_virtual_sinks_model(table_for(*ma), shape, p));
  shape.head_dim = 8;
  EXPECT_THROW(kv::check_virtual_sinks_model(table_for(*ma), shape, p), InvalidArgument);
}

TEST(VirtualSinks, TheFitOptionIsChecked) {
  const std::string p = path_of("ok.sinks");
  kv::save_virtual_sinks(example(true), p);
  EXPECT_THROW(kv::PolicySpec("nullsink:16,fit=" + p + ",calib=first:4"), InvalidArgument);
  EXPECT_THROW(kv::PolicySpec("nullsink:16,fit="), InvalidArgument);
  EXPECT_THROW(kv::PolicySpec("nullsink:16,fit=" + path_of("missing.sinks")), IoError);
  write_bytes(path_of("bad.sinks"), "SPWSINKS");
  EXPECT_THROW(kv::PolicySpec("nullsink:16,fit=" + path_of("bad.sinks")), FormatError);
  EXPECT_THROW(kv::PolicySpec("window:16,fit=" + p), InvalidArgument);
  // A fitted sink reads no attention: chunked like the window, one instance for all layers.
  const auto policy = kv::make_policy(kv::PolicySpec("nullsink:16,fit=" + p), {8, 0});
  EXPECT_FALSE(policy->wants_attention());
  EXPECT_FALSE(policy->per_layer());
  kv::BatchPlan plan;
  policy->plan(0, 8, plan);
  policy->plan(8, 8, plan);
  EXPECT_EQ(plan.fitted_sinks, nullptr);  // token 0 is still in the window
  plan.clear();
  policy->plan(16, 8, plan);
  ASSERT_NE(plan.fitted_sinks, nullptr);
  EXPECT_TRUE(plan.sink_logits.empty());
  EXPECT_TRUE(plan.tokens[0].virtual_sink);
  EXPECT_EQ(plan.fitted_sinks->logits, example(true).logits);
  EXPECT_EQ(policy->clone()->spec(), "nullsink:16,fit=" + p);
}

}  // namespace
}  // namespace spillway
