// spillway recall: what a KV-cache policy remembers. Controlled probes (a copied span, a
// pass key, numbered lines) streamed through each policy at a list of distances, the
// recall or the accuracy per (policy, distance), and each policy's effective context. The
// probes and their measurement are the library's (analysis/recall.h); this file reads the
// filler, prints the table and writes JSON and the plot.
#include <fmt/core.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command.h"
#include "spillway/analysis/recall.h"
#include "spillway/core/error.h"
#include "spillway/core/file.h"
#include "spillway/kv/policy.h"
#include "spillway/model/model.h"
#include "util.h"

namespace spillway::cli {
namespace {

using analysis::ProbeKind;
using analysis::RecallRow;

struct RecallCliOptions {
  std::string model = kDefaultModel;
  std::string file = "data/austen.txt";
  std::string probe = "copy";
  std::vector<std::string> policies;
  std::vector<int64_t> distances = {64, 128, 256, 512, 1024, 2048, 4096};
  int64_t seeds = 3;
  int64_t span = 32;
  int64_t lead = 64;
  int64_t chunk = 128;
  int threads = 0;
  std::optional<std::string> json_out, plot_out;
  std::string title;
};

std::string plot_script() {
  if (const char* p = std::getenv("SPILLWAY_PLOT_RECALL_SCRIPT")) return p;
  return std::string(SPILLWAY_SCRIPTS_DIR) + "/plot-recall.py";
}

nlohmann::json number(double x) {
  return std::isnan(x) ? nlohmann::json(nullptr) : nlohmann::json(x);
}

nlohmann::json row_json(const RecallRow& r) {
  nlohmann::json j;
  j["spec"] = r.spec;
  j["probe"] = analysis::probe_kind_name(r.kind);
  j["distance"] = r.distance;
  j["n"] = r.n;
  if (r.kind == ProbeKind::kCopy) {
    j["recall"] = number(r.recall);
    j["nll_first"] = number(r.nll_first);
    j["nll_repeat"] = number(r.nll_repeat);
    j["recall_seeds"] = r.recall_seeds;
  } else {
    j["accuracy"] = number(r.accuracy);
    j["answers"] = r.answers;
    j["expected"] = r.expected;
  }
  j["kv_slots"] = r.kv_slots;
  j["kv_bytes_peak"] = r.kv_bytes_peak;
  j["capacity"] = r.capacity ? nlohmann::json(*r.capacity) : nlohmann::json(nullptr);
  j["seconds"] = r.seconds;
  return j;
}

int run_recall(const RecallCliOptions& o) {
  const std::optional<ProbeKind> kind = analysis::parse_probe_kind(o.probe);
  if (!kind)
    throw InvalidArgument(
        fmt::format("recall: --probe '{}' is not one of copy, passkey, lines", o.probe));
  if (o.policies.empty()) throw InvalidArgument("recall: give at least one --policy");
  analysis::RecallOptions ro;
  for (const auto& p : o.policies) ro.policies.emplace_back(p);  // usage errors before loading
  ro.kind = *kind;
  ro.distances = o.distances;
  ro.seeds = o.seeds;
  ro.span = o.span;
  ro.lead = o.lead;
  ro.chunk = o.chunk;
  if (o.seeds < 1 || o.span < 2 || o.lead < 0 || o.chunk < 1)
    throw InvalidArgument("recall: --seeds and --chunk must be >= 1, --span >= 2, --lead >= 0");
  int64_t max_d = 0;
  for (int64_t d : o.distances) {
    if (d < 0) throw InvalidArgument(fmt::format("recall: distance {} < 0", d));
    max_d = std::max(max_d, d);
  }
  std::ifstream in(o.file, std::ios::binary);
  if (!in) throw IoError(fmt::format("cannot open '{}' for reading", o.file));
  auto model = model::Model::load(o.model);
  // The filler: enough of the text for the largest probe, plus room for the seeds to start
  // in different places.
  EncodeOptions no_bos;
  no_bos.add_bos = false;
  const std::vector<TokenId> filler =
      encode_stream(model->tokenizer(), in, o.file, o.lead + max_d + 16384, no_bos);
  ThreadPool pool(o.threads);
  fmt::print(stderr, "{}: {} probe, {} distance(s) x {} seed(s) x {} policies, filler {} tokens\n",
             o.model, o.probe, o.distances.size(), o.seeds, ro.policies.size(), filler.size());
  Progress progress("recall");
  ro.progress = [&](int64_t done, int64_t total) { progress.update(done, total); };
  const std::vector<RecallRow> rows = analysis::measure_recall(*model, filler, ro, &pool);
  progress.finish();

  const bool copy = *kind == ProbeKind::kCopy;
  if (copy) {
    fmt::print("{:<34} {:>8} {:>8} {:>10} {:>10} {:>9} {:>8}\n", "policy", "distance", "recall",
               "NLL first", "NLL again", "KV slots", "seconds");
  } else {
    fmt::print("{:<34} {:>8} {:>9} {:>9} {:>8}\n", "policy", "distance", "accuracy", "KV slots",
               "seconds");
  }
  nlohmann::json jrows = nlohmann::json::array();
  for (size_t i = 0; i < rows.size(); ++i) {
    const RecallRow& r = rows[i];
    if (copy) {
      fmt::print("{:<34} {:>8} {:>8.3f} {:>10.3f} {:>10.3f} {:>9} {:>8.1f}\n", r.spec, r.distance,
                 r.recall, r.nll_first, r.nll_repeat, r.kv_slots, r.seconds);
    } else {
      fmt::print("{:<34} {:>8} {:>8.0f}% {:>9} {:>8.1f}\n", r.spec, r.distance, 100.0 * r.accuracy,
                 r.kv_slots, r.seconds);
    }
    jrows.push_back(row_json(r));
  }
  // Each policy's effective context: from where on recall (accuracy) stays below one half.
  fmt::print("\neffective context (the distance from which on {} stays below 0.5):\n",
             copy ? "recall" : "accuracy");
  nlohmann::json effective = nlohmann::json::object();
  const size_t per = o.distances.size();
  for (size_t p = 0; p < rows.size(); p += per) {
    std::vector<RecallRow> mine(rows.begin() + static_cast<std::ptrdiff_t>(p),
                                rows.begin() + static_cast<std::ptrdiff_t>(p + per));
    std::sort(mine.begin(), mine.end(),
              [](const RecallRow& a, const RecallRow& b) { return a.distance < b.distance; });
    const auto e = analysis::effective_context(mine);
    fmt::print("  {:<34} {}\n", rows[p].spec,
               e ? fmt::format("{} tokens", *e) : fmt::format("beyond {}", max_d));
    effective[rows[p].spec] = e ? nlohmann::json(*e) : nlohmann::json(nullptr);
  }

  std::string json_path = o.json_out.value_or("");
  if (o.plot_out && json_path.empty()) json_path = *o.plot_out + ".json";
  if (!json_path.empty()) {
    nlohmann::json j;
    j["model"] = o.model;
    j["file"] = o.file;
    j["probe"] = o.probe;
    j["seeds"] = o.seeds;
    j["span"] = o.span;
    j["lead"] = o.lead;
    j["rows"] = jrows;
    j["effective_context"] = effective;
    write_file_atomic(json_path, j.dump() + "\n");
  }
  if (o.plot_out) {
    const std::string title =
        o.title.empty() ? fmt::format("{} probe, {}", o.probe, o.model) : o.title;
    const std::string cmd = fmt::format("python3 '{}' '{}' '{}' --title '{}'", plot_script(),
                                        json_path, *o.plot_out, title);
    if (std::system(cmd.c_str()) != 0)
      throw Error(fmt::format("plotting failed ({}); the data is at '{}'", cmd, json_path));
    fmt::print(stderr, "plot written to {}\n", *o.plot_out);
  }
  return 0;
}

Registrar reg("recall", [](CLI::App& app) {
  auto o = std::make_shared<RecallCliOptions>();
  auto* sub = app.add_subcommand(
      "recall", "What a cache policy remembers: recall of probes at a list of distances");
  sub->add_option("--model,-m", o->model, "GGUF model file")->capture_default_str();
  sub->add_option("--file,-f", o->file, "Text whose tokens are the filler around the probes")
      ->capture_default_str();
  sub->add_option("--probe", o->probe,
                  "copy (a random span seen again: recall = 1 - NLL(again) / NLL(first)), "
                  "passkey or lines (a greedy answer: accuracy)")
      ->capture_default_str();
  sub->add_option("--policy,-p", o->policies, "Policy spec, repeatable: " + kv::policy_usage())
      ->required();
  sub->add_option("--distances", o->distances,
                  "Filler tokens between what is remembered and its recall, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--seeds", o->seeds, "Probes per distance (the means are reported)")
      ->capture_default_str();
  sub->add_option("--span", o->span, "copy: tokens of the random span")->capture_default_str();
  sub->add_option("--lead", o->lead, "Filler tokens before what is remembered")
      ->capture_default_str();
  sub->add_option("--chunk", o->chunk, "Tokens per forward pass where the policy allows")
      ->capture_default_str();
  sub->add_option("--threads,-t", o->threads, "Threads (0: all cores)");
  sub->add_option("--json", o->json_out, "Write the rows as JSON");
  sub->add_option("--plot", o->plot_out, "Draw recall against distance into a PNG");
  sub->add_option("--title", o->title, "Plot title");
  return [o] { return run_recall(*o); };
});

}  // namespace
}  // namespace spillway::cli
