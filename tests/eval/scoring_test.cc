// eval/scoring: per-token NLL in the three modes against an independent log-softmax over
// ForwardFull logits, and the anchor-cached path against the masked forward.
#include "eval/scoring.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/ansan_mask.h"
#include "tests/eval/eval_test_util.h"

namespace anchorserve::eval {
namespace {

using testing::kTinyAnchor;
using testing::ReferenceNlls;
using testing::TinyModel;

// Random ids in [6, 128) with anchors at random places; starts with BOS.
std::vector<int32_t> RandomIds(uint64_t seed, size_t n, double anchor_rate) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids = {1};
  while (ids.size() < n) {
    const bool anchor = std::uniform_real_distribution<double>(0, 1)(rng) < anchor_rate;
    ids.push_back(anchor ? kTinyAnchor : static_cast<int32_t>(6 + rng() % 122));
  }
  return ids;
}

ScoringOptions Options(EvalMode mode, int64_t chunk = 0,
                       model::PositionPolicy policy = model::PositionPolicy::kAbsolute) {
  ScoringOptions options;
  options.mode = mode;
  options.chunk = chunk;
  options.sequence.policy = policy;
  options.sequence.anchors = model::CustomAnchors({kTinyAnchor}, -1);
  return options;
}

TEST(NextTokenNllTest, HandComputed) {
  // log(e^1 + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2).
  const std::vector<float> row = {1, 2, 3};
  EXPECT_NEAR(NextTokenNll(row, 2), std::log(1 + std::exp(-1.0) + std::exp(-2.0)), 1e-12);
  EXPECT_NEAR(NextTokenNll(row, 0), std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 1,
              1e-12);
  // Uniform row: log(V); huge logits do not overflow.
  EXPECT_NEAR(NextTokenNll(std::vector<float>(8, 1e30f), 3), std::log(8.0), 1e-9);
}

TEST(ArgMaxTest, FirstOnTies) {
  EXPECT_EQ(ArgMax(std::vector<float>{0, 5, 5, 1}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{7}), 0);
}

TEST(ParseEvalModeTest, NamesRoundTripAndJunkIsRejected) {
  for (EvalMode mode : {EvalMode::kFull, EvalMode::kMasked, EvalMode::kAnchor}) {
    auto parsed = ParseEvalMode(EvalModeName(mode));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, mode);
  }
  EXPECT_FALSE(ParseEvalMode("sideways").ok());
}

TEST(KeptAfterEachTokenTest, AnchorsPlusOpenSentence) {
  const model::AnchorSpec anchors = model::CustomAnchors({5}, -1);
  // a b A c A d : after each token the cache holds the anchors and the open sentence.
  EXPECT_EQ(KeptAfterEachToken(std::vector<int32_t>{10, 11, 5, 12, 5, 13}, anchors),
            (std::vector<int64_t>{1, 2, 1, 2, 2, 3}));
  EXPECT_EQ(KeptAfterEachToken(std::vector<int32_t>{10, 11, 12}, model::AnchorSpec{}),
            (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(CountAnchors(std::vector<int32_t>{5, 10, 5, 5}, anchors), 3);
}

TEST(ScoreSequenceTest, FullAndMaskedEqualIndependentLogSoftmax) {
  const auto& m = TinyModel();
  const std::vector<int32_t> ids = RandomIds(7, 40, 0.15);
  for (EvalMode mode : {EvalMode::kFull, EvalMode::kMasked}) {
    const auto mask = mode == EvalMode::kFull
                          ? model::BuildCausalMask(static_cast<int64_t>(ids.size()))
                          : model::BuildAnsanMask(ids, model::CustomAnchors({kTinyAnchor}, -1));
    const std::vector<double> want = ReferenceNlls(m, ids, 3, mask);
    auto got = ScoreSequence(m, ids, 3, Options(mode));
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->nll.size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) EXPECT_NEAR(got->nll[k], want[k], 1e-6) << k;
    EXPECT_TRUE(got->kept_after.empty());
  }
}

TEST(ScoreSequenceTest, AnchorCachedEqualsMaskedUnderAbsolutePositions) {
  const auto& m = TinyModel();
  const std::vector<int32_t> ids = RandomIds(11, 60, 0.2);
  auto masked = ScoreSequence(m, ids, 1, Options(EvalMode::kMasked));
  ASSERT_TRUE(masked.ok()) << masked.status();
  for (int64_t chunk : {1, 3, 7, 0}) {
    const int64_t breaks[] = {25};
    auto anchor = ScoreSequence(m, ids, 1, Options(EvalMode::kAnchor, chunk), breaks);
    ASSERT_TRUE(anchor.ok()) << anchor.status();
    ASSERT_EQ(anchor->nll.size(), masked->nll.size());
    for (size_t k = 0; k < masked->nll.size(); ++k) {
      EXPECT_NEAR(anchor->nll[k], masked->nll[k], 1e-4) << "chunk " << chunk << " target " << k;
    }
    EXPECT_EQ(anchor->greedy, masked->greedy) << chunk;
    EXPECT_EQ(anchor->kept_after, KeptAfterEachToken(ids, model::CustomAnchors({kTinyAnchor}, -1)));
  }
}

TEST(ScoreSequenceTest, CompactPositionsDifferFromMaskedAfterAReduction) {
  const auto& m = TinyModel();
  const std::vector<int32_t> ids = RandomIds(13, 50, 0.2);
  auto masked = ScoreSequence(m, ids, 1, Options(EvalMode::kMasked));
  auto compact =
      ScoreSequence(m, ids, 1, Options(EvalMode::kAnchor, 1, model::PositionPolicy::kCompact));
  ASSERT_TRUE(masked.ok() && compact.ok());
  double worst = 0;
  for (size_t k = 0; k < masked->nll.size(); ++k) {
    worst = std::max(worst, std::fabs(masked->nll[k] - compact->nll[k]));
  }
  EXPECT_GT(worst, 1e-3);
}

TEST(ScoreSequenceTest, PeakStepCountsTheChunk) {
  const auto& m = TinyModel();
  const std::vector<int32_t> ids = {10, 11, kTinyAnchor, 12, kTinyAnchor, 13};
  auto one = ScoreSequence(m, ids, 1, Options(EvalMode::kAnchor, 1));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->peak_step_kv, 3);  // two kept + the token fed
  auto whole = ScoreSequence(m, ids, 1, Options(EvalMode::kAnchor, 0));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->peak_step_kv, 6);  // one Feed of all six
}

TEST(ScoreSequenceTest, BadArgumentsAreErrors) {
  const auto& m = TinyModel();
  const std::vector<int32_t> ids = {1, 10, 11};
  EXPECT_EQ(ScoreSequence(m, ids, 0, Options(EvalMode::kMasked)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ScoreSequence(m, ids, 3, Options(EvalMode::kMasked)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ScoreSequence(m, std::vector<int32_t>{1, 999}, 1, Options(EvalMode::kFull)).ok());
  EXPECT_FALSE(
      ScoreSequence(m, std::vector<int32_t>{1, 999}, 1, Options(EvalMode::kAnchor, 1)).ok());
  const std::vector<int32_t> too_long(300, 10);  // the fixture has 256 positions
  EXPECT_EQ(ScoreSequence(m, too_long, 1, Options(EvalMode::kMasked)).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(ScoreSequence(m, too_long, 1, Options(EvalMode::kAnchor, 0)).status().code(),
            absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace anchorserve::eval
