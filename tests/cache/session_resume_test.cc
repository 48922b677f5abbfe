// The session store over the real paged cache: a session's next turn gives the same logits
// whether its state stayed in the pool, went to host memory, or was persisted to disk and
// restored by a restarted store. After deleting every session the pool is 100% free.
#include <filesystem>

#include "cache/resident_sequences.h"
#include "cache/session_store.h"
#include "common/remove_tree.h"
#include "gtest/gtest.h"

namespace anchorserve::cache {
namespace {

constexpr int32_t kAnchor = 7;

class SessionResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model::ModelConfig c;
    c.vocab_size = 64;
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = 1024;
    auto m = model::LlamaModel::CreateRandom(c, 77, model::LoadOptions{}, 0.15);
    ASSERT_TRUE(m.ok());
    model_ = *std::move(m);
    BlockPoolOptions pool_options;
    pool_options.geometry = GeometryOf(c, model::Precision::kFloat32);
    pool_options.block_tokens = 4;
    pool_options.budget_bytes = 128 * 4 * pool_options.geometry.bytes_per_token();
    pool_ = *BlockPool::Create(pool_options);
    anchors_ = model::CustomAnchors({kAnchor}, -1);
    resident_ = std::make_unique<ResidentSequences>(model_.get(), pool_.get(), anchors_, "m1");
    dir_ = ::testing::TempDir() + "/session_resume_" + std::to_string(::getpid());
    anchorserve::RemoveTree(dir_);
  }
  void TearDown() override { anchorserve::RemoveTree(dir_); }

  std::unique_ptr<SessionStore> NewStore() {
    SessionStoreOptions o;
    o.model_fingerprint = "m1";
    o.num_layers = 2;
    o.num_kv_heads = 2;
    o.head_dim = 16;
    o.dtype = "float32";
    o.disk_dir = dir_;
    auto store = SessionStore::Create(o, resident_.get());
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  PagedSequenceOptions Options() const {
    PagedSequenceOptions o;
    o.anchors = anchors_;
    o.model_fingerprint = "m1";
    return o;
  }

  // One turn on `handle`'s state (forked, as the store's contract asks), committed.
  std::vector<float> Turn(SessionStore& store, const std::string& id,
                          const std::vector<int32_t>& ids) {
    auto acquired = store.Acquire("tenant-a", id);
    EXPECT_TRUE(acquired.ok()) << acquired.status();
    uint64_t handle;
    if (acquired->has_value()) {
      auto fork = resident_->Fork(**acquired);
      EXPECT_TRUE(fork.ok()) << fork.status();
      handle = *fork;
    } else {
      handle = resident_->Insert(*PagedSequence::Create(model_.get(), pool_.get(), Options()));
    }
    auto logits = resident_->Get(handle)->Feed(ids, true);
    EXPECT_TRUE(logits.ok());
    EXPECT_TRUE(
        store.Commit("tenant-a", id, handle, resident_->Get(handle)->accounting()).ok());
    return *logits;
  }

  std::unique_ptr<model::LlamaModel> model_;
  std::unique_ptr<BlockPool> pool_;
  model::AnchorSpec anchors_;
  std::unique_ptr<ResidentSequences> resident_;
  std::string dir_;
};

const std::vector<int32_t> kTurn1 = {1, 10, 11, 12, kAnchor, 13, 14, kAnchor, 15, 16};
const std::vector<int32_t> kTurn2 = {17, 18, kAnchor, 19, 20, 21, kAnchor, 22};
const std::vector<int32_t> kTurn3 = {23, 24, 25, kAnchor, 26};

TEST_F(SessionResumeTest, NextTurnIsIdenticalFromEveryTier) {
  // Reference: one sequence that never leaves the pool.
  auto stay = *PagedSequence::Create(model_.get(), pool_.get(), Options());
  ASSERT_TRUE(stay->Feed(kTurn1, true).ok());
  const std::vector<float> want2 = *stay->Feed(kTurn2, true);
  const std::vector<float> want3 = *stay->Feed(kTurn3, true);
  const KvAccounting want_accounting = stay->accounting();
  stay.reset();

  auto store = NewStore();
  ASSERT_NE(store, nullptr);
  for (const std::string id : {"resident", "host", "disk"}) {
    ASSERT_TRUE(store->CreateSession("tenant-a", id).ok());
    Turn(*store, id, kTurn1);
  }
  // "host" and "disk" leave the pool: offload everything idle, then bring "resident" back.
  ASSERT_TRUE(store->OffloadLeastRecentlyUsed(INT64_MAX / 2).ok());
  EXPECT_EQ(Turn(*store, "resident", kTurn2), want2);
  EXPECT_EQ(Turn(*store, "host", kTurn2), want2);
  // Persist and restart: a new store over the same directory restores from disk.
  ASSERT_TRUE(store->PersistAll().ok());
  store.reset();
  EXPECT_EQ(resident_->size(), 0) << "a store's destruction after PersistAll keeps nothing resident";
  store = NewStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->List("tenant-a").size(), 3u);
  EXPECT_EQ(Turn(*store, "disk", kTurn2), want2);
  EXPECT_EQ(Turn(*store, "disk", kTurn3), want3);
  auto info = store->Get("tenant-a", "disk");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->accounting.kept_tokens, want_accounting.kept_tokens);
  EXPECT_EQ(info->accounting.full_tokens, want_accounting.full_tokens);
  EXPECT_EQ(info->turns, 3);
  // Another tenant sees nothing.
  EXPECT_EQ(store->Get("tenant-b", "disk").status().code(), absl::StatusCode::kNotFound);
  for (const std::string id : {"resident", "host", "disk"}) {
    ASSERT_TRUE(store->Delete("tenant-a", id).ok());
  }
  EXPECT_EQ(resident_->size(), 0);
  EXPECT_EQ(pool_->free_blocks(), pool_->total_blocks());
}

TEST_F(SessionResumeTest, ExportImportMovesASessionBetweenStores) {
  auto store = NewStore();
  ASSERT_TRUE(store->CreateSession("tenant-a", "s").ok());
  Turn(*store, "s", kTurn1);
  auto bytes = store->Export("tenant-a", "s");
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_TRUE(store->Import("tenant-a", "copy", *bytes).ok());
  EXPECT_EQ(Turn(*store, "copy", kTurn2), Turn(*store, "s", kTurn2));
}

}  // namespace
}  // namespace anchorserve::cache
