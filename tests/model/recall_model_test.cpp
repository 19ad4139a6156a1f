// Recall probes on the default model and corpus: the full cache copies a span seen 1,024
// tokens earlier, a window of 256 has lost it.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "spillway/analysis/recall.h"
#include "spillway/model/model.h"
#include "util/paths.h"

namespace spillway {
namespace {

TEST(RecallModel, FullCopiesAcrossAThousandTokensAWindowOf256DoesNot) {
  const auto model_path = test::default_model_path();
  const auto corpus = test::corpus_path();
  SPILLWAY_REQUIRE_FILE(model_path);
  SPILLWAY_REQUIRE_FILE(corpus);
  auto m = model::Model::load(model_path);
  std::ifstream in(corpus, std::ios::binary);
  EncodeOptions no_bos;
  no_bos.add_bos = false;
  const std::vector<TokenId> filler = encode_stream(m->tokenizer(), in, corpus, 6000, no_bos);
  analysis::RecallOptions o;
  o.policies = {kv::PolicySpec("full"), kv::PolicySpec("window:256")};
  o.distances = {1024};
  o.seeds = 2;
  o.threads = 2;
  const auto rows = analysis::measure_recall(*m, filler, o);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_GT(rows[0].recall, 0.8) << rows[0].spec;
  EXPECT_LT(rows[1].recall, 0.2) << rows[1].spec;
  EXPECT_GT(rows[0].nll_first, 5.0);  // random tokens are hard to predict at first sight
}

}  // namespace
}  // namespace spillway
