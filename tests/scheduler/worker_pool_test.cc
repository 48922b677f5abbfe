// The worker pool on the CPU with two workers over the tiny default model: sessions pinned to
// the worker that holds them (and reusing their history there), new sessions and one-shot
// requests placed on the least loaded worker, pool request ids that cancel on the right
// worker, drain of every worker, per-worker session directories that survive a restart.
#include "scheduler/worker_pool.h"

#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>

#include "absl/time/clock.h"
#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "model/default_model.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "tests/scheduler/scheduler_test_util.h"

namespace anchorserve::scheduler {
namespace {

class WorkerPoolTest : public DefaultModelTest {
 protected:
  std::unique_ptr<WorkerPool> NewPool(int workers = 2, EngineOptions options = {}) {
    options.model_dir = *dir_;
    options.load.num_threads = 1;
    WorkerPoolOptions pool_options;
    pool_options.engine = std::move(options);
    pool_options.workers = workers;
    auto pool = WorkerPool::Create(std::move(pool_options));
    EXPECT_TRUE(pool.ok()) << pool.status();
    return pool.ok() ? *std::move(pool) : nullptr;
  }

  // A one-shot request that keeps worker `worker` busy until cancelled.
  std::shared_ptr<Collector> Occupy(WorkerPool& pool, int worker, uint64_t* id) {
    auto sink = std::make_shared<Collector>();
    auto submitted = pool.SubmitTo(worker, Greedy(Prompt("A long story begins here."), 4000), sink);
    EXPECT_TRUE(submitted.ok()) << submitted.status();
    if (submitted.ok()) *id = *submitted;
    sink->WaitForTokens(1);
    return sink;
  }

  // Finished requests leave Load() at the engine's next step: wait for it.
  static void WaitIdle(WorkerPool& pool) {
    for (int i = 0; i < pool.num_workers(); ++i) {
      for (int tries = 0; tries < 2000 && pool.WorkerLoad(i) > 0; ++tries) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      ASSERT_EQ(pool.WorkerLoad(i), 0) << "worker " << i;
    }
  }
};

TEST(WorkerCount, OnePerVisibleGpuOrOneCpuWorkerUnlessConfigured) {
  EXPECT_EQ(*ResolveWorkerCount(model::Device::kCpu, 0, 0), 1);
  EXPECT_EQ(*ResolveWorkerCount(model::Device::kCpu, 0, 4), 1);  // GPUs unused on cpu
  EXPECT_EQ(*ResolveWorkerCount(model::Device::kCpu, 3, 0), 3);
  EXPECT_EQ(*ResolveWorkerCount(model::Device::kCuda, 0, 8), 8);
  EXPECT_EQ(*ResolveWorkerCount(model::Device::kCuda, 2, 8), 2);
  EXPECT_EQ(*ResolveWorkerCount(model::Device::kCuda, 0, 0), 1);  // the engine says why not
  absl::StatusOr<int> too_many = ResolveWorkerCount(model::Device::kCuda, 3, 2);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("workers: 3"), std::string::npos) << too_many.status();
  EXPECT_EQ(ResolveWorkerCount(model::Device::kCpu, -1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WorkerSessionDir, WorkerZeroKeepsTheDirectoryOthersGetASubdirectory) {
  EXPECT_EQ(WorkerSessionDir("", 3), "");
  EXPECT_EQ(WorkerSessionDir("/var/sessions", 0), "/var/sessions");
  EXPECT_EQ(WorkerSessionDir("/var/sessions", 1), "/var/sessions/worker-1");
}

TEST_F(WorkerPoolTest, NewSessionsGoToTheLeastLoadedWorker) {
  auto pool = NewPool();
  ASSERT_NE(pool, nullptr);
  ASSERT_EQ(pool->num_workers(), 2);
  // Idle workers: the one holding fewer sessions, then the lower index.
  ASSERT_TRUE(pool->CreateSession("t", "s0").ok());
  ASSERT_TRUE(pool->CreateSession("t", "s1").ok());
  ASSERT_TRUE(pool->CreateSession("t", "s2").ok());
  EXPECT_EQ(*pool->SessionWorker("t", "s0"), 0);
  EXPECT_EQ(*pool->SessionWorker("t", "s1"), 1);
  EXPECT_EQ(*pool->SessionWorker("t", "s2"), 0);
  // Load decides before sessions held: worker 1 busy -> worker 0 although it holds more
  // sessions; worker 0 busy -> worker 1.
  uint64_t busy = 0;
  auto sink = Occupy(*pool, 1, &busy);
  ASSERT_TRUE(pool->CreateSession("t", "s3").ok());
  EXPECT_EQ(*pool->SessionWorker("t", "s3"), 0);
  pool->Cancel(busy);
  EXPECT_EQ(sink->Wait().back().finish_reason, FinishReason::kCancelled);
  WaitIdle(*pool);
  sink = Occupy(*pool, 0, &busy);
  ASSERT_TRUE(pool->CreateSession("t", "s4").ok());
  EXPECT_EQ(*pool->SessionWorker("t", "s4"), 1);
  pool->Cancel(busy);
  EXPECT_EQ(sink->Wait().back().finish_reason, FinishReason::kCancelled);
  // Every worker's sessions, ordered by id.
  std::vector<cache::SessionInfo> listed = pool->ListSessions("t");
  ASSERT_EQ(listed.size(), 5u);
  for (size_t i = 0; i < listed.size(); ++i)
    EXPECT_EQ(listed[i].session_id, "s" + std::to_string(i));
  EXPECT_TRUE(pool->ListSessions("other").empty());
  const EngineStats stats = pool->Stats();
  EXPECT_EQ(stats.sessions.empty_sessions, 5);
  EXPECT_EQ(pool->WorkerStats(0).sessions.empty_sessions, 3);
  EXPECT_EQ(pool->WorkerStats(1).sessions.empty_sessions, 2);
  EXPECT_EQ(stats.kv_blocks_total,
            pool->WorkerStats(0).kv_blocks_total + pool->WorkerStats(1).kv_blocks_total);
}

TEST_F(WorkerPoolTest, EveryTurnRunsOnTheWorkerHoldingTheSessionAndReusesItsHistory) {
  auto pool = NewPool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(pool->CreateSession("t", "a").ok());
  ASSERT_TRUE(pool->CreateSession("t", "b").ok());
  ASSERT_EQ(*pool->SessionWorker("t", "a"), 0);
  ASSERT_EQ(*pool->SessionWorker("t", "b"), 1);
  const std::vector<std::string> turns = {"The old captain opened the letter. <AC>",
                                          "He read it twice. <AC> Then he",
                                          "The storm came at night. <AC> And"};
  std::map<std::string, std::vector<std::vector<int32_t>>> outputs;
  for (const std::string& session : {std::string("a"), std::string("b")}) {
    const int holder = session == "a" ? 0 : 1;
    const int other = 1 - holder;
    int64_t seen = 0;
    for (size_t t = 0; t < turns.size(); ++t) {
      WaitIdle(*pool);
      const int64_t holder_steps = pool->WorkerStats(holder).steps;
      const int64_t other_steps = pool->WorkerStats(other).steps;
      auto request = Greedy(Prompt(turns[t], /*add_bos=*/t == 0), 6);
      request.session_id = session;
      const int64_t prompt_tokens = static_cast<int64_t>(request.prompt_token_ids.size());
      auto sink = std::make_shared<Collector>();
      auto id = pool->Submit(request, sink);
      ASSERT_TRUE(id.ok()) << id.status();
      EXPECT_EQ(pool->WorkerOfRequest(*id), holder) << session << " turn " << t;
      const auto events = sink->Wait();
      ASSERT_EQ(events.back().finish_reason, FinishReason::kLength) << events.back().status;
      const Usage& usage = events.back().usage;
      EXPECT_EQ(usage.cached_tokens, seen) << session << " turn " << t;
      if (t > 0) {
        EXPECT_GT(usage.cached_tokens, 0) << session << " turn " << t;
      }
      seen += prompt_tokens + 6;
      EXPECT_GT(pool->WorkerStats(holder).steps, holder_steps);
      EXPECT_EQ(pool->WorkerStats(other).steps, other_steps) << "the turn ran on worker " << other;
      auto info = pool->GetSession("t", session);
      ASSERT_TRUE(info.ok()) << info.status();
      EXPECT_EQ(info->turns, static_cast<int64_t>(t + 1));
      EXPECT_EQ(*pool->SessionWorker("t", session), holder);
      outputs[session].push_back(Tokens(events));
    }
  }
  // Same weights on both workers: the same conversation gives the same tokens.
  EXPECT_EQ(outputs["a"], outputs["b"]);
  // The session's state stays on its worker's device.
  EXPECT_EQ(pool->WorkerStats(0).sessions.resident.sessions, 1);
  EXPECT_EQ(pool->WorkerStats(1).sessions.resident.sessions, 1);
  // Export from worker 1, import: lands on the least loaded worker (idle both; worker 0 holds
  // no session once a is deleted) and continues with the history it carries.
  auto bytes = pool->ExportSession("t", "b");
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_TRUE(pool->DeleteSession("t", "a").ok());
  WaitIdle(*pool);
  ASSERT_TRUE(pool->ImportSession("t", "b2", *bytes).ok());
  EXPECT_EQ(*pool->SessionWorker("t", "b2"), 0);
  auto request = Greedy(Prompt("Morning came.", false), 3);
  request.session_id = "b2";
  auto sink = std::make_shared<Collector>();
  ASSERT_TRUE(pool->Submit(request, sink).ok());
  const auto events = sink->Wait();
  ASSERT_EQ(events.back().finish_reason, FinishReason::kLength) << events.back().status;
  EXPECT_GT(events.back().usage.cached_tokens, 0);
}

TEST_F(WorkerPoolTest, AnUnknownSessionIsNotFoundEverywhere) {
  auto pool = NewPool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(pool->CreateSession("t", "known").ok());
  auto request = Greedy(Prompt("Hello."), 2);
  request.session_id = "nope";
  auto submitted = pool->Submit(request, std::make_shared<Collector>());
  EXPECT_EQ(submitted.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(submitted.status().message(), "session \"nope\" not found");
  EXPECT_EQ(pool->GetSession("t", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(pool->DeleteSession("t", "nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(pool->ExportSession("t", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(pool->SessionWorker("t", "nope").status().code(), absl::StatusCode::kNotFound);
  // Another tenant's session is not found either.
  EXPECT_EQ(pool->GetSession("u", "known").status().code(), absl::StatusCode::kNotFound);
  // Deleted: gone from the routing too.
  ASSERT_TRUE(pool->DeleteSession("t", "known").ok());
  EXPECT_EQ(pool->GetSession("t", "known").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(WorkerPoolTest, ASessionIdExistsOnOneWorkerOnly) {
  auto pool = NewPool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(pool->CreateSession("t", "x").ok());
  ASSERT_EQ(*pool->SessionWorker("t", "x"), 0);
  uint64_t busy = 0;
  auto sink = Occupy(*pool, 0, &busy);  // a new session would now go to worker 1
  EXPECT_EQ(pool->CreateSession("t", "x").code(), absl::StatusCode::kAlreadyExists);
  pool->Cancel(busy);
  sink->Wait();
  EXPECT_EQ(pool->ListSessions("t").size(), 1u);
}

TEST_F(WorkerPoolTest, OneShotRequestsSpreadAndCancelByPoolIdReachesTheRightWorker) {
  auto pool = NewPool();
  ASSERT_NE(pool, nullptr);
  std::vector<std::shared_ptr<Collector>> sinks;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) {
    auto sink = std::make_shared<Collector>();
    auto id = pool->Submit(Greedy(Prompt("A long story begins here."), 4000), sink);
    ASSERT_TRUE(id.ok()) << id.status();
    sinks.push_back(sink);
    ids.push_back(*id);
  }
  EXPECT_EQ(pool->WorkerOfRequest(ids[0]), 0);
  EXPECT_EQ(pool->WorkerOfRequest(ids[1]), 1);
  EXPECT_EQ(pool->WorkerOfRequest(ids[2]), 0);
  EXPECT_EQ(pool->WorkerOfRequest(ids[3]), 1);
  for (auto& sink : sinks) sink->WaitForTokens(1);
  // Engine ids repeat across workers (each counts from 1): the pool id tells them apart.
  pool->Cancel(ids[1]);
  EXPECT_EQ(sinks[1]->Wait().back().finish_reason, FinishReason::kCancelled);
  EXPECT_FALSE(sinks[0]->Finished());
  EXPECT_FALSE(sinks[2]->Finished());
  EXPECT_FALSE(sinks[3]->Finished());
  for (int i : {0, 2, 3}) {
    pool->Cancel(ids[static_cast<size_t>(i)]);
    EXPECT_EQ(sinks[static_cast<size_t>(i)]->Wait().back().finish_reason, FinishReason::kCancelled);
  }
  pool->Cancel(987654321);  // unknown: ignored
  WaitIdle(*pool);
  EXPECT_EQ(pool->Stats().kv_blocks_used, 0);
}

TEST_F(WorkerPoolTest, DrainDrainsEveryWorker) {
  auto pool = NewPool();
  ASSERT_NE(pool, nullptr);
  uint64_t id0 = 0, id1 = 0;
  auto sink0 = Occupy(*pool, 0, &id0);
  auto sink1 = Occupy(*pool, 1, &id1);
  ASSERT_TRUE(pool->Drain(absl::Milliseconds(10)).ok());
  EXPECT_EQ(sink0->Wait().back().finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(sink1->Wait().back().finish_reason, FinishReason::kCancelled);
  for (int worker = 0; worker < 2; ++worker) {
    auto refused =
        pool->SubmitTo(worker, Greedy(Prompt("Hello."), 2), std::make_shared<Collector>());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << "worker " << worker;
  }
  EXPECT_EQ(
      pool->Submit(Greedy(Prompt("Hello."), 2), std::make_shared<Collector>()).status().code(),
      absl::StatusCode::kUnavailable);
}

TEST_F(WorkerPoolTest, EachWorkerPersistsToItsOwnDirectoryAndARestartFindsItsSessions) {
  const std::string disk =
      ::testing::TempDir() + "/worker_pool_sessions_" + std::to_string(getpid());
  anchorserve::RemoveTree(disk);
  EngineOptions options;
  options.sessions.disk_dir = disk;
  std::map<std::string, int> holder;
  std::map<std::string, int64_t> history;
  {
    auto pool = NewPool(2, options);
    ASSERT_NE(pool, nullptr);
    for (const std::string session : {"p", "q"}) {
      ASSERT_TRUE(pool->CreateSession("t", session).ok());
      holder[session] = *pool->SessionWorker("t", session);
      auto request = Greedy(Prompt("The old captain opened the letter. <AC>"), 4);
      request.session_id = session;
      auto sink = std::make_shared<Collector>();
      ASSERT_TRUE(pool->Submit(request, sink).ok());
      ASSERT_EQ(sink->Wait().back().finish_reason, FinishReason::kLength);
      history[session] = static_cast<int64_t>(request.prompt_token_ids.size()) + 4;
    }
    EXPECT_NE(holder["p"], holder["q"]);
    ASSERT_TRUE(pool->Drain(absl::Seconds(5)).ok());
  }
  // Worker 0 writes into the directory itself, worker 1 into worker-1/: never the same files.
  auto session_files = [](const std::string& dir) {
    int n = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      n += entry.path().extension() == ".session";
    }
    return n;
  };
  EXPECT_EQ(session_files(disk), 1);
  EXPECT_EQ(session_files(disk + "/worker-1"), 1);

  auto restarted = NewPool(2, options);
  ASSERT_NE(restarted, nullptr);
  EXPECT_EQ(restarted->Stats().sessions.disk.sessions, 2);
  for (const std::string session : {"p", "q"}) {
    EXPECT_EQ(*restarted->SessionWorker("t", session), holder[session]) << session;
    auto request = Greedy(Prompt("He read it twice.", false), 3);
    request.session_id = session;
    auto sink = std::make_shared<Collector>();
    ASSERT_TRUE(restarted->Submit(request, sink).ok());
    const auto events = sink->Wait();
    ASSERT_EQ(events.back().finish_reason, FinishReason::kLength) << events.back().status;
    EXPECT_EQ(events.back().usage.cached_tokens, history[session]) << session;
  }
  // Restored sessions count towards placement: one each, so a new one goes to worker 0.
  WaitIdle(*restarted);
  ASSERT_TRUE(restarted->CreateSession("t", "r").ok());
  EXPECT_EQ(*restarted->SessionWorker("t", "r"), 0);
  restarted.reset();
  anchorserve::RemoveTree(disk);
}

// On a machine with several GPUs (the device machine): a worker per GPU, each running its
// sessions with weights and KV pool on its own device (a pool on another device than the
// weights fails the first forward). The committed model: the device machine has no spm_train.
TEST(WorkerPoolCuda, WorkersRunOnTheirOwnDevices) {
  if (model::CudaDeviceCount() < 2) GTEST_SKIP() << "needs 2 visible CUDA devices";
  const std::string dir = std::string(ANCHORSERVE_TEST_DATA_DIR) + "/../../models/anllm-ac-20m";
  WorkerPoolOptions options;
  options.engine.model_dir = dir;
  options.engine.load.device = model::Device::kCuda;
  options.engine.load.precision = model::Precision::kBFloat16;
  auto created = WorkerPool::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  WorkerPool& pool = **created;
  EXPECT_EQ(pool.num_workers(), model::CudaDeviceCount());
  auto tokenizer = model::Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<std::vector<int32_t>> outputs;
  for (int worker = 0; worker < pool.num_workers(); ++worker) {
    const std::string session = "g" + std::to_string(worker);
    ASSERT_TRUE(pool.CreateSession("t", session).ok());
    ASSERT_EQ(*pool.SessionWorker("t", session), worker);  // idle: fewest sessions first
    std::vector<int32_t> tokens;
    int64_t seen = 0;
    for (const std::string turn : {"The old captain opened the letter. <AC>", "He read it."}) {
      GenerationRequest request;
      request.tenant = "t";
      request.session_id = session;
      request.prompt_token_ids = (*tokenizer)->Encode(turn, /*add_bos=*/tokens.empty());
      request.max_tokens = 4;
      request.sampling.temperature = 0;
      const int64_t prompt = static_cast<int64_t>(request.prompt_token_ids.size());
      auto sink = std::make_shared<Collector>();
      auto id = pool.Submit(request, sink);
      ASSERT_TRUE(id.ok()) << id.status();
      EXPECT_EQ(pool.WorkerOfRequest(*id), worker);
      const auto events = sink->Wait();
      ASSERT_EQ(events.back().finish_reason, FinishReason::kLength)
          << "worker " << worker << ": " << events.back().status;
      EXPECT_EQ(events.back().usage.cached_tokens, seen) << "worker " << worker;
      seen += prompt + 4;
      const std::vector<int32_t> got = Tokens(events);
      tokens.insert(tokens.end(), got.begin(), got.end());
    }
    outputs.push_back(tokens);
    EXPECT_GT(pool.WorkerStats(worker).kv_blocks_used, 0) << "worker " << worker;
  }
  for (const auto& tokens : outputs) EXPECT_EQ(tokens, outputs.front());
}

TEST_F(WorkerPoolTest, OneWorkerBehavesAsTheEngine) {
  auto pool = NewPool(1);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->num_workers(), 1);
  auto sink = std::make_shared<Collector>();
  auto id = pool->Submit(Greedy(Prompt("Hello there."), 3), sink);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, 1u);  // the engine's own id
  EXPECT_EQ(sink->Wait().back().finish_reason, FinishReason::kLength);
  EXPECT_EQ(pool->GetSession("t", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(pool->SessionWorker("t", "nope").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace anchorserve::scheduler
