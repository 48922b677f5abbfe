// The tests that matter most: anchor-cached incremental decoding is the same computation as
// one full forward with the AnSAN mask (absolute positions), and full mode is the causal
// forward; REDUCTION keeps exactly what anllm-reference.md §4 keeps.
#include <random>

#include "gtest/gtest.h"
#include "model/anchor_sequence.h"
#include "model/ansan_mask.h"
#include "model/llama.h"
#include "tests/model/test_util.h"

namespace anchorserve::model {
namespace {

using ::anchorserve::testing::MaxAbsDiff;
using ::anchorserve::testing::Positions;
using ::anchorserve::testing::Row;

constexpr int32_t kAnchor = 7;
constexpr int32_t kPad = 3;
constexpr double kFp32Tolerance = 1e-5;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  return c;
}

class AnchorExactnessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A large init so attention visibly changes logits (a wrong mask cannot hide).
    auto m = LlamaModel::CreateRandom(SmallConfig(), 1234, LoadOptions{}, 0.15);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() { delete model_; }

  // Sentences of random length (1..9 tokens) closed by anchors; the prompt ends mid-sentence.
  static std::vector<int32_t> RandomText(uint64_t seed, int sentences) {
    std::mt19937_64 rng(seed);
    std::vector<int32_t> ids = {1};
    for (int s = 0; s < sentences; ++s) {
      const int len = 1 + static_cast<int>(rng() % 9);
      for (int i = 0; i < len; ++i) {
        int32_t id;
        do id = static_cast<int32_t>(8 + rng() % 56);
        while (id == kAnchor);
        ids.push_back(id);
      }
      ids.push_back(kAnchor);
    }
    ids.push_back(20);
    ids.push_back(21);
    return ids;
  }

  static SequenceOptions Options(AttentionMode mode, PositionPolicy policy) {
    SequenceOptions o;
    o.mode = mode;
    o.policy = policy;
    o.anchors = CustomAnchors({kAnchor}, kPad);
    return o;
  }

  // Feeds `ids` in chunks of the given sizes (the rest one at a time), teacher-forced,
  // returning all logits rows.
  static std::vector<float> Incremental(AnchorSequence& seq, const std::vector<int32_t>& ids,
                                        std::vector<size_t> chunks) {
    std::vector<float> all;
    size_t at = 0;
    while (at < ids.size()) {
      size_t n = 1;
      if (!chunks.empty()) {
        n = std::min(chunks.front(), ids.size() - at);
        chunks.erase(chunks.begin());
      }
      auto logits = seq.Feed(absl::MakeConstSpan(ids).subspan(at, n), /*all_logits=*/true);
      EXPECT_TRUE(logits.ok()) << logits.status();
      all.insert(all.end(), logits->begin(), logits->end());
      at += n;
    }
    return all;
  }

  static LlamaModel* model_;
};

LlamaModel* AnchorExactnessTest::model_ = nullptr;

TEST_F(AnchorExactnessTest, FullModeIsTheCausalForward) {
  const std::vector<int32_t> ids = RandomText(1, 6);
  auto reference = model_->ForwardFull(ids, Positions(ids.size()), BuildCausalMask(ids.size()));
  ASSERT_TRUE(reference.ok());
  for (std::vector<size_t> chunks : {std::vector<size_t>{}, {12}, {5, 9, 3}}) {
    auto seq =
        AnchorSequence::Create(model_, Options(AttentionMode::kFull, PositionPolicy::kAbsolute));
    const std::vector<float> got = Incremental(**seq, ids, chunks);
    EXPECT_LE(MaxAbsDiff(got, *reference), kFp32Tolerance);
    EXPECT_EQ((*seq)->kv_tokens(), static_cast<int64_t>(ids.size()));
  }
}

TEST_F(AnchorExactnessTest, AnchorModeIsTheAnsanMaskedForward) {
  for (uint64_t seed : {2, 3, 4, 5}) {
    const std::vector<int32_t> ids = RandomText(seed, 7);
    const AnchorSpec spec = CustomAnchors({kAnchor}, kPad);
    auto reference = model_->ForwardFull(ids, Positions(ids.size()), BuildAnsanMask(ids, spec));
    ASSERT_TRUE(reference.ok());
    auto causal = model_->ForwardFull(ids, Positions(ids.size()), BuildCausalMask(ids.size()));
    // Token-by-token, a prompt prefill then decode, and uneven chunks across sentence ends.
    for (std::vector<size_t> chunks :
         {std::vector<size_t>{}, {ids.size() / 2}, {4, 11, 2, 7, 1, 13}}) {
      auto seq = AnchorSequence::Create(model_,
                                        Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
      const std::vector<float> got = Incremental(**seq, ids, chunks);
      EXPECT_LE(MaxAbsDiff(got, *reference), kFp32Tolerance) << "seed " << seed;
    }
    // The comparison has teeth: the causal forward differs clearly.
    EXPECT_GT(MaxAbsDiff(*causal, *reference), 1e-2);
  }
}

TEST_F(AnchorExactnessTest, ReductionKeepsAnchorsAndCurrentSentence) {
  const std::vector<int32_t> ids = RandomText(9, 8);
  for (std::vector<size_t> chunks : {std::vector<size_t>{}, {6, 5, 9}}) {
    auto seq =
        AnchorSequence::Create(model_, Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
    size_t at = 0;
    while (at < ids.size()) {
      size_t n = 1;
      if (!chunks.empty()) {
        n = std::min(chunks.front(), ids.size() - at);
        chunks.erase(chunks.begin());
      }
      ASSERT_TRUE((*seq)->Feed(absl::MakeConstSpan(ids).subspan(at, n), false).ok());
      at += n;
      // Expected: every anchor so far, then every token after the last anchor, if this chunk
      // held an anchor; else the previous kept set plus the chunk.
      std::vector<int64_t> want;
      int64_t last_anchor = -1;
      for (size_t i = 0; i < at; ++i) {
        if (ids[i] == kAnchor) last_anchor = static_cast<int64_t>(i);
      }
      for (size_t i = 0; i < at; ++i) {
        if (ids[i] == kAnchor || static_cast<int64_t>(i) > last_anchor) want.push_back(i);
      }
      std::vector<int64_t> got;
      for (const KvEntry& e : (*seq)->entries()) got.push_back(e.position);
      // When the last chunk had no anchor, the tail since the last anchor is kept too, which
      // is the same set: tokens after the last anchor.
      EXPECT_EQ(got, want) << "after " << at << " tokens";
      EXPECT_EQ((*seq)->tokens_seen(), static_cast<int64_t>(at));
    }
    int64_t anchors = std::count(ids.begin(), ids.end(), kAnchor);
    EXPECT_EQ((*seq)->anchors(), anchors);
  }
}

// anllm-reference.md §3.3, the released code's positions (compact policy).
TEST_F(AnchorExactnessTest, CompactPolicyReproducesReferenceTrace) {
  // <s> a b . c d . q1 q2, then g1 g2 . h1
  const std::vector<int32_t> prompt = {1, 10, 11, kAnchor, 12, 13, kAnchor, 14, 15};
  auto seq =
      AnchorSequence::Create(model_, Options(AttentionMode::kAnchor, PositionPolicy::kCompact));
  ASSERT_TRUE((*seq)->Feed(prompt, false).ok());
  auto trace = [&] {
    std::vector<std::pair<int32_t, int64_t>> t;
    for (const KvEntry& e : (*seq)->entries()) t.emplace_back(e.token, e.position);
    return t;
  };
  using T = std::vector<std::pair<int32_t, int64_t>>;
  EXPECT_EQ(trace(), (T{{kAnchor, 3}, {kAnchor, 6}, {14, 7}, {15, 8}}));
  for (int32_t id : {16}) ASSERT_TRUE((*seq)->Feed({&id, 1}, false).ok());
  EXPECT_EQ(trace(), (T{{kAnchor, 3}, {kAnchor, 6}, {14, 7}, {15, 8}, {16, 4}}));
  for (int32_t id : {17}) ASSERT_TRUE((*seq)->Feed({&id, 1}, false).ok());
  const int32_t anchor = kAnchor;
  ASSERT_TRUE((*seq)->Feed({&anchor, 1}, false).ok());
  EXPECT_EQ(trace(), (T{{kAnchor, 3}, {kAnchor, 6}, {kAnchor, 6}}));
  const int32_t h1 = 18;
  ASSERT_TRUE((*seq)->Feed({&h1, 1}, false).ok());
  EXPECT_EQ(trace(), (T{{kAnchor, 3}, {kAnchor, 6}, {kAnchor, 6}, {18, 3}}));
}

TEST_F(AnchorExactnessTest, PoliciesAgreeUntilTheFirstReduction) {
  const std::vector<int32_t> ids = {1, 10, 11, 12, 13, 14};
  auto a =
      AnchorSequence::Create(model_, Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
  auto c =
      AnchorSequence::Create(model_, Options(AttentionMode::kAnchor, PositionPolicy::kCompact));
  EXPECT_LE(MaxAbsDiff(Incremental(**a, ids, {}), Incremental(**c, ids, {})), 0.0);
}

TEST_F(AnchorExactnessTest, PositionLimitIsOutOfRangeAndLeavesSequenceIntact) {
  ModelConfig config = SmallConfig();
  config.max_position_embeddings = 8;
  auto small = LlamaModel::CreateRandom(config, 1, LoadOptions{});
  ASSERT_TRUE(small.ok());
  auto seq = AnchorSequence::Create(small->get(),
                                    Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
  const std::vector<int32_t> ids = {1, 10, 11, kAnchor, 12, 13};
  ASSERT_TRUE((*seq)->Feed(ids, false).ok());
  auto too_far = (*seq)->Feed(std::vector<int32_t>{14, 15, 16}, false);
  ASSERT_FALSE(too_far.ok());
  EXPECT_EQ(too_far.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(too_far.status().message().find("max_position_embeddings"), std::string::npos);
  EXPECT_EQ((*seq)->tokens_seen(), 6);
  // Compact positions follow the kept length (3 here), so the same turn still fits.
  auto compact = AnchorSequence::Create(small->get(),
                                        Options(AttentionMode::kAnchor, PositionPolicy::kCompact));
  ASSERT_TRUE((*compact)->Feed(ids, false).ok());
  EXPECT_TRUE((*compact)->Feed(std::vector<int32_t>{14, 15, 16}, false).ok());
}

TEST_F(AnchorExactnessTest, BadIdIsInvalidArgumentAndLeavesSequenceIntact) {
  auto seq =
      AnchorSequence::Create(model_, Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
  ASSERT_TRUE((*seq)->Feed(std::vector<int32_t>{1, 10, kAnchor, 11}, false).ok());
  const auto before = (*seq)->entries().size();
  auto bad = (*seq)->Feed(std::vector<int32_t>{12, 64}, false);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*seq)->entries().size(), before);
  EXPECT_FALSE((*seq)->Feed(std::vector<int32_t>{}, false).ok());
}

}  // namespace
}  // namespace anchorserve::model
