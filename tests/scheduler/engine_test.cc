// The engine end to end on the CPU with the tiny default model: streaming, exactness against
// the single-sequence reference, sessions that prefill only new tokens, cancellation,
// deadlines, queue limits, validation, injected faults and drain.
#include "common/remove_tree.h"
#include "scheduler/engine.h"

#include <condition_variable>
#include <filesystem>
#include <mutex>

#include "gtest/gtest.h"
#include "model/anchor_sequence.h"
#include "model/default_model.h"
#include "model/tokenizer.h"
#include "tests/scheduler/scheduler_test_util.h"

namespace anchorserve::scheduler {
namespace {

class EngineTest : public DefaultModelTest {
 protected:
  std::unique_ptr<Engine> NewEngine(EngineOptions options = {}) {
    options.model_dir = *dir_;
    options.load.num_threads = 1;
    auto engine = Engine::Create(std::move(options));
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *std::move(engine) : nullptr;
  }
};

// The engine's greedy tokens equal a plain AnchorSequence loop on the same weights.
TEST_F(EngineTest, GreedyStreamMatchesTheReferenceLoop) {
  auto engine = NewEngine();
  const std::vector<int32_t> prompt = Prompt("The old captain opened the letter. <AC> He read");
  auto sink = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 12), sink).ok());
  const auto events = sink->Wait();
  ASSERT_TRUE(events.back().final);
  EXPECT_EQ(events.back().finish_reason, FinishReason::kLength) << events.back().status;
  const std::vector<int32_t> got = Tokens(events);
  ASSERT_EQ(got.size(), 12u);

  auto llama = model::LlamaModel::Load(*dir_, model::LoadOptions{});
  model::SequenceOptions options;
  options.anchors = engine->model_info().anchors;
  auto seq = model::AnchorSequence::Create(llama->get(), options);
  std::vector<float> logits = *(*seq)->Feed(prompt, false);
  std::vector<int32_t> want;
  for (int i = 0; i < 12; ++i) {
    const int32_t next = static_cast<int32_t>(
        std::max_element(logits.begin(), logits.end()) - logits.begin());
    want.push_back(next);
    logits = *(*seq)->Feed({&next, 1}, false);
  }
  EXPECT_EQ(got, want);
  const Usage& usage = events.back().usage;
  EXPECT_EQ(usage.prompt_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(usage.completion_tokens, 12);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);  // a one-shot request frees its KV
}

TEST_F(EngineTest, SessionTurnsPrefillOnlyNewTokensAndMatchOneLongSequence) {
  auto engine = NewEngine();
  ASSERT_TRUE(engine->CreateSession("t", "chat").ok());
  const std::vector<std::string> turns = {"The old captain opened the letter. <AC>",
                                          "He read it twice. <AC> Then he",
                                          "The storm came at night. <AC> And"};
  std::vector<int32_t> history;  // everything the session has seen
  int64_t seen = 0;
  for (size_t t = 0; t < turns.size(); ++t) {
    std::vector<int32_t> prompt = Prompt(turns[t]);
    if (t > 0) prompt.erase(prompt.begin());  // BOS only at the start of the session
    auto request = Greedy(prompt, 6);
    request.session_id = "chat";
    auto sink = std::make_shared<Collector>();
    ASSERT_TRUE(engine->Submit(request, sink).ok());
    const auto events = sink->Wait();
    ASSERT_EQ(events.back().finish_reason, FinishReason::kLength) << events.back().status;
    const Usage& usage = events.back().usage;
    EXPECT_EQ(usage.prompt_tokens, static_cast<int64_t>(prompt.size()));
    EXPECT_EQ(usage.cached_tokens, seen) << "turn " << t;
    // Reference: one sequence fed the whole history, greedy.
    history.insert(history.end(), prompt.begin(), prompt.end());
    auto llama = model::LlamaModel::Load(*dir_, model::LoadOptions{});
    model::SequenceOptions options;
    options.anchors = engine->model_info().anchors;
    auto seq = model::AnchorSequence::Create(llama->get(), options);
    std::vector<float> logits = *(*seq)->Feed(history, false);
    std::vector<int32_t> want;
    for (int i = 0; i < 6; ++i) {
      const int32_t next = static_cast<int32_t>(
          std::max_element(logits.begin(), logits.end()) - logits.begin());
      want.push_back(next);
      logits = *(*seq)->Feed({&next, 1}, false);
    }
    EXPECT_EQ(Tokens(events), want) << "turn " << t;
    history.insert(history.end(), want.begin(), want.end());
    seen = static_cast<int64_t>(history.size());
    EXPECT_EQ(usage.kv.full_tokens, seen);
    EXPECT_LT(usage.kv.kept_tokens, usage.kv.full_tokens);
    auto info = engine->GetSession("t", "chat");
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->turns, static_cast<int64_t>(t + 1));
    // Between turns the footprint the metrics report is the session's committed state.
    const EngineStats stats = engine->Stats();
    EXPECT_EQ(stats.kv_kept_bytes, usage.kv.kept_bytes());
    EXPECT_EQ(stats.kv_full_equivalent_bytes, usage.kv.full_bytes());
    EXPECT_GT(stats.kv_kept_bytes, 0);
  }
}

TEST_F(EngineTest, CancelEndsTheStreamAndFreesTheKv) {
  auto engine = NewEngine();
  auto sink = std::make_shared<Collector>();
  auto id = engine->Submit(Greedy(Prompt("A long story begins here."), 4000), sink);
  ASSERT_TRUE(id.ok());
  sink->WaitForTokens(3);
  engine->Cancel(*id);
  const auto events = sink->Wait();
  EXPECT_EQ(events.back().finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(events.back().status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, DeadlineEndsWithTimedOut) {
  auto engine = NewEngine();
  auto request = Greedy(Prompt("Time is short."), 4000);
  request.deadline = absl::Now() + absl::Milliseconds(50);
  auto sink = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(request, sink).ok());
  const auto events = sink->Wait();
  EXPECT_EQ(events.back().finish_reason, FinishReason::kTimedOut);
  EXPECT_EQ(events.back().status.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(EngineTest, FullQueueRejectsAtOnce) {
  EngineOptions options;
  options.max_running = 1;
  options.max_waiting = 2;
  auto engine = NewEngine(options);
  std::vector<std::shared_ptr<Collector>> sinks;
  int rejected = 0;
  for (int i = 0; i < 8; ++i) {
    sinks.push_back(std::make_shared<Collector>());
    auto id = engine->Submit(Greedy(Prompt("Queue."), 200), sinks.back());
    if (!id.ok()) {
      EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
      ++rejected;
      sinks.pop_back();
    }
  }
  EXPECT_GT(rejected, 0);
  for (auto& s : sinks) EXPECT_TRUE(s->Wait().back().final);
}

TEST_F(EngineTest, BadRequestsNameTheField) {
  auto engine = NewEngine();
  auto sink = std::make_shared<Collector>();
  auto check = [&](GenerationRequest r, absl::StatusCode code, const std::string& field) {
    auto id = engine->Submit(r, sink);
    ASSERT_FALSE(id.ok()) << field;
    EXPECT_EQ(id.status().code(), code) << id.status();
    EXPECT_NE(id.status().message().find(field), std::string::npos) << id.status();
  };
  check(Greedy({}, 4), absl::StatusCode::kInvalidArgument, "prompt");
  check(Greedy({1, 999999}, 4), absl::StatusCode::kInvalidArgument, "prompt_token_ids");
  check(Greedy({1, 5}, 0), absl::StatusCode::kInvalidArgument, "max_tokens");
  check(Greedy({1, 5}, 1 << 30), absl::StatusCode::kOutOfRange, "max_tokens");
  auto bad_sampling = Greedy({1, 5}, 4);
  bad_sampling.sampling.top_p = 2;
  check(bad_sampling, absl::StatusCode::kInvalidArgument, "top_p");
  auto bad_span = Greedy({1, 5, 6}, 4);
  bad_span.kept_full_spans = {{1, 3}};
  check(bad_span, absl::StatusCode::kInvalidArgument, "kept_full_spans");
  auto unknown = Greedy({1, 5}, 4);
  unknown.session_id = "nope";
  check(unknown, absl::StatusCode::kNotFound, "nope");
  ASSERT_TRUE(engine->CreateSession("owner", "mine").ok());
  auto other_tenant = Greedy({1, 5}, 4);
  other_tenant.session_id = "mine";
  other_tenant.tenant = "intruder";
  check(other_tenant, absl::StatusCode::kNotFound, "mine");
}

TEST_F(EngineTest, AFailedStepFailsOneRequestAndTheNextSucceeds) {
  auto engine = NewEngine();
  engine->TEST_FailSteps(1);
  auto a = std::make_shared<Collector>(), b = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt("First."), 4), a).ok());
  const auto first = a->Wait();
  EXPECT_EQ(first.back().finish_reason, FinishReason::kError);
  EXPECT_EQ(first.back().status.code(), absl::StatusCode::kInternal);
  ASSERT_TRUE(engine->Submit(Greedy(Prompt("Second."), 4), b).ok());
  EXPECT_EQ(b->Wait().back().finish_reason, FinishReason::kLength);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, StopTokensAndStopStringsEndTheStreamUnshown) {
  auto engine = NewEngine();
  const std::vector<int32_t> prompt = Prompt("The quiet island was far away.");
  auto free_run = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 10), free_run).ok());
  const auto all = free_run->Wait();
  const std::vector<int32_t> tokens = Tokens(all);
  ASSERT_EQ(tokens.size(), 10u);
  // Stop on the 4th token's id: the stream shows only the tokens before its first occurrence.
  auto stop_id = Greedy(prompt, 10);
  stop_id.stop_token_ids = {tokens[3]};
  auto stopped = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(stop_id, stopped).ok());
  const auto got = stopped->Wait();
  EXPECT_EQ(got.back().finish_reason, FinishReason::kStop);
  const size_t first = std::find(tokens.begin(), tokens.end(), tokens[3]) - tokens.begin();
  EXPECT_EQ(Tokens(got), std::vector<int32_t>(tokens.begin(), tokens.begin() + first));
  // Stop string: a piece of the free-running text; the output is the text before it.
  const std::string text = Text(all);
  ASSERT_GE(text.size(), 6u);
  const std::string stop = text.substr(text.size() / 2, 3);
  auto stop_text = Greedy(prompt, 10);
  stop_text.stop_strings = {stop};
  auto cut = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(stop_text, cut).ok());
  const auto cut_events = cut->Wait();
  EXPECT_EQ(cut_events.back().finish_reason, FinishReason::kStop);
  EXPECT_EQ(Text(cut_events), text.substr(0, text.find(stop)));
}

TEST_F(EngineTest, DrainCancelsWhatIsLeftAndRefusesNewWork) {
  auto engine = NewEngine();
  auto sink = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(Greedy(Prompt("Endless."), 100000 / 30), sink).ok());
  sink->WaitForTokens(2);
  EXPECT_TRUE(engine->Drain(absl::Milliseconds(20)).ok());
  const auto events = sink->Wait();
  EXPECT_EQ(events.back().finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(events.back().status.code(), absl::StatusCode::kUnavailable);
  auto late = engine->Submit(Greedy({1, 5}, 2), std::make_shared<Collector>());
  EXPECT_EQ(late.status().code(), absl::StatusCode::kUnavailable);
}

// A pool too small for every request at once: the policy preempts (swaps out) and resumes,
// every request still finishes, and each gets exactly the tokens it gets alone.
TEST_F(EngineTest, PreemptionUnderKvPressureKeepsEveryResultExact) {
  std::vector<std::vector<int32_t>> prompts = {Prompt("The old captain opened the letter."),
                                               Prompt("A quiet island lay in the storm."),
                                               Prompt("Anna watched the river at night."),
                                               Prompt("Tom built a wooden bridge.")};
  auto request = [&](size_t i) {
    auto r = Greedy(prompts[i], 90);
    r.mode = model::AttentionMode::kFull;  // full mode grows: pressure is certain
    r.ignore_eos = true;
    return r;
  };
  std::vector<std::vector<int32_t>> alone;
  {
    auto engine = NewEngine();
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto sink = std::make_shared<Collector>();
      ASSERT_TRUE(engine->Submit(request(i), sink).ok());
      alone.push_back(Tokens(sink->Wait()));
      ASSERT_EQ(alone.back().size(), 90u);
    }
  }
  EngineOptions tight;
  tight.block_tokens = 16;
  tight.kv_budget_bytes = 20 * 16 * 2048;  // 20 blocks; the four need about 28
  auto engine = NewEngine(tight);
  std::vector<std::shared_ptr<Collector>> sinks;
  for (size_t i = 0; i < prompts.size(); ++i) {
    sinks.push_back(std::make_shared<Collector>());
    ASSERT_TRUE(engine->Submit(request(i), sinks.back()).ok());
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto events = sinks[i]->Wait();
    EXPECT_EQ(events.back().finish_reason, FinishReason::kLength) << events.back().status;
    EXPECT_EQ(Tokens(events), alone[i]) << "request " << i;
  }
  const EngineStats stats = engine->Stats();
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_EQ(stats.kv_blocks_used, 0);
}

TEST_F(EngineTest, ARequestLargerThanThePoolFailsClearly) {
  EngineOptions tiny;
  tiny.kv_budget_bytes = 2 * 16 * 2048;  // 2 blocks
  auto engine = NewEngine(tiny);
  auto r = Greedy(Prompt("One two three four five six seven eight nine ten eleven twelve "
                         "thirteen fourteen fifteen sixteen seventeen eighteen."),
                  60);
  r.mode = model::AttentionMode::kFull;
  r.ignore_eos = true;
  auto sink = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(r, sink).ok());
  const auto events = sink->Wait();
  EXPECT_EQ(events.back().finish_reason, FinishReason::kError);
  EXPECT_EQ(events.back().status.code(), absl::StatusCode::kResourceExhausted) << events.back().status;
  // The engine keeps serving what fits.
  auto small = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(Greedy({1, 5}, 3), small).ok());
  EXPECT_EQ(small->Wait().back().finish_reason, FinishReason::kLength);
}

TEST_F(EngineTest, IdleSessionsExpireAfterTheirTtl) {
  EngineOptions options;
  options.sessions.idle_ttl = absl::Milliseconds(200);
  auto engine = NewEngine(options);
  ASSERT_TRUE(engine->CreateSession("t", "brief").ok());
  auto request = Greedy(Prompt("Hello there."), 2);
  request.session_id = "brief";
  auto sink = std::make_shared<Collector>();
  ASSERT_TRUE(engine->Submit(request, sink).ok());
  ASSERT_EQ(sink->Wait().back().finish_reason, FinishReason::kLength);
  absl::SleepFor(absl::Milliseconds(2500));
  EXPECT_EQ(engine->GetSession("t", "brief").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
}

TEST_F(EngineTest, DrainPersistsSessionsAndARestartContinuesThem) {
  const std::string disk = ::testing::TempDir() + "/engine_sessions_" + std::to_string(getpid());
  anchorserve::RemoveTree(disk);
  EngineOptions options;
  options.sessions.disk_dir = disk;
  const std::vector<int32_t> turn1 = Prompt("The old captain opened the letter. <AC>");
  std::vector<int32_t> turn2 = Prompt("He read it twice. <AC> Then");
  turn2.erase(turn2.begin());
  auto run_turn = [&](Engine& engine, const std::string& id, const std::vector<int32_t>& p) {
    auto request = Greedy(p, 5);
    request.session_id = id;
    auto sink = std::make_shared<Collector>();
    EXPECT_TRUE(engine.Submit(request, sink).ok());
    return Tokens(sink->Wait());
  };
  std::vector<int32_t> want;
  {
    auto reference = NewEngine();
    ASSERT_TRUE(reference->CreateSession("t", "s").ok());
    run_turn(*reference, "s", turn1);
    want = run_turn(*reference, "s", turn2);
  }
  {
    auto engine = NewEngine(options);
    ASSERT_TRUE(engine->CreateSession("t", "s").ok());
    run_turn(*engine, "s", turn1);
    ASSERT_TRUE(engine->Drain(absl::Seconds(5)).ok());
  }
  auto restarted = NewEngine(options);
  auto info = restarted->GetSession("t", "s");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->turns, 1);
  EXPECT_EQ(run_turn(*restarted, "s", turn2), want);
  restarted.reset();
  anchorserve::RemoveTree(disk);
}

}  // namespace
}  // namespace anchorserve::scheduler
