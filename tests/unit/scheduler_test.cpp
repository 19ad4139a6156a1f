// The serve scheduler as a library component (serve/scheduler.h), without HTTP: the
// prefix-reuse rule, conversations picked up again giving what a fresh session gives,
// many requests batched together giving what each gives alone, and its errors.
#include "spillway/serve/scheduler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "spillway/core/error.h"
#include "spillway/model/model.h"
#include "spillway/session/generate.h"
#include "spillway/session/session.h"
#include "util/paths.h"
#include "util/tiny_model.h"

namespace spillway::serve {
namespace {

// With an output matrix of its own: a tied one makes the tiny model repeat its last token,
// and generations that repeat one token cannot tell a token fed twice from once.
const model::Model& tiny() {
  static const auto m = [] {
    test::TinyModelSpec spec;
    spec.tied_output = false;
    return model::Model::load(test::write_tiny_model(test::temp_dir(), spec, "scheduler.gguf"));
  }();
  return *m;
}

struct Outcome {
  std::string reuse;
  std::string text;
  Usage usage;
  StopReason stop = StopReason::kNone;
};

Outcome wait(Job& job) {
  Outcome o;
  for (;;) {
    auto e = job.next(std::chrono::seconds(60));
    if (!e) throw std::runtime_error("the scheduler did not answer");
    switch (e->kind) {
      case Event::Kind::Admitted:
        o.reuse = e->reuse;
        o.usage = e->usage;
        break;
      case Event::Kind::Text:
        o.text += e->text;
        break;
      case Event::Kind::Done:
        o.stop = e->stop;
        o.usage = e->usage;
        return o;
      case Event::Kind::Error:
        throw std::runtime_error(e->text);
    }
  }
}

// Sampled at temperature 1 with a seed of the prompt's length: unlike greedy choices on a
// random tiny model (which repeat one token), a draw notices logits that are off.
SamplerParams sampling_for(const std::vector<TokenId>& prompt) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.seed = prompt.size();
  return p;
}

JobSpec job_spec(std::vector<TokenId> prompt, int64_t max_tokens, std::string conversation = {}) {
  JobSpec s;
  s.sampling = sampling_for(prompt);
  s.prompt = std::move(prompt);
  s.max_tokens = max_tokens;
  s.conversation_id = std::move(conversation);
  return s;
}

SchedulerOptions options(int64_t prefill_chunk = 64) {
  SchedulerOptions o;
  o.threads = 1;
  o.policy = kv::PolicySpec("sink:4+60");
  o.prefill_chunk = prefill_chunk;
  return o;
}

// What one session generates alone: the reference for the scheduler's answers.
GenerateResult alone_result(const std::vector<TokenId>& prompt, int64_t n,
                            const SamplerParams& sampling) {
  SessionOptions so;
  so.policy = kv::PolicySpec("sink:4+60");
  so.threads = 1;
  Session s(tiny(), so);
  auto sampler = make_sampler(sampling);
  GenerateOptions go;
  go.max_new_tokens = n;
  return generate(s, prompt, *sampler, go);
}

GenerateResult alone_result(const std::vector<TokenId>& prompt, int64_t n) {
  return alone_result(prompt, n, sampling_for(prompt));
}

std::string alone(const std::vector<TokenId>& prompt, int64_t n) {
  return alone_result(prompt, n).text;
}

// The scheduler's metrics are refreshed by its thread after each step: waits until
// `ready` holds (or a few seconds have passed) and returns them.
template <typename Pred>
SchedulerMetrics metrics_when(const Scheduler& s, Pred ready) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  SchedulerMetrics m = s.metrics();
  while (!ready(m) && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    m = s.metrics();
  }
  return m;
}

TEST(Scheduler, PlanFeedReusesAStrictPrefix) {
  const std::vector<TokenId> have = {1, 2, 3};
  auto p = plan_feed(have, {1, 2, 3, 4, 5});
  EXPECT_FALSE(p.reset);
  EXPECT_EQ(p.from, 3u);
  EXPECT_TRUE(plan_feed(have, {1, 2, 3}).reset);     // nothing new to feed: no logits
  EXPECT_TRUE(plan_feed(have, {1, 9, 3, 4}).reset);  // diverged
  EXPECT_TRUE(plan_feed(have, {1, 2}).reset);        // shorter
  EXPECT_TRUE(plan_feed({}, {1, 2}).reset);          // fresh session: feed all
}

TEST(Scheduler, RequestsBatchedTogetherGiveWhatEachGivesAlone) {
  std::vector<std::vector<TokenId>> prompts;
  for (int i = 0; i < 5; ++i) prompts.push_back(test::random_tokens(10 + 7 * i, 40 + i));
  Scheduler sched(tiny(), options(/*prefill_chunk=*/8));
  std::vector<std::shared_ptr<Job>> jobs;
  for (const auto& p : prompts) jobs.push_back(sched.submit(job_spec(p, 20)));
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Outcome o = wait(*jobs[i]);
    EXPECT_EQ(o.text, alone(prompts[i], 20)) << "request " << i;
    EXPECT_EQ(o.reuse, "none");
    EXPECT_EQ(o.usage.completion_tokens, 20);
    EXPECT_EQ(o.stop, StopReason::kLength);
  }
  const SchedulerMetrics m =
      metrics_when(sched, [](const SchedulerMetrics& x) { return x.jobs_completed == 5; });
  EXPECT_EQ(m.jobs_completed, 5);
  EXPECT_GT(m.steps, 0);
  EXPECT_EQ(m.completion_tokens, 100);
}

// Requests batched on one thread and on two (where the step's streams attend in one job)
// give what each gives alone, with a repetition penalty (the sampler must also have seen
// each prompt).
TEST(Scheduler, BatchedRequestsWithAPenaltyOnOneAndTwoThreads) {
  std::vector<std::vector<TokenId>> prompts;
  for (int i = 0; i < 7; ++i) prompts.push_back(test::random_tokens(5 + 9 * i, 70 + i));
  auto params = [](const std::vector<TokenId>& p) {
    SamplerParams sp = sampling_for(p);
    sp.repeat_penalty = 1.5f;
    return sp;
  };
  std::vector<std::string> want;
  int64_t prompt_total = 0, generated = 0;
  for (const auto& p : prompts) {
    const GenerateResult r = alone_result(p, 16, params(p));
    want.push_back(r.text);
    generated += static_cast<int64_t>(r.tokens.size());
    prompt_total += static_cast<int64_t>(p.size());
  }
  for (int threads : {1, 2}) {
    SchedulerOptions o = options(/*prefill_chunk=*/8);
    o.threads = threads;
    Scheduler sched(tiny(), o);
    std::vector<std::shared_ptr<Job>> jobs;
    for (const auto& p : prompts) {
      JobSpec js = job_spec(p, 16);
      js.sampling = params(p);
      jobs.push_back(sched.submit(std::move(js)));
    }
    for (size_t i = 0; i < jobs.size(); ++i)
      EXPECT_EQ(wait(*jobs[i]).text, want[i]) << "request " << i << ", threads " << threads;
    const SchedulerMetrics m =
        metrics_when(sched, [](const SchedulerMetrics& x) { return x.jobs_completed == 7; });
    EXPECT_EQ(m.prompt_tokens, prompt_total);
    EXPECT_EQ(m.completion_tokens, generated);  // some stop at an end-of-generation token
  }
}

TEST(Scheduler, AConversationPickedUpAgainGivesWhatAFreshSessionGives) {
  Scheduler sched(tiny(), options());
  const std::vector<TokenId> first = test::random_tokens(30, 7);
  auto j1 = sched.submit(job_spec(first, 8, "c"));
  const Outcome o1 = wait(*j1);
  EXPECT_EQ(o1.reuse, "new");
  const GenerateResult answer = alone_result(first, 8);
  EXPECT_EQ(o1.text, answer.text);
  // The next prompt repeats the conversation, the answer included, and adds to it.
  std::vector<TokenId> second = first;
  second.insert(second.end(), answer.tokens.begin(), answer.tokens.end());
  const std::vector<TokenId> more = test::random_tokens(12, 8);
  second.insert(second.end(), more.begin(), more.end());
  auto j2 = sched.submit(job_spec(second, 8, "c"));
  const Outcome o2 = wait(*j2);
  EXPECT_EQ(o2.reuse, "prefix");
  // The session holds the prompt and the answer but its last token (never fed).
  EXPECT_EQ(o2.usage.cached_tokens, 30 + 7);
  EXPECT_EQ(o2.text, alone(second, 8));
  // A prompt that departs from it starts the session over.
  auto j3 = sched.submit(job_spec(more, 8, "c"));
  const Outcome o3 = wait(*j3);
  EXPECT_EQ(o3.reuse, "reset");
  EXPECT_EQ(o3.text, alone(more, 8));
  const SchedulerMetrics m =
      metrics_when(sched, [](const SchedulerMetrics& x) { return x.jobs_completed == 3; });
  EXPECT_EQ(m.reuse_new, 1);
  EXPECT_EQ(m.reuse_prefix, 1);
  EXPECT_EQ(m.reuse_reset, 1);
  EXPECT_EQ(m.cached_prompt_tokens, 37);
}

TEST(Scheduler, ErrorsAndStopping) {
  Scheduler sched(tiny(), options());
  EXPECT_THROW(sched.submit(job_spec({}, 4)), InvalidArgument);
  JobSpec bad = job_spec({1, 2}, 4);
  bad.stop = {""};
  auto j = sched.submit(std::move(bad));
  auto e = j->next(std::chrono::seconds(30));
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->kind, Event::Kind::Error);
  EXPECT_NE(e->text.find("stop string"), std::string::npos) << e->text;
  EXPECT_EQ(
      metrics_when(sched, [](const SchedulerMetrics& x) { return x.jobs_failed == 1; }).jobs_failed,
      1);
  sched.stop();
  EXPECT_THROW(sched.submit(job_spec({1, 2}, 4)), Unavailable);
  EXPECT_THROW(Scheduler(tiny(),
                         [] {
                           SchedulerOptions o;
                           o.max_active = 0;
                           return o;
                         }()),
               InvalidArgument);
}

// A job stops at the model's end-of-generation token unless it asks to ignore it; then it
// runs to max_tokens. The sampler picks the tiny model's EOS (259) at every step.
TEST(Scheduler, IgnoreEosRunsToMaxTokens) {
  struct EosSampler : Sampler {
    TokenId sample(const float*, int64_t) override { return 259; }
  };
  Scheduler sched(tiny(), options());
  for (const bool ignore : {false, true}) {
    JobSpec spec = job_spec({1, 2, 3}, 7);
    spec.sampler = std::make_unique<EosSampler>();
    spec.ignore_eos = ignore;
    const Outcome o = wait(*sched.submit(std::move(spec)));
    EXPECT_EQ(o.stop, ignore ? StopReason::kLength : StopReason::kEndOfGeneration) << ignore;
    EXPECT_EQ(o.usage.completion_tokens, ignore ? 7 : 0) << ignore;  // an EOS ending is not counted
  }
}

// Watching a conversation records its attention and publishes views; it changes nothing
// of what the conversation generates. Each conversation keeps the policy it was made with.
TEST(Scheduler, WatchedConversationsGiveWhatUnwatchedOnesGiveAndPublishTheirCache) {
  Scheduler sched(tiny(), options(/*prefill_chunk=*/8));
  EXPECT_EQ(sched.watch("nobody", 0, std::chrono::milliseconds(50)), nullptr);

  JobSpec open;
  open.open_only = true;
  open.conversation_id = "w";
  open.policy = kv::PolicySpec("sink:4+24");
  const Outcome opened = wait(*sched.submit(std::move(open)));
  EXPECT_EQ(opened.reuse, "new");
  JobSpec again;  // an id that is kept already is not opened twice
  again.open_only = true;
  again.conversation_id = "w";
  auto ja = sched.submit(std::move(again));
  auto ea = ja->next(std::chrono::seconds(30));
  ASSERT_TRUE(ea.has_value());
  EXPECT_EQ(ea->kind, Event::Kind::Error);
  EXPECT_TRUE(ea->exists);
  auto v0 = sched.watch("w", 0, std::chrono::milliseconds(0));
  ASSERT_NE(v0, nullptr);
  EXPECT_EQ(v0->policy, "sink:4+24");
  EXPECT_EQ(v0->layout.n_past, 0);
  EXPECT_EQ(v0->attention.stream_index, -1);

  const std::vector<TokenId> prompt = test::random_tokens(50, 21);
  JobSpec watched = job_spec(prompt, 12, "w");
  JobSpec plain = job_spec(prompt, 12, "p");
  plain.policy = kv::PolicySpec("sink:4+24");
  auto jw = sched.submit(std::move(watched));
  auto jp = sched.submit(std::move(plain));
  const Outcome ow = wait(*jw), op = wait(*jp);
  EXPECT_EQ(ow.reuse, "new");  // opened, nothing fed yet
  EXPECT_EQ(ow.text, op.text);

  // The last view: 50 + 11 tokens fed (the last one sampled is never fed).
  auto v = sched.watch("w", 0, std::chrono::milliseconds(0));
  for (int i = 0; i < 200 && v && (v->layout.n_past < 61 || v->busy); ++i)
    v = sched.watch("w", v->version, std::chrono::milliseconds(50));
  ASSERT_NE(v, nullptr);
  EXPECT_GT(v->version, v0->version);
  EXPECT_EQ(v->layout.n_past, 61);
  EXPECT_EQ(v->layout.n_sink, 4);
  EXPECT_EQ(v->layout.n_window, 24);
  EXPECT_EQ(v->layout.n_evicted, 61 - 28);
  EXPECT_EQ(v->attention.stream_index, 60);
  EXPECT_EQ(v->capacity, 28);
  ASSERT_EQ(v->token_ids.size(), v->layout.tokens.size());
  for (size_t i = 0; i < 50; ++i) EXPECT_EQ(v->token_ids[i], prompt[i]) << i;

  // A job naming another policy starts the conversation again under it.
  JobSpec other = job_spec(prompt, 4, "w");
  other.policy = kv::PolicySpec("window:16");
  EXPECT_EQ(wait(*sched.submit(std::move(other))).reuse, "reset");
  v = sched.watch("w", 0, std::chrono::milliseconds(0));
  for (int i = 0; i < 200 && v && (v->layout.n_past != 53 || v->busy); ++i)
    v = sched.watch("w", v->version, std::chrono::milliseconds(50));
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->policy, "window:16");
  EXPECT_EQ(v->layout.n_sink, 0);
  EXPECT_EQ(v->layout.n_window, 16);
  // The unwatched conversation never published a view.
  EXPECT_EQ(sched.watch("p", 0, std::chrono::milliseconds(0))->attention.stream_index, -1);

  JobSpec bad_open;
  bad_open.open_only = true;
  EXPECT_THROW(sched.submit(std::move(bad_open)), InvalidArgument);  // no id
}

// Past max_sessions the least recently used idle conversation is evicted; a new
// conversation under the same policy gets its session back (reset), and answers exactly
// as a fresh session does. A conversation under another policy gets a session of its own.
TEST(Scheduler, EvictedSessionsServeNewConversationsAsFreshOnesWould) {
  SchedulerOptions o = options();
  o.max_sessions = 2;
  o.max_active = 1;
  Scheduler sched(tiny(), o);
  for (int i = 0; i < 5; ++i) {
    const std::vector<TokenId> prompt = test::random_tokens(20 + 3 * i, 60 + i);
    JobSpec j = job_spec(prompt, 10, "e" + std::to_string(i));
    if (i == 3) j.policy = kv::PolicySpec("window:32");
    const Outcome out = wait(*sched.submit(std::move(j)));
    EXPECT_EQ(out.reuse, "new");
    if (i != 3) {
      EXPECT_EQ(out.text, alone(prompt, 10)) << "conversation " << i;
    }
  }
  const SchedulerMetrics m =
      metrics_when(sched, [](const SchedulerMetrics& x) { return x.jobs_completed == 5; });
  EXPECT_EQ(m.evictions, 3);
  EXPECT_EQ(m.conversations, 2);
  // The oldest are gone, the newest kept.
  EXPECT_EQ(sched.watch("e0", 0, std::chrono::milliseconds(0)), nullptr);
  EXPECT_NE(sched.watch("e4", 0, std::chrono::milliseconds(0)), nullptr);
}

}  // namespace
}  // namespace spillway::serve
