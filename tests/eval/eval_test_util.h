// Helpers shared by the evaluator tests: the HF fixture model, a default model with a real
// tokenizer, and an NLL computed independently of eval/ from ForwardFull logits.
#ifndef ANCHORSERVE_TESTS_EVAL_EVAL_TEST_UTIL_H_
#define ANCHORSERVE_TESTS_EVAL_EVAL_TEST_UTIL_H_

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "model/ansan_mask.h"
#include "model/default_model.h"
#include "model/llama.h"

namespace anchorserve::eval::testing {

inline std::string TestDataPath(const std::string& name) {
  return std::string(ANCHORSERVE_TEST_DATA_DIR) + "/" + name;
}

// tests/data/hf_tiny_mha: 2 layers, vocab 128, max 256 positions, no tokenizer.
inline const model::LlamaModel& TinyModel() {
  static const model::LlamaModel* tiny = [] {
    auto m = model::LlamaModel::Load(TestDataPath("hf_tiny_mha"), model::LoadOptions{});
    if (!m.ok()) {
      ADD_FAILURE() << m.status();
      std::abort();
    }
    return m->release();
  }();
  return *tiny;
}

// The anchor id the HF fixture's AnSAN logits were made with.
inline constexpr int32_t kTinyAnchor = 5;

// log(sum(exp(row))) - row[target] in long double, written apart from eval/scoring.cc.
inline double ReferenceNll(const std::vector<float>& logits, int64_t vocab, int64_t row,
                           int32_t target) {
  long double max = logits[row * vocab];
  for (int64_t v = 0; v < vocab; ++v) max = std::max<long double>(max, logits[row * vocab + v]);
  long double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits[row * vocab + v] - max);
  return static_cast<double>(std::log(sum) + max - logits[row * vocab + target]);
}

// Per-target NLLs of ids[first..] from one ForwardFull with `mask` at positions 0..L-1.
inline std::vector<double> ReferenceNlls(const model::LlamaModel& m,
                                         const std::vector<int32_t>& ids, int64_t first,
                                         const model::AttentionMask& mask) {
  std::vector<int32_t> positions(ids.size());
  std::iota(positions.begin(), positions.end(), 0);
  auto logits = m.ForwardFull(ids, positions, mask);
  EXPECT_TRUE(logits.ok()) << logits.status();
  std::vector<double> out;
  if (!logits.ok()) return out;
  for (size_t i = static_cast<size_t>(first); i < ids.size(); ++i) {
    out.push_back(
        ReferenceNll(*logits, m.config().vocab_size, static_cast<int64_t>(i) - 1, ids[i]));
  }
  return out;
}

// A default (AC, <AC> = 4) model with a real tokenizer, written once per test process into
// TempDir and removed at exit. Empty when spm_train is missing (callers GTEST_SKIP).
inline const std::string& DefaultModelDir() {
  static const std::string* dir = [] {
    auto* path =
        new std::string(::testing::TempDir() + "/eval_default_model_" + std::to_string(getpid()));
    anchorserve::RemoveTree(*path);
    model::DefaultModelOptions options;
    options.out_dir = *path;
    if (!model::WriteDefaultModel(options).ok()) {
      anchorserve::RemoveTree(*path);
      path->clear();
    } else {
      std::atexit([] { anchorserve::RemoveTree(DefaultModelDir()); });
    }
    return path;
  }();
  return *dir;
}

}  // namespace anchorserve::eval::testing

#endif  // ANCHORSERVE_TESTS_EVAL_EVAL_TEST_UTIL_H_
