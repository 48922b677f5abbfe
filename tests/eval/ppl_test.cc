// eval/ppl: windows, data preparation, and perplexity against a hand computation from
// ForwardFull logits; masked == anchor-cached under absolute positions.
#include "eval/ppl.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "eval/text_file.h"
#include "gtest/gtest.h"
#include "model/ansan_mask.h"
#include "model/tokenizer.h"
#include "tests/eval/eval_test_util.h"

namespace anchorserve::eval {
namespace {

using testing::DefaultModelDir;
using testing::kTinyAnchor;
using testing::ReferenceNlls;
using testing::TinyModel;

std::vector<int32_t> RandomStream(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  while (ids.size() < n) {
    ids.push_back(rng() % 6 == 0 ? kTinyAnchor : static_cast<int32_t>(6 + rng() % 122));
  }
  return ids;
}

PerplexityOptions Options(EvalMode mode, int64_t window, int64_t stride, int64_t chunk = 1) {
  PerplexityOptions options;
  options.window = window;
  options.stride = stride;
  options.scoring.mode = mode;
  options.scoring.chunk = chunk;
  options.scoring.sequence.anchors = model::CustomAnchors({kTinyAnchor}, -1);
  return options;
}

TEST(WindowStartsTest, OnlyFullWindowsEveryStride) {
  EXPECT_EQ(WindowStarts(70, 20, 15, -1), (std::vector<int64_t>{0, 15, 30, 45}));
  EXPECT_EQ(WindowStarts(70, 20, 15, 2), (std::vector<int64_t>{0, 15}));
  EXPECT_EQ(WindowStarts(20, 20, 5, -1), (std::vector<int64_t>{0}));
  EXPECT_TRUE(WindowStarts(19, 20, 5, -1).empty());
  EXPECT_TRUE(WindowStarts(70, 20, 15, 0).empty());
  EXPECT_EQ(WindowStarts(512, 256, 256, -1), (std::vector<int64_t>{0, 256}));
}

TEST(InsertAnchorsPerLineTest, JoinsSentencesOfEachLineAndKeepsLineBreaks) {
  EXPECT_EQ(InsertAnchorsPerLine("One. Two.\n\nThree! Four?\nFive", "<AC>"),
            "One. <AC> Two.\n\nThree! <AC> Four?\nFive");
  EXPECT_EQ(InsertAnchorsPerLine("", "<AC>"), "");
}

TEST(EvaluatePerplexityTest, MatchesAHandComputationFromForwardFull) {
  const auto& m = TinyModel();
  const std::vector<int32_t> stream = RandomStream(3, 70);
  for (EvalMode mode : {EvalMode::kFull, EvalMode::kMasked}) {
    auto report = EvaluatePerplexity(m, stream, Options(mode, 20, 15));
    ASSERT_TRUE(report.ok()) << report.status();
    double window_mean_sum = 0, total = 0;
    int64_t count = 0;
    for (int64_t start : {0, 15, 30, 45}) {
      const std::vector<int32_t> ids(stream.begin() + start, stream.begin() + start + 20);
      const auto mask = mode == EvalMode::kFull
                            ? model::BuildCausalMask(20)
                            : model::BuildAnsanMask(ids, model::CustomAnchors({kTinyAnchor}, -1));
      const std::vector<double> nll = ReferenceNlls(m, ids, 1, mask);
      ASSERT_EQ(nll.size(), 19u);
      double sum = 0;
      for (double v : nll) sum += v;
      window_mean_sum += sum / 19;
      total += sum;
      count += 19;
    }
    EXPECT_EQ(report->windows, 4);
    EXPECT_EQ(report->tokens_scored, 4 * 19);
    EXPECT_EQ(report->stream_tokens, 70);
    EXPECT_NEAR(report->window_average_nll, window_mean_sum / 4, 1e-6);
    EXPECT_NEAR(report->window_average_ppl, std::exp(window_mean_sum / 4), 1e-4);
    EXPECT_NEAR(report->token_average_ppl, std::exp(total / static_cast<double>(count)), 1e-4);
    EXPECT_FALSE(report->kv.has_value());
  }
}

TEST(EvaluatePerplexityTest, AnchorCachedEqualsMaskedUnderAbsolutePositions) {
  const auto& m = TinyModel();
  const std::vector<int32_t> stream = RandomStream(5, 160);
  auto masked = EvaluatePerplexity(m, stream, Options(EvalMode::kMasked, 64, 32));
  ASSERT_TRUE(masked.ok()) << masked.status();
  for (int64_t chunk : {1, 5, 0}) {
    auto anchor = EvaluatePerplexity(m, stream, Options(EvalMode::kAnchor, 64, 32, chunk));
    ASSERT_TRUE(anchor.ok()) << anchor.status();
    EXPECT_EQ(anchor->tokens_scored, masked->tokens_scored);
    EXPECT_NEAR(anchor->window_average_nll, masked->window_average_nll, 1e-5) << chunk;
    EXPECT_NEAR(anchor->token_average_nll, masked->token_average_nll, 1e-5) << chunk;
    EXPECT_NEAR(anchor->token_accuracy, masked->token_accuracy, 1e-12) << chunk;
    ASSERT_TRUE(anchor->kv.has_value());
    EXPECT_LT(anchor->kv->mean_kept, anchor->kv->mean_full_equivalent);
    EXPECT_NEAR(anchor->kv->mean_full_equivalent, 65.0 / 2, 1e-12);
  }
  // The plain causal model is a different model: the numbers must differ.
  auto full = EvaluatePerplexity(m, stream, Options(EvalMode::kFull, 64, 32));
  ASSERT_TRUE(full.ok());
  EXPECT_GT(std::fabs(full->token_average_nll - masked->token_average_nll), 1e-4);
}

TEST(EvaluatePerplexityTest, KvSummaryByHand) {
  // a b A c A d: kept after each token 1 2 1 2 2 3 (sum 11), full 1..6 (sum 21).
  const std::vector<int32_t> stream = {10, 11, kTinyAnchor, 12, kTinyAnchor, 13};
  auto report = EvaluatePerplexity(TinyModel(), stream, Options(EvalMode::kAnchor, 6, 6));
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_TRUE(report->kv.has_value());
  EXPECT_NEAR(report->kv->mean_kept, 11.0 / 6, 1e-12);
  EXPECT_NEAR(report->kv->mean_full_equivalent, 21.0 / 6, 1e-12);
  EXPECT_NEAR(report->kv->compression, 1 - 11.0 / 21, 1e-12);
  EXPECT_EQ(report->kv->peak_kept, 3);
  EXPECT_EQ(report->kv->peak_step_kv, 3);
  EXPECT_EQ(report->anchor_targets, 2);
  EXPECT_EQ(report->tokens_scored, 5);
  ASSERT_TRUE(report->non_anchor_token_ppl.has_value());
}

TEST(EvaluatePerplexityTest, BadOptionsAreErrors) {
  const auto& m = TinyModel();
  const std::vector<int32_t> stream = RandomStream(1, 30);
  EXPECT_EQ(EvaluatePerplexity(m, stream, Options(EvalMode::kMasked, 1, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EvaluatePerplexity(m, stream, Options(EvalMode::kMasked, 8, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto too_short = EvaluatePerplexity(m, stream, Options(EvalMode::kMasked, 31, 8));
  EXPECT_EQ(too_short.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_short.status().message().find("30 tokens"), std::string::npos)
      << too_short.status();
  PerplexityOptions none = Options(EvalMode::kMasked, 8, 8);
  none.limit = 0;
  EXPECT_FALSE(EvaluatePerplexity(m, stream, none).ok());
}

TEST(ReadTextFileTest, MissingFileNamesThePath) {
  auto text = ReadTextFile("/nonexistent/held_out.txt");
  EXPECT_EQ(text.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(text.status().message().find("/nonexistent/held_out.txt"), std::string::npos);
}

class HeldOutTextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DefaultModelDir().empty()) GTEST_SKIP() << "spm_train is not installed";
    auto tokenizer = model::Tokenizer::Load(DefaultModelDir());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
  }
  std::unique_ptr<model::Tokenizer> tokenizer_;
};

TEST_F(HeldOutTextTest, DocumentsGetOneBosEachAndAcModelsGetAnchorsBetweenSentences) {
  const std::string text =
      "\nThe cat sat. The dog ran.\n\nA bird sang.\n<|endoftext|>\nOne more. Last one.\n";
  HeldOutTextOptions plain;
  const std::vector<int32_t> ids = TokenizeHeldOutText(text, *tokenizer_, plain);
  std::vector<int32_t> want = tokenizer_->Encode("The cat sat. The dog ran.\n\nA bird sang.", true);
  const std::vector<int32_t> second = tokenizer_->Encode("One more. Last one.", true);
  want.insert(want.end(), second.begin(), second.end());
  EXPECT_EQ(ids, want);

  HeldOutTextOptions ac;
  ac.insert_anchors = true;
  ac.anchor_token = "<AC>";
  const std::vector<int32_t> with_anchors = TokenizeHeldOutText(text, *tokenizer_, ac);
  const int32_t anchor = *tokenizer_->TokenToId("<AC>");
  // One anchor between the two sentences of each two-sentence line, none after a line's last.
  EXPECT_EQ(std::count(with_anchors.begin(), with_anchors.end(), anchor), 2);
  std::vector<int32_t> want_ac =
      tokenizer_->Encode("The cat sat. <AC> The dog ran.\n\nA bird sang.", true);
  const std::vector<int32_t> second_ac = tokenizer_->Encode("One more. <AC> Last one.", true);
  want_ac.insert(want_ac.end(), second_ac.begin(), second_ac.end());
  EXPECT_EQ(with_anchors, want_ac);

  // Stops after the document that reaches min_tokens.
  HeldOutTextOptions first_only;
  first_only.min_tokens = 1;
  EXPECT_EQ(TokenizeHeldOutText(text, *tokenizer_, first_only),
            tokenizer_->Encode("The cat sat. The dog ran.\n\nA bird sang.", true));
}

}  // namespace
}  // namespace anchorserve::eval
