// The paged, anchor-native layout computes exactly what the reference does: the model core's
// exactness tests run through it (same tolerances), REDUCTION keeps exactly what §4 keeps,
// kept-full spans follow their documented mask, and blocks never leak.
#include "cache/paged_sequence.h"

#include <random>

#include "gtest/gtest.h"
#include "model/ansan_mask.h"
#include "tests/model/test_util.h"

namespace anchorserve::cache {
namespace {

using ::anchorserve::testing::MaxAbsDiff;
using ::anchorserve::testing::Positions;
using model::AttentionMode;
using model::PositionPolicy;

constexpr int32_t kAnchor = 7;
constexpr int32_t kPad = 3;
constexpr double kFp32Tolerance = 1e-5;

model::ModelConfig SmallConfig() {
  model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 1024;
  c.rms_norm_eps = 1e-5;
  return c;
}

class PagedSequenceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto m = model::LlamaModel::CreateRandom(SmallConfig(), 4321, model::LoadOptions{}, 0.15);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() { delete model_; }

  void SetUp() override {
    BlockPoolOptions options;
    options.geometry = GeometryOf(model_->config(), model::Precision::kFloat32);
    options.block_tokens = 4;  // small blocks: many boundaries crossed
    options.budget_bytes = 256 * options.block_tokens * options.geometry.bytes_per_token();
    auto pool = BlockPool::Create(options);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
  }

  static PagedSequenceOptions Options(AttentionMode mode, PositionPolicy policy) {
    PagedSequenceOptions o;
    o.mode = mode;
    o.policy = policy;
    o.anchors = model::CustomAnchors({kAnchor}, kPad);
    o.model_fingerprint = "test-model";
    return o;
  }

  static std::vector<int32_t> RandomText(uint64_t seed, int sentences) {
    std::mt19937_64 rng(seed);
    std::vector<int32_t> ids = {1};
    for (int s = 0; s < sentences; ++s) {
      const int len = 1 + static_cast<int>(rng() % 11);
      for (int i = 0; i < len; ++i) {
        int32_t id;
        do id = static_cast<int32_t>(8 + rng() % 56);
        while (id == kAnchor);
        ids.push_back(id);
      }
      ids.push_back(kAnchor);
    }
    ids.push_back(20);
    return ids;
  }

  static std::vector<size_t> RandomChunks(uint64_t seed, size_t total) {
    std::mt19937_64 rng(seed);
    std::vector<size_t> chunks;
    size_t at = 0;
    while (at < total) {
      const size_t n = std::min(total - at, static_cast<size_t>(1 + rng() % 9));
      chunks.push_back(n);
      at += n;
    }
    return chunks;
  }

  // Feeds in the given chunks, teacher-forced; returns all logits rows.
  static std::vector<float> FeedAll(PagedSequence& seq, const std::vector<int32_t>& ids,
                                    const std::vector<size_t>& chunks,
                                    const std::vector<uint8_t>& spans = {}) {
    std::vector<float> all;
    size_t at = 0;
    for (size_t n : chunks) {
      absl::Span<const uint8_t> flags;
      if (!spans.empty()) flags = absl::MakeConstSpan(spans).subspan(at, n);
      auto logits = seq.Feed(absl::MakeConstSpan(ids).subspan(at, n), true, flags);
      EXPECT_TRUE(logits.ok()) << logits.status();
      if (!logits.ok()) return all;
      all.insert(all.end(), logits->begin(), logits->end());
      at += n;
    }
    return all;
  }

  static model::LlamaModel* model_;
  std::unique_ptr<BlockPool> pool_;
};

model::LlamaModel* PagedSequenceTest::model_ = nullptr;

TEST_F(PagedSequenceTest, MatchesReferenceIncrementalPathInEveryModeAndPolicy) {
  for (uint64_t seed : {1, 2, 3}) {
    const std::vector<int32_t> ids = RandomText(seed, 6);
    for (AttentionMode mode : {AttentionMode::kAnchor, AttentionMode::kFull}) {
      for (PositionPolicy policy : {PositionPolicy::kAbsolute, PositionPolicy::kCompact}) {
        const std::vector<size_t> chunks = RandomChunks(seed * 7, ids.size());
        model::SequenceOptions ref_options;
        ref_options.mode = mode;
        ref_options.policy = policy;
        ref_options.anchors = model::CustomAnchors({kAnchor}, kPad);
        auto ref = model::AnchorSequence::Create(model_, ref_options);
        std::vector<float> want;
        size_t at = 0;
        for (size_t n : chunks) {
          auto l = (*ref)->Feed(absl::MakeConstSpan(ids).subspan(at, n), true);
          want.insert(want.end(), l->begin(), l->end());
          at += n;
        }
        auto seq = PagedSequence::Create(model_, pool_.get(), Options(mode, policy));
        ASSERT_TRUE(seq.ok());
        EXPECT_LE(MaxAbsDiff(FeedAll(**seq, ids, chunks), want), kFp32Tolerance)
            << "seed " << seed << " " << model::AttentionModeName(mode) << "/"
            << model::PositionPolicyName(policy);
        // Same kept positions as the reference (order: anchors first, as the reference keeps).
        std::vector<int64_t> got_pos, want_pos;
        for (const auto& e : (*seq)->entries()) got_pos.push_back(e.position);
        for (const auto& e : (*ref)->entries()) want_pos.push_back(e.position);
        EXPECT_EQ(got_pos, want_pos);
      }
    }
  }
  EXPECT_EQ(pool_->used_blocks(), 0);  // every sequence returned its blocks
}

TEST_F(PagedSequenceTest, AnchorModeIsTheMaskedFullForwardForAnyChunking) {
  for (uint64_t seed : {11, 12, 13, 14}) {
    const std::vector<int32_t> ids = RandomText(seed, 8);
    const auto spec = model::CustomAnchors({kAnchor}, kPad);
    auto reference =
        model_->ForwardFull(ids, Positions(ids.size()), model::BuildAnsanMask(ids, spec));
    ASSERT_TRUE(reference.ok());
    auto seq = PagedSequence::Create(model_, pool_.get(),
                                     Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
    EXPECT_LE(MaxAbsDiff(FeedAll(**seq, ids, RandomChunks(seed, ids.size())), *reference),
              kFp32Tolerance);
  }
}

// Kept-full spans (docs/KV_CACHE.md): visible(i, j) = AnSAN(i, j) or (j in a span and j <= i).
TEST_F(PagedSequenceTest, KeptFullSpansFollowTheirMask) {
  for (uint64_t seed : {21, 22, 23}) {
    const std::vector<int32_t> ids = RandomText(seed, 7);
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> spans(ids.size(), 0);
    const size_t begin = 1 + rng() % (ids.size() / 2);
    const size_t end = std::min(ids.size() - 2, begin + 3 + rng() % 12);  // inclusive
    for (size_t i = begin; i <= end; ++i) spans[i] = 1;
    model::AttentionMask mask = model::BuildAnsanMask(ids, model::CustomAnchors({kAnchor}, kPad));
    const size_t n = ids.size();
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = begin; j <= std::min(end, i); ++j) mask[i * n + j] = 1;
    }
    auto reference = model_->ForwardFull(ids, Positions(n), mask);
    ASSERT_TRUE(reference.ok());
    auto seq = PagedSequence::Create(model_, pool_.get(),
                                     Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
    EXPECT_LE(MaxAbsDiff(FeedAll(**seq, ids, RandomChunks(seed, n), spans), *reference),
              kFp32Tolerance)
        << "span [" << begin << ", " << end << "]";
    // Every span token is kept; nothing else survives but anchors and the open sentence.
    int64_t kept_full = 0;
    for (const auto& e : (*seq)->entries()) kept_full += e.kind == EntryKind::kKeptFull;
    EXPECT_EQ(kept_full, static_cast<int64_t>(end - begin + 1));
  }
}

// Property test: after every step the kept set is exactly what REDUCTION keeps, accounting adds
// up, blocks held match the regions, and the pool is 100% free at the end.
TEST_F(PagedSequenceTest, KeptSetAccountingAndBlocksAfterEveryStep) {
  std::mt19937_64 rng(99);
  for (int round = 0; round < 12; ++round) {
    const std::vector<int32_t> ids = RandomText(100 + round, 5 + round % 4);
    auto seq = PagedSequence::Create(model_, pool_.get(),
                                     Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
    size_t at = 0;
    for (size_t n : RandomChunks(200 + round, ids.size())) {
      ASSERT_TRUE((*seq)->Feed(absl::MakeConstSpan(ids).subspan(at, n), false).ok());
      at += n;
      std::vector<int64_t> want;
      int64_t last_anchor = -1, anchors = 0;
      for (size_t i = 0; i < at; ++i) {
        if (ids[i] == kAnchor) {
          last_anchor = static_cast<int64_t>(i);
          ++anchors;
        }
      }
      for (size_t i = 0; i < at; ++i) {
        if (ids[i] == kAnchor) want.push_back(static_cast<int64_t>(i));
      }
      for (size_t i = last_anchor + 1; i < at; ++i) want.push_back(static_cast<int64_t>(i));
      std::vector<int64_t> got;
      for (const auto& e : (*seq)->entries()) got.push_back(e.position);
      ASSERT_EQ(got, want) << "round " << round << " after " << at;
      const KvAccounting a = (*seq)->accounting();
      EXPECT_EQ(a.kept_tokens, static_cast<int64_t>(want.size()));
      EXPECT_EQ(a.full_tokens, static_cast<int64_t>(at));
      EXPECT_EQ(a.anchors, anchors);
      EXPECT_EQ(a.kept_bytes(), a.kept_tokens * pool_->options().geometry.bytes_per_token());
      const int64_t open = static_cast<int64_t>(at) - 1 - last_anchor;
      EXPECT_EQ((*seq)->blocks_held(), (anchors + 3) / 4 + (open + 3) / 4);
      EXPECT_EQ(pool_->used_blocks(), (*seq)->blocks_held());
    }
    (void)rng;
  }
  EXPECT_EQ(pool_->free_blocks(), pool_->total_blocks());
}

TEST_F(PagedSequenceTest, SnapshotRestoreIsBitExactAndContinuesIdentically) {
  const std::vector<int32_t> turn1 = RandomText(31, 5);
  const std::vector<int32_t> turn2 = RandomText(32, 3);
  for (AttentionMode mode : {AttentionMode::kAnchor, AttentionMode::kFull}) {
    const auto options = Options(mode, PositionPolicy::kAbsolute);
    auto stay = PagedSequence::Create(model_, pool_.get(), options);
    ASSERT_TRUE((*stay)->Feed(turn1, false).ok());
    auto snap = (*stay)->Snapshot();
    ASSERT_TRUE(snap.ok()) << snap.status();
    EXPECT_EQ(static_cast<int64_t>(snap->kv.size()), snap->ExpectedKvBytes());
    auto moved = PagedSequence::Restore(model_, pool_.get(), options, *snap);
    ASSERT_TRUE(moved.ok()) << moved.status();
    auto again = (*moved)->Snapshot();
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(*again == *snap);
    auto a = (*stay)->Feed(turn2, true);
    auto b = (*moved)->Feed(turn2, true);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b);  // bit-identical: same bytes, same order, same ops
  }
  EXPECT_EQ(pool_->used_blocks(), 0);
}

// A clone holds the same state in its own blocks: both continue identically and
// independently, and a clone the pool cannot hold allocates nothing.
TEST_F(PagedSequenceTest, CloneIsExactAndIndependent) {
  const std::vector<int32_t> turn1 = RandomText(33, 6);
  const std::vector<int32_t> turn2 = RandomText(34, 3);
  for (AttentionMode mode : {AttentionMode::kAnchor, AttentionMode::kFull}) {
    auto original = PagedSequence::Create(model_, pool_.get(),
                                          Options(mode, PositionPolicy::kAbsolute));
    ASSERT_TRUE((*original)->Feed(turn1, false).ok());
    const auto before = (*original)->Snapshot();
    ASSERT_TRUE(before.ok());
    auto clone = (*original)->Clone();
    ASSERT_TRUE(clone.ok()) << clone.status();
    EXPECT_EQ((*clone)->blocks_held(), (*original)->blocks_held());
    auto cloned = (*clone)->Snapshot();
    ASSERT_TRUE(cloned.ok());
    EXPECT_TRUE(*cloned == *before);
    auto a = (*clone)->Feed(turn2, true);
    ASSERT_TRUE(a.ok());
    auto untouched = (*original)->Snapshot();
    ASSERT_TRUE(untouched.ok());
    EXPECT_TRUE(*untouched == *before);  // feeding the clone left the original as it was
    auto b = (*original)->Feed(turn2, true);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(*a, *b);

    const int64_t used = pool_->used_blocks();
    pool_->TEST_FailAllocation(2);
    auto refused = (*original)->Clone();
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(pool_->used_blocks(), used);
    pool_->TEST_FailAllocation(0);
  }
  EXPECT_EQ(pool_->used_blocks(), 0);
}

TEST_F(PagedSequenceTest, RestoreRefusesAnotherModelOrMode) {
  auto seq = PagedSequence::Create(model_, pool_.get(),
                                   Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute));
  ASSERT_TRUE((*seq)->Feed(RandomText(41, 2), false).ok());
  auto snap = (*seq)->Snapshot();
  ASSERT_TRUE(snap.ok());
  auto other = Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute);
  other.model_fingerprint = "another-model";
  EXPECT_EQ(PagedSequence::Restore(model_, pool_.get(), other, *snap).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PagedSequence::Restore(model_, pool_.get(),
                                   Options(AttentionMode::kFull, PositionPolicy::kAbsolute), *snap)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  SessionSnapshot truncated = *snap;
  truncated.kv.pop_back();
  EXPECT_FALSE(PagedSequence::Restore(model_, pool_.get(),
                                      Options(AttentionMode::kAnchor, PositionPolicy::kAbsolute),
                                      truncated)
                   .ok());
}

// Fault injection: allocation failure at the Nth block leaves the sequence and pool as before.
TEST_F(PagedSequenceTest, AllocationFailureLeavesEverythingAsBefore) {
  const std::vector<int32_t> ids = RandomText(51, 6);
  for (int64_t nth = 1; nth <= 3; ++nth) {  // the chunk needs 3 new blocks
    auto seq = PagedSequence::Create(model_, pool_.get(),
                                     Options(AttentionMode::kFull, PositionPolicy::kAbsolute));
    ASSERT_TRUE((*seq)->Feed(absl::MakeConstSpan(ids).subspan(0, 6), false).ok());
    const auto before = (*seq)->entries();
    const int64_t used = pool_->used_blocks();
    pool_->TEST_FailAllocation(nth);
    auto failed = (*seq)->Feed(absl::MakeConstSpan(ids).subspan(6, 14), false);
    ASSERT_FALSE(failed.ok()) << "nth " << nth;
    EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ((*seq)->entries(), before);
    EXPECT_EQ(pool_->used_blocks(), used);
    pool_->TEST_FailAllocation(0);
    EXPECT_TRUE((*seq)->Feed(absl::MakeConstSpan(ids).subspan(6, 14), false).ok());
  }
  EXPECT_EQ(pool_->used_blocks(), 0);
}

TEST_F(PagedSequenceTest, PoolExhaustionIsResourceExhaustedNotACrash) {
  BlockPoolOptions small = pool_->options();
  small.budget_bytes = 3 * small.block_tokens * small.geometry.bytes_per_token();
  auto pool = BlockPool::Create(small);
  ASSERT_TRUE(pool.ok());
  auto seq = PagedSequence::Create(model_, pool->get(),
                                   Options(AttentionMode::kFull, PositionPolicy::kAbsolute));
  const std::vector<int32_t> ids = RandomText(61, 4);
  ASSERT_TRUE((*seq)->Feed(absl::MakeConstSpan(ids).subspan(0, 12), false).ok());
  auto more = (*seq)->Feed(absl::MakeConstSpan(ids).subspan(12, 1), false);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(more.status().message().find("KV pool exhausted"), std::string::npos);
}

TEST(BlockPoolTest, BudgetValidationAndFreeList) {
  BlockPoolOptions options;
  options.geometry = {2, 2, 8, 4};
  options.block_tokens = 4;
  options.budget_bytes = 10;
  EXPECT_EQ(BlockPool::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.budget_bytes = 5 * 4 * options.geometry.bytes_per_token() + 7;
  auto pool = BlockPool::Create(options);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*pool)->total_blocks(), 5);
  std::vector<int32_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(*(*pool)->Allocate());
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_FALSE((*pool)->Allocate().ok());
  (*pool)->Free(2);
  (*pool)->Free(2);  // double free is a guarded no-op
  EXPECT_EQ((*pool)->free_blocks(), 1);
  EXPECT_EQ(*(*pool)->Allocate(), 2);
  options.free_memory_fraction = 0.5;  // CPU pools take bytes only
  EXPECT_FALSE(BlockPool::Create(options).ok());
}

}  // namespace
}  // namespace anchorserve::cache
