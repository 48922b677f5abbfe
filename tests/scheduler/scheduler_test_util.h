// Shared by the engine and worker pool tests: a stream collector, request helpers and a
// fixture that writes the tiny default model once per test suite.
#ifndef ANCHORSERVE_TESTS_SCHEDULER_SCHEDULER_TEST_UTIL_H_
#define ANCHORSERVE_TESTS_SCHEDULER_SCHEDULER_TEST_UTIL_H_

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "model/default_model.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"

namespace anchorserve::scheduler {

// Collects a stream; Wait() returns once the final event arrived.
class Collector : public StreamSink {
 public:
  void OnEvent(StreamEvent event) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(event));
    cv_.notify_all();
  }
  std::vector<StreamEvent> Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(60),
                 [&] { return !events_.empty() && events_.back().final; });
    return events_;
  }
  void WaitForTokens(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(60), [&] {
      size_t tokens = 0;
      for (const auto& e : events_) tokens += e.token_ids.size();
      return tokens >= n || (!events_.empty() && events_.back().final);
    });
  }
  bool Finished() {
    std::lock_guard<std::mutex> lock(mu_);
    return !events_.empty() && events_.back().final;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<StreamEvent> events_;
};

inline std::vector<int32_t> Tokens(const std::vector<StreamEvent>& events) {
  std::vector<int32_t> out;
  for (const auto& e : events) out.insert(out.end(), e.token_ids.begin(), e.token_ids.end());
  return out;
}

inline std::string Text(const std::vector<StreamEvent>& events) {
  std::string out;
  for (const auto& e : events) out += e.text;
  return out;
}

inline GenerationRequest Greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  GenerationRequest r;
  r.tenant = "t";
  r.prompt_token_ids = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  return r;
}

// Writes the tiny default model (it needs spm_train: tests skip without it).
class DefaultModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(::testing::TempDir() + "/scheduler_model_" + std::to_string(getpid()));
    model::DefaultModelOptions options;
    options.out_dir = *dir_;
    written_ = new absl::Status(model::WriteDefaultModel(options));
  }
  static void TearDownTestSuite() {
    anchorserve::RemoveTree(*dir_);
    delete dir_;
    delete written_;
    dir_ = nullptr;
    written_ = nullptr;
  }
  void SetUp() override {
    if (!written_->ok() && written_->message().find("spm_train") != std::string::npos) {
      GTEST_SKIP() << "spm_train is not installed: " << *written_;
    }
    ASSERT_TRUE(written_->ok()) << *written_;
  }

  std::vector<int32_t> Prompt(const std::string& text, bool add_bos = true) {
    auto tokenizer = model::Tokenizer::Load(*dir_);
    return (*tokenizer)->Encode(text, add_bos);
  }

  static inline std::string* dir_ = nullptr;
  static inline absl::Status* written_ = nullptr;
};

}  // namespace anchorserve::scheduler

#endif  // ANCHORSERVE_TESTS_SCHEDULER_SCHEDULER_TEST_UTIL_H_
