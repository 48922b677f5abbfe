#include "cache/session_store.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/remove_tree.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/session_test_util.h"

namespace anchorserve::cache {
namespace {

using ::anchorserve::cache::testing::FakeResidentPool;
using ::anchorserve::cache::testing::kFingerprint;
using ::anchorserve::cache::testing::RandomSnapshot;
using ::testing::HasSubstr;

template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}
absl::Status StatusOf(const absl::Status& s) { return s; }

#define ASSERT_OK(expr)                      \
  do {                                       \
    const absl::Status _st = StatusOf(expr); \
    ASSERT_TRUE(_st.ok()) << _st;            \
  } while (0)
#define EXPECT_OK(expr)                      \
  do {                                       \
    const absl::Status _st = StatusOf(expr); \
    EXPECT_TRUE(_st.ok()) << _st;            \
  } while (0)

constexpr char kTenant[] = "tenant-a";
constexpr int kEntries = 8;  // 8 entries of the test shape: 2*2*2*8*4*4 = 1024 kv bytes
constexpr int64_t kSessionBytes = 1024;

// Disk operations that fail on demand with a chosen errno (0: pass through to POSIX).
class FaultInjectionFileSystem : public SessionFileSystem {
 public:
  std::atomic<int> write_errno{0};
  std::atomic<int> delete_errno{0};
  std::atomic<int> writes{0};

  absl::Status CreateDirectories(const std::string& dir) override {
    return base_->CreateDirectories(dir);
  }
  absl::StatusOr<std::unique_ptr<DirectoryLock>> LockDirectory(const std::string& dir) override {
    return base_->LockDirectory(dir);
  }
  absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) override {
    return base_->ListDirectory(dir);
  }
  absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) override {
    return base_->ReadFile(path, max_bytes);
  }
  absl::Status WriteFileAtomically(const std::string& path, absl::string_view data) override {
    ++writes;
    if (const int e = write_errno.load(); e != 0) {
      return absl::ErrnoToStatus(e, absl::StrCat("cannot create a temporary file for ", path));
    }
    return base_->WriteFileAtomically(path, data);
  }
  absl::Status DeleteFile(const std::string& path) override {
    if (const int e = delete_errno.load(); e != 0) {
      return absl::ErrnoToStatus(e, absl::StrCat("cannot delete ", path));
    }
    return base_->DeleteFile(path);
  }

 private:
  SessionFileSystem* base_ = SessionFileSystem::Posix();
};

class SessionStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "/session_store_test.XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    root_ = templ;
    disk_dir_ = root_ + "/sessions";
  }
  void TearDown() override {
    ::chmod(disk_dir_.c_str(), 0700);
    anchorserve::RemoveTree(root_);
  }

  SessionStoreOptions Options(bool with_disk = true) {
    SessionStoreOptions o;
    o.model_fingerprint = kFingerprint;
    o.num_layers = testing::kLayers;
    o.num_kv_heads = testing::kKvHeads;
    o.head_dim = testing::kHeadDim;
    o.dtype = "float32";
    o.clock = [this] { return now_; };
    if (with_disk) o.disk_dir = disk_dir_;
    return o;
  }

  std::unique_ptr<SessionStore> MakeStore(SessionStoreOptions options, ResidentSessions* pool) {
    absl::StatusOr<std::unique_ptr<SessionStore>> store =
        SessionStore::Create(std::move(options), pool);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // One successful turn: acquire, build the next state as a new sequence in the pool (as the
  // engine does), commit. Returns the committed state.
  absl::StatusOr<SessionSnapshot> Turn(SessionStore& store, FakeResidentPool& pool,
                                       absl::string_view tenant, absl::string_view id,
                                       int entries = kEntries) {
    absl::StatusOr<std::optional<uint64_t>> acquired = store.Acquire(tenant, id);
    if (!acquired.ok()) return acquired.status();
    SessionSnapshot next = RandomSnapshot(rng_, entries);
    absl::StatusOr<uint64_t> handle = pool.Add(next);
    if (!handle.ok()) {
      (void)store.Abandon(tenant, id);
      return handle.status();
    }
    if (absl::Status s = store.Commit(tenant, id, *handle, next.accounting); !s.ok()) return s;
    return next;
  }

  // The session's state without moving it (Export works from every tier).
  absl::StatusOr<SessionSnapshot> StateOf(SessionStore& store, absl::string_view tenant,
                                          absl::string_view id) {
    absl::StatusOr<std::string> bytes = store.Export(tenant, id);
    if (!bytes.ok()) return bytes.status();
    return DecodeSnapshot(*bytes, "export");
  }

  // Acquires the session, checks the resident state is exactly `expected`, abandons.
  void ExpectRestoresExactly(SessionStore& store, FakeResidentPool& pool, absl::string_view tenant,
                             absl::string_view id, const SessionSnapshot& expected) {
    absl::StatusOr<std::optional<uint64_t>> handle = store.Acquire(tenant, id);
    ASSERT_TRUE(handle.ok()) << id << ": " << handle.status();
    ASSERT_TRUE(handle->has_value()) << id;
    const std::optional<SessionSnapshot> resident = pool.Get(**handle);
    ASSERT_TRUE(resident.has_value());
    EXPECT_TRUE(*resident == expected) << id << " differs after the round trip";
    EXPECT_OK(store.Abandon(tenant, id));
  }

  SessionTier TierOf(SessionStore& store, absl::string_view tenant, absl::string_view id) {
    absl::StatusOr<SessionInfo> info = store.Get(tenant, id);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->tier : SessionTier::kEmpty;
  }

  std::vector<std::string> SessionFiles() {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(disk_dir_, ec)) {
      const std::string name = e.path().filename().string();
      if (name != "LOCK") names.push_back(name);
    }
    return names;
  }

  void Advance(absl::Duration d) { now_ += d; }

  std::string root_;
  std::string disk_dir_;
  absl::Time now_ = absl::FromUnixSeconds(1'700'000'000);
  std::mt19937_64 rng_{42};
};

TEST_F(SessionStoreTest, CreateValidatesOptions) {
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.model_fingerprint.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(SessionStore::Create(o, &pool).status()));
  o = Options();
  o.dtype = "float16";
  EXPECT_TRUE(absl::IsInvalidArgument(SessionStore::Create(o, &pool).status()));
  o = Options();
  o.head_dim = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(SessionStore::Create(o, &pool).status()));
  o = Options();
  o.host_max_bytes = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(SessionStore::Create(o, &pool).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(SessionStore::Create(Options(), nullptr).status()));
}

TEST_F(SessionStoreTest, TurnsAccumulateAndReplacePreviousState) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  ASSERT_OK(store->CreateSession(kTenant, "chat"));
  EXPECT_TRUE(absl::IsAlreadyExists(store->CreateSession(kTenant, "chat")));
  EXPECT_TRUE(absl::IsInvalidArgument(store->CreateSession(kTenant, "")));

  // A brand-new session has no state: the first turn starts from an empty sequence.
  absl::StatusOr<std::optional<uint64_t>> first = store->Acquire(kTenant, "chat");
  ASSERT_OK(first);
  EXPECT_FALSE(first->has_value());
  SessionSnapshot state = RandomSnapshot(rng_, 3);
  ASSERT_OK(pool.Add(state));
  const uint64_t h1 = *pool.Add(state);
  ASSERT_OK(store->Commit(kTenant, "chat", h1, state.accounting));

  const absl::Time created = now_;
  for (int turn = 2; turn <= 4; ++turn) {
    Advance(absl::Seconds(10));
    absl::StatusOr<std::optional<uint64_t>> handle = store->Acquire(kTenant, "chat");
    ASSERT_OK(handle);
    ASSERT_TRUE(handle->has_value());
    EXPECT_EQ(*pool.Get(**handle), state);  // the next turn attaches to the previous state
    state = RandomSnapshot(rng_, kEntries + turn);
    const uint64_t next = *pool.Add(state);
    ASSERT_OK(store->Commit(kTenant, "chat", next, state.accounting));
    EXPECT_FALSE(pool.Get(**handle).has_value()) << "the superseded state is released";
  }
  absl::StatusOr<SessionInfo> info = store->Get(kTenant, "chat");
  ASSERT_OK(info);
  EXPECT_EQ(info->turns, 4);
  EXPECT_EQ(info->tier, SessionTier::kResident);
  EXPECT_EQ(info->accounting, state.accounting);
  EXPECT_EQ(info->bytes, FakeResidentPool::Bytes(state));
  EXPECT_EQ(info->created, created);
  EXPECT_EQ(info->last_used, now_);
  EXPECT_FALSE(info->busy);
  EXPECT_EQ(pool.size(), 2u);  // the session's state + the stray sequence added above
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, BusySessionAndAbandonKeepsPreviousState) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  ASSERT_OK(store->CreateSession(kTenant, "s"));
  absl::StatusOr<SessionSnapshot> state = Turn(*store, pool, kTenant, "s");
  ASSERT_OK(state);

  absl::StatusOr<std::optional<uint64_t>> handle = store->Acquire(kTenant, "s");
  ASSERT_OK(handle);
  for (const absl::Status& busy :
       {store->Acquire(kTenant, "s").status(), store->Delete(kTenant, "s"),
        store->Export(kTenant, "s").status()}) {
    EXPECT_TRUE(absl::IsFailedPrecondition(busy)) << busy;
    EXPECT_THAT(busy.message(), HasSubstr("session busy"));
  }
  absl::StatusOr<SessionInfo> info = store->Get(kTenant, "s");
  ASSERT_OK(info);
  EXPECT_TRUE(info->busy);
  EXPECT_EQ(store->Stats().busy_sessions, 1);
  // A busy session is never moved.
  EXPECT_EQ(*store->OffloadLeastRecentlyUsed(1 << 20), 0);
  EXPECT_EQ(TierOf(*store, kTenant, "s"), SessionTier::kResident);

  // The turn fails (its own sequence is the engine's to free): the session keeps its state.
  ASSERT_OK(store->Abandon(kTenant, "s"));
  EXPECT_EQ(store->Get(kTenant, "s")->turns, 1);
  ExpectRestoresExactly(*store, pool, kTenant, "s", *state);
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Abandon(kTenant, "s")));
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Commit(kTenant, "s", 99, {})));
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, OffloadToHostThenDiskAndBackIsBitExact) {
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.host_max_sessions = 1;
  auto store = MakeStore(o, &pool);
  std::map<std::string, SessionSnapshot> expected;
  for (const std::string id : {"a", "b"}) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    absl::StatusOr<SessionSnapshot> s = Turn(*store, pool, kTenant, id);
    ASSERT_OK(s);
    expected[id] = *s;
    Advance(absl::Seconds(1));
  }
  // Pool pressure: both leave the pool, "a" (older) first; host holds one, so "a" goes on to
  // disk when "b" arrives.
  absl::StatusOr<int64_t> freed = store->OffloadLeastRecentlyUsed(2 * kSessionBytes);
  ASSERT_OK(freed);
  EXPECT_EQ(*freed, 2 * kSessionBytes);
  EXPECT_EQ(pool.size(), 0u);
  EXPECT_EQ(TierOf(*store, kTenant, "a"), SessionTier::kDisk);
  EXPECT_EQ(TierOf(*store, kTenant, "b"), SessionTier::kHost);
  EXPECT_EQ(SessionFiles().size(), 1u);
  SessionStoreStats stats = store->Stats();
  EXPECT_EQ(stats.resident.sessions, 0);
  EXPECT_EQ(stats.host.sessions, 1);
  EXPECT_EQ(stats.disk.sessions, 1);
  EXPECT_GT(stats.disk.bytes, kSessionBytes);
  EXPECT_OK(store->TEST_CheckInvariants());

  ExpectRestoresExactly(*store, pool, kTenant, "a", expected["a"]);
  ExpectRestoresExactly(*store, pool, kTenant, "b", expected["b"]);
  EXPECT_EQ(TierOf(*store, kTenant, "a"), SessionTier::kResident);
  EXPECT_TRUE(SessionFiles().empty()) << "a session lives in one tier: its file goes";
  // And the next turn continues from the restored state.
  ASSERT_OK(Turn(*store, pool, kTenant, "a"));
  EXPECT_EQ(store->Get(kTenant, "a")->turns, 2);
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, RestartRestoresPersistedSessionsBitExact) {
  std::map<std::string, SessionSnapshot> expected;
  std::map<std::string, SessionInfo> before;
  {
    FakeResidentPool pool(1 << 20);
    auto store = MakeStore(Options(), &pool);
    for (const std::string id : {"r1", "r2", "h1", "fresh"}) {
      ASSERT_OK(store->CreateSession(kTenant, id));
      Advance(absl::Seconds(1));
    }
    for (const std::string id : {"h1", "r2", "r1"}) {  // LRU: h1 oldest, then r2, r1
      absl::StatusOr<SessionSnapshot> s = Turn(*store, pool, kTenant, id);
      ASSERT_OK(s);
      expected[id] = *s;
      Advance(absl::Seconds(1));
    }
    EXPECT_TRUE(absl::IsNotFound(Turn(*store, pool, "tenant-b", "r1").status()));
    ASSERT_OK(store->OffloadLeastRecentlyUsed(1));  // h1 -> host
    EXPECT_EQ(TierOf(*store, kTenant, "h1"), SessionTier::kHost);

    // One store per directory.
    FakeResidentPool other_pool(1 << 20);
    absl::Status locked = SessionStore::Create(Options(), &other_pool).status();
    EXPECT_TRUE(absl::IsFailedPrecondition(locked)) << locked;

    ASSERT_OK(store->PersistAll());
    EXPECT_EQ(pool.size(), 0u);
    EXPECT_EQ(SessionFiles().size(), 4u);
    for (const SessionInfo& info : store->List(kTenant)) {
      EXPECT_EQ(info.tier, SessionTier::kDisk) << info.session_id;
      before[info.session_id] = info;
    }
    for (const std::string& name : SessionFiles()) {
      EXPECT_FALSE(absl::StrContains(name, "r1") || absl::StrContains(name, kTenant)) << name;
    }
  }

  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->IndexProblems().empty());
  const std::vector<SessionInfo> after = store->List(kTenant);
  ASSERT_EQ(after.size(), 4u);
  for (const SessionInfo& info : after) {
    const SessionInfo& b = before[info.session_id];
    EXPECT_EQ(info.tier, SessionTier::kDisk);
    EXPECT_EQ(info.turns, b.turns);
    EXPECT_EQ(info.accounting, b.accounting);
    EXPECT_EQ(info.created, b.created);
    EXPECT_EQ(info.last_used, b.last_used);
  }
  for (const auto& [id, state] : expected) {
    ExpectRestoresExactly(*store, pool, kTenant, id, state);
  }
  absl::StatusOr<std::optional<uint64_t>> fresh = store->Acquire(kTenant, "fresh");
  ASSERT_OK(fresh);
  EXPECT_FALSE(fresh->has_value());
  ASSERT_OK(store->Abandon(kTenant, "fresh"));
  EXPECT_TRUE(SessionFiles().empty());
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, LeastRecentlyUsedOrderAtEachTier) {
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.host_max_sessions = 2;
  auto store = MakeStore(o, &pool);
  for (const std::string id : {"a", "b", "c", "d"}) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    ASSERT_OK(Turn(*store, pool, kTenant, id));
    Advance(absl::Seconds(1));
  }
  // Touch "a": the resident order becomes b, c, d, a.
  ASSERT_OK(store->Acquire(kTenant, "a"));
  ASSERT_OK(store->Abandon(kTenant, "a"));

  auto tiers = [&] {
    std::string out;
    for (const std::string id : {"a", "b", "c", "d"}) {
      absl::StrAppend(&out, id, "=", SessionTierName(TierOf(*store, kTenant, id)), " ");
    }
    return out;
  };
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));
  EXPECT_EQ(tiers(), "a=resident b=host c=resident d=resident ");
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));
  EXPECT_EQ(tiers(), "a=resident b=host c=host d=resident ");
  // Host is full (2 sessions): its least recently used ("b") goes to disk.
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));
  EXPECT_EQ(tiers(), "a=resident b=disk c=host d=host ");
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));
  EXPECT_EQ(tiers(), "a=host b=disk c=disk d=host ");
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, FullPoolOnAcquireOffloadsLeastRecentlyUsedIdleSession) {
  FakeResidentPool pool(2 * kSessionBytes);
  auto store = MakeStore(Options(), &pool);
  std::map<std::string, SessionSnapshot> expected;
  for (const std::string id : {"a", "b"}) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    expected[id] = *Turn(*store, pool, kTenant, id);
    Advance(absl::Seconds(1));
  }
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));  // a -> host
  ASSERT_OK(store->CreateSession(kTenant, "c"));
  expected["c"] = *Turn(*store, pool, kTenant, "c");  // pool: b, c (full)
  ASSERT_OK(store->Acquire(kTenant, "b"));            // b busy

  // "a" comes back: the pool is full, so the least recently used idle session ("c": "b" is
  // busy) makes room.
  ExpectRestoresExactly(*store, pool, kTenant, "a", expected["a"]);
  EXPECT_EQ(TierOf(*store, kTenant, "c"), SessionTier::kHost);
  EXPECT_EQ(TierOf(*store, kTenant, "b"), SessionTier::kResident);

  // With every resident session busy, nothing can make room: a clear error, nothing moves.
  ASSERT_OK(store->Acquire(kTenant, "a"));
  absl::Status full = store->Acquire(kTenant, "c").status();
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  EXPECT_THAT(full.message(), HasSubstr("busy"));
  EXPECT_EQ(TierOf(*store, kTenant, "c"), SessionTier::kHost);
  EXPECT_FALSE(store->Get(kTenant, "c")->busy);
  EXPECT_EQ(*StateOf(*store, kTenant, "c"), expected["c"]);
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, ResidentSoftLimitsOffloadAfterCommit) {
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.resident_max_sessions = 2;
  auto store = MakeStore(o, &pool);
  for (const std::string id : {"a", "b", "c"}) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    ASSERT_OK(Turn(*store, pool, kTenant, id));
    Advance(absl::Seconds(1));
  }
  EXPECT_EQ(TierOf(*store, kTenant, "a"), SessionTier::kHost);
  EXPECT_EQ(store->Stats().resident.sessions, 2);

  o = Options(false);
  o.resident_max_bytes = kSessionBytes;
  FakeResidentPool pool2(1 << 20);
  auto store2 = MakeStore(o, &pool2);
  ASSERT_OK(store2->CreateSession(kTenant, "x"));
  ASSERT_OK(store2->CreateSession(kTenant, "y"));
  ASSERT_OK(Turn(*store2, pool2, kTenant, "x"));
  ASSERT_OK(Turn(*store2, pool2, kTenant, "y"));
  EXPECT_EQ(TierOf(*store2, kTenant, "x"), SessionTier::kHost);
  EXPECT_EQ(store2->Stats().resident.bytes, kSessionBytes);
}

TEST_F(SessionStoreTest, SessionTooBigForHostGoesStraightToDisk) {
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.host_max_bytes = 2 * kSessionBytes;
  auto store = MakeStore(o, &pool);
  ASSERT_OK(store->CreateSession(kTenant, "small"));
  ASSERT_OK(store->CreateSession(kTenant, "big"));
  ASSERT_OK(Turn(*store, pool, kTenant, "small"));
  absl::StatusOr<SessionSnapshot> big = Turn(*store, pool, kTenant, "big", 4 * kEntries);
  ASSERT_OK(big);
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1 << 20));
  EXPECT_EQ(TierOf(*store, kTenant, "small"), SessionTier::kHost);
  EXPECT_EQ(TierOf(*store, kTenant, "big"), SessionTier::kDisk);
  EXPECT_LE(store->Stats().host.bytes, o.host_max_bytes);
  ExpectRestoresExactly(*store, pool, kTenant, "big", *big);
}

TEST_F(SessionStoreTest, IdleTtlAndIdleOffloadFollowTheInjectedClock) {
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.idle_ttl = absl::Minutes(10);
  o.idle_offload_after = absl::Minutes(1);
  auto store = MakeStore(o, &pool);
  for (const std::string id : {"a", "b", "busy", "empty"})
    ASSERT_OK(store->CreateSession(kTenant, id));
  ASSERT_OK(Turn(*store, pool, kTenant, "a"));
  ASSERT_OK(Turn(*store, pool, kTenant, "b"));
  ASSERT_OK(store->Acquire(kTenant, "busy"));

  Advance(absl::Seconds(59));
  IdleSweepResult sweep = store->ExpireIdle();
  EXPECT_OK(sweep.status);
  EXPECT_EQ(sweep.offloaded, 0);
  EXPECT_EQ(sweep.expired, 0);

  Advance(absl::Seconds(1));  // exactly the idle-offload threshold
  sweep = store->ExpireIdle();
  EXPECT_OK(sweep.status);
  EXPECT_EQ(sweep.offloaded, 2);
  EXPECT_EQ(TierOf(*store, kTenant, "a"), SessionTier::kHost);
  EXPECT_EQ(pool.size(), 0u);

  Advance(absl::Minutes(4));
  ASSERT_OK(store->Acquire(kTenant, "a"));  // "a" used at t=5min
  ASSERT_OK(store->Abandon(kTenant, "a"));
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));
  const absl::Status drained = store->PersistAll();  // everything idle to disk, "busy" not
  EXPECT_TRUE(absl::IsFailedPrecondition(drained)) << drained;
  EXPECT_THAT(drained.message(), HasSubstr("1 busy"));

  Advance(absl::Minutes(5));  // t=10min: b and "empty" idle 10min, a idle 5min
  sweep = store->ExpireIdle();
  EXPECT_OK(sweep.status);
  EXPECT_EQ(sweep.expired, 2);
  EXPECT_TRUE(absl::IsNotFound(store->Get(kTenant, "b").status()));
  EXPECT_TRUE(absl::IsNotFound(store->Get(kTenant, "empty").status()));
  EXPECT_OK(store->Get(kTenant, "a"));

  Advance(absl::Hours(5));
  sweep = store->ExpireIdle();
  EXPECT_EQ(sweep.expired, 1);
  EXPECT_TRUE(store->Get(kTenant, "busy")->busy) << "a busy session never expires";
  EXPECT_EQ(store->List(kTenant).size(), 1u);
  EXPECT_TRUE(SessionFiles().empty());
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, WrongTenantIsExactlyNotFound) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  ASSERT_OK(store->CreateSession("alice", "s"));
  absl::StatusOr<SessionSnapshot> state = Turn(*store, pool, "alice", "s");
  ASSERT_OK(state);

  const std::vector<absl::Status> wrong_tenant = {
      store->Get("mallory", "s").status(),    store->Acquire("mallory", "s").status(),
      store->Export("mallory", "s").status(), store->Delete("mallory", "s"),
      store->Commit("mallory", "s", 1, {}),   store->Abandon("mallory", "s"),
  };
  EXPECT_TRUE(store->List("mallory").empty());
  // Another tenant may use the same id: a different session.
  ASSERT_OK(store->CreateSession("mallory", "other"));
  ASSERT_OK(store->CreateSession("mallory", "s"));
  ASSERT_OK(store->Delete("mallory", "s"));
  EXPECT_EQ(*StateOf(*store, "alice", "s"), *state);

  ASSERT_OK(store->Delete("alice", "s"));
  const std::vector<absl::Status> missing = {
      store->Get("alice", "s").status(),    store->Acquire("alice", "s").status(),
      store->Export("alice", "s").status(), store->Delete("alice", "s"),
      store->Commit("alice", "s", 1, {}),   store->Abandon("alice", "s"),
  };
  ASSERT_EQ(wrong_tenant.size(), missing.size());
  for (size_t i = 0; i < missing.size(); ++i) {
    EXPECT_TRUE(absl::IsNotFound(wrong_tenant[i])) << i << ": " << wrong_tenant[i];
    EXPECT_EQ(wrong_tenant[i], missing[i]) << i;
  }
}

TEST_F(SessionStoreTest, AllTiersFullIsResourceExhaustedAndNothingIsLost) {
  FakeResidentPool pool(2 * kSessionBytes);
  SessionStoreOptions o = Options();
  o.host_max_sessions = 1;
  o.disk_max_sessions = 1;
  auto store = MakeStore(o, &pool);
  std::map<std::string, SessionSnapshot> expected;
  auto turn = [&](const std::string& id) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    absl::StatusOr<SessionSnapshot> s = Turn(*store, pool, kTenant, id);
    ASSERT_OK(s);
    expected[id] = *s;
    Advance(absl::Seconds(1));
  };
  turn("a");
  turn("b");
  ASSERT_OK(store->OffloadLeastRecentlyUsed(2 * kSessionBytes));  // a -> host -> disk, b -> host
  turn("c");
  turn("d");  // pool: c, d; host: b; disk: a. Every tier is full.

  absl::StatusOr<int64_t> offload = store->OffloadLeastRecentlyUsed(1);
  EXPECT_TRUE(absl::IsResourceExhausted(offload.status())) << offload.status();
  EXPECT_THAT(offload.status().message(), HasSubstr("host tier full"));
  EXPECT_THAT(offload.status().message(), HasSubstr("disk tier full"));

  // A restore needs the pool to make room: refused the same way, the session stays put.
  absl::Status acquire = store->Acquire(kTenant, "a").status();
  EXPECT_TRUE(absl::IsResourceExhausted(acquire)) << acquire;
  EXPECT_THAT(acquire.message(), HasSubstr("disk tier full"));
  EXPECT_EQ(TierOf(*store, kTenant, "a"), SessionTier::kDisk);

  // Import needs host or disk room.
  const std::string bytes = EncodeSnapshot(expected["a"]);
  absl::Status import = store->Import(kTenant, "copy", bytes);
  EXPECT_TRUE(absl::IsResourceExhausted(import)) << import;
  EXPECT_TRUE(absl::IsNotFound(store->Get(kTenant, "copy").status()));

  EXPECT_EQ(store->List(kTenant).size(), 4u);
  for (const auto& [id, state] : expected) {
    absl::StatusOr<SessionSnapshot> now = StateOf(*store, kTenant, id);
    ASSERT_OK(now);
    EXPECT_EQ(*now, state) << id;
  }
  EXPECT_EQ(TierOf(*store, kTenant, "b"), SessionTier::kHost);
  EXPECT_EQ(TierOf(*store, kTenant, "c"), SessionTier::kResident);
  EXPECT_OK(store->TEST_CheckInvariants());

  // Freeing a tier unblocks: delete "a" from disk, then the offload cascades.
  ASSERT_OK(store->Delete(kTenant, "a"));
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));  // c -> host, b -> disk
  EXPECT_EQ(TierOf(*store, kTenant, "b"), SessionTier::kDisk);
  EXPECT_EQ(TierOf(*store, kTenant, "c"), SessionTier::kHost);
}

TEST_F(SessionStoreTest, ExportFromEveryTierAndImportIsBitExact) {
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.host_max_sessions = 1;
  auto store = MakeStore(o, &pool);
  ASSERT_OK(store->CreateSession(kTenant, "s"));
  absl::StatusOr<SessionSnapshot> state = Turn(*store, pool, kTenant, "s");
  ASSERT_OK(state);
  const std::string expected = EncodeSnapshot(*state);

  EXPECT_EQ(*store->Export(kTenant, "s"), expected);  // resident
  const absl::Time last_used = store->Get(kTenant, "s")->last_used;
  Advance(absl::Minutes(1));
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));
  EXPECT_EQ(*store->Export(kTenant, "s"), expected);  // host
  ASSERT_OK(store->PersistAll());
  EXPECT_EQ(TierOf(*store, kTenant, "s"), SessionTier::kDisk);
  EXPECT_EQ(*store->Export(kTenant, "s"), expected);  // disk
  EXPECT_EQ(TierOf(*store, kTenant, "s"), SessionTier::kDisk) << "export does not move it";
  EXPECT_EQ(store->Get(kTenant, "s")->last_used, last_used) << "nor count as a use";

  ASSERT_OK(store->CreateSession(kTenant, "new"));
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Export(kTenant, "new").status()));

  // Import into another tenant (another replica, say): lands in host, restores exactly.
  ASSERT_OK(store->Import("tenant-b", "moved", expected));
  absl::StatusOr<SessionInfo> info = store->Get("tenant-b", "moved");
  ASSERT_OK(info);
  EXPECT_EQ(info->tier, SessionTier::kHost);
  EXPECT_EQ(info->turns, 0);
  EXPECT_EQ(info->accounting, state->accounting);
  ExpectRestoresExactly(*store, pool, "tenant-b", "moved", *state);
  EXPECT_TRUE(absl::IsAlreadyExists(store->Import("tenant-b", "moved", expected)));
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, ImportValidatesModelAndShape) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  SessionSnapshot s = RandomSnapshot(rng_, 4);

  absl::Status garbage = store->Import(kTenant, "g", "not a snapshot");
  EXPECT_TRUE(absl::IsInvalidArgument(garbage)) << garbage;

  SessionSnapshot other = s;
  other.model_fingerprint = "another-model";
  absl::Status model = store->Import(kTenant, "m", EncodeSnapshot(other));
  EXPECT_TRUE(absl::IsFailedPrecondition(model)) << model;
  EXPECT_THAT(model.message(), HasSubstr("another-model"));

  SessionSnapshot shape = RandomSnapshot(rng_, 4, "float32", testing::kLayers + 1);
  absl::Status dims = store->Import(kTenant, "d", EncodeSnapshot(shape));
  EXPECT_TRUE(absl::IsFailedPrecondition(dims)) << dims;

  SessionSnapshot bf16 = RandomSnapshot(rng_, 4, "bfloat16");
  EXPECT_TRUE(absl::IsFailedPrecondition(store->Import(kTenant, "b", EncodeSnapshot(bf16))));
  EXPECT_TRUE(store->List(kTenant).empty());
  EXPECT_OK(store->Import(kTenant, "ok", EncodeSnapshot(s)));
}

TEST_F(SessionStoreTest, CorruptFileAffectsOnlyItsSession) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  std::map<std::string, SessionSnapshot> expected;
  for (const std::string id : {"a", "b", "c"}) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    expected[id] = *Turn(*store, pool, kTenant, id);
  }
  ASSERT_OK(store->PersistAll());
  {
    // Flip one byte inside b's kv data.
    std::fstream f(store->TEST_FilePath(kTenant, "b"),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-100, std::ios::end);
    f.put('\x5a');
  }
  absl::Status b = store->Acquire(kTenant, "b").status();
  EXPECT_TRUE(absl::IsDataLoss(b)) << b;
  EXPECT_THAT(b.message(), HasSubstr("checksum"));
  EXPECT_TRUE(absl::IsDataLoss(store->Export(kTenant, "b").status()));
  EXPECT_EQ(TierOf(*store, kTenant, "b"), SessionTier::kDisk);
  EXPECT_FALSE(store->Get(kTenant, "b")->busy);
  ExpectRestoresExactly(*store, pool, kTenant, "a", expected["a"]);
  ExpectRestoresExactly(*store, pool, kTenant, "c", expected["c"]);
  // The damaged session can be deleted, file and all.
  ASSERT_OK(store->Delete(kTenant, "b"));
  EXPECT_TRUE(SessionFiles().empty());
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, DamagedFilesFoundAtRestartAreIsolated) {
  std::map<std::string, SessionSnapshot> expected;
  std::string header_damaged, truncated;
  {
    FakeResidentPool pool(1 << 20);
    auto store = MakeStore(Options(), &pool);
    for (const std::string id : {"good1", "header", "short", "good2"}) {
      ASSERT_OK(store->CreateSession(kTenant, id));
      expected[id] = *Turn(*store, pool, kTenant, id);
    }
    ASSERT_OK(store->PersistAll());
    header_damaged = store->TEST_FilePath(kTenant, "header");
    truncated = store->TEST_FilePath(kTenant, "short");
  }
  {
    std::fstream f(header_damaged, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put('\x01');
  }
  std::filesystem::resize_file(truncated, std::filesystem::file_size(truncated) - 10);
  // Files that are not ours are ignored; a leftover temporary file is cleaned up.
  std::ofstream(disk_dir_ + "/README.txt") << "not a session";
  const std::string temp = disk_dir_ + "/0123456789abcdef.session.tmp.AbC123";
  std::ofstream(temp) << "partial";
  // A file of another model is skipped and left in place.
  SessionStoreOptions other = Options();
  other.disk_dir = root_ + "/other";
  other.model_fingerprint = "another-model";
  std::string foreign;
  {
    FakeResidentPool pool(1 << 20);
    auto store = MakeStore(other, &pool);
    ASSERT_OK(store->CreateSession(kTenant, "foreign"));
    ASSERT_OK(store->PersistAll());
    foreign = store->TEST_FilePath(kTenant, "foreign");
  }
  const std::string foreign_here =
      disk_dir_ + "/" + std::filesystem::path(foreign).filename().string();
  std::filesystem::copy_file(foreign, foreign_here);

  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(store->IndexProblems().size(), 2u);
  std::string problems;
  for (const absl::Status& p : store->IndexProblems())
    absl::StrAppend(&problems, p.ToString(), "\n");
  EXPECT_THAT(problems, HasSubstr("header checksum mismatch"));
  EXPECT_THAT(problems, HasSubstr("another-model"));
  EXPECT_TRUE(std::filesystem::exists(header_damaged)) << "skipped files are left in place";
  EXPECT_TRUE(std::filesystem::exists(foreign_here));
  EXPECT_FALSE(std::filesystem::exists(temp));
  EXPECT_TRUE(std::filesystem::exists(disk_dir_ + "/README.txt"));

  EXPECT_TRUE(absl::IsNotFound(store->Get(kTenant, "header").status()));
  absl::Status short_status = store->Acquire(kTenant, "short").status();
  EXPECT_TRUE(absl::IsDataLoss(short_status)) << short_status;
  EXPECT_THAT(short_status.message(), HasSubstr("truncated"));
  ExpectRestoresExactly(*store, pool, kTenant, "good1", expected["good1"]);
  ExpectRestoresExactly(*store, pool, kTenant, "good2", expected["good2"]);
  EXPECT_OK(store->TEST_CheckInvariants());
}

// RLIMIT_FSIZE makes a write past the limit fail with EFBIG (with SIGXFSZ ignored), as a full
// disk would fail with ENOSPC.
TEST_F(SessionStoreTest, DiskFullKeepsSessionInItsTier) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  ASSERT_OK(store->CreateSession(kTenant, "big"));
  absl::StatusOr<SessionSnapshot> state = Turn(*store, pool, kTenant, "big", 64);  // 8 KiB kv
  ASSERT_OK(state);
  ASSERT_OK(store->CreateSession(kTenant, "host"));
  absl::StatusOr<SessionSnapshot> host_state = Turn(*store, pool, kTenant, "host", 64);
  ASSERT_OK(host_state);
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));  // "big" -> host
  Advance(absl::Seconds(1));

  struct sigaction ignore = {}, previous = {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ignore, &previous), 0);
  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  absl::Status persisted;
  {
    absl::Cleanup restore = [&] {
      ::setrlimit(RLIMIT_FSIZE, &saved);
      ::sigaction(SIGXFSZ, &previous, nullptr);
    };
    persisted = store->PersistAll();
  }
  EXPECT_FALSE(persisted.ok());
  EXPECT_THAT(persisted.message(), HasSubstr("2 failed"));
  EXPECT_THAT(persisted.message(), HasSubstr("cannot write"));
  EXPECT_THAT(persisted.message(), HasSubstr("File too large"));
  EXPECT_EQ(TierOf(*store, kTenant, "big"), SessionTier::kHost);
  EXPECT_EQ(TierOf(*store, kTenant, "host"), SessionTier::kResident);
  EXPECT_TRUE(SessionFiles().empty()) << "no partial or temporary file is left";
  ExpectRestoresExactly(*store, pool, kTenant, "big", *state);
  ExpectRestoresExactly(*store, pool, kTenant, "host", *host_state);
  ASSERT_OK(store->PersistAll());  // space again: it works
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, ReadOnlyDirectoryKeepsSessionInItsTier) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  ASSERT_OK(store->CreateSession(kTenant, "s"));
  absl::StatusOr<SessionSnapshot> state = Turn(*store, pool, kTenant, "s");
  ASSERT_OK(state);
  ASSERT_EQ(::chmod(disk_dir_.c_str(), 0500), 0);
  const std::string probe = disk_dir_ + "/probe";
  const int fd = ::open(probe.c_str(), O_CREAT | O_WRONLY, 0600);
  if (fd >= 0) {
    ::close(fd);
    ::unlink(probe.c_str());
    ::chmod(disk_dir_.c_str(), 0700);
    GTEST_SKIP() << "running with privileges that ignore directory permissions (root?); "
                    "FaultInjectedWritesAndDeletes covers EROFS/EACCES";
  }
  absl::Status persisted = store->PersistAll();
  EXPECT_FALSE(persisted.ok());
  EXPECT_THAT(persisted.message(), HasSubstr("cannot write"));
  EXPECT_EQ(TierOf(*store, kTenant, "s"), SessionTier::kResident);
  ExpectRestoresExactly(*store, pool, kTenant, "s", *state);
  ::chmod(disk_dir_.c_str(), 0700);
}

TEST_F(SessionStoreTest, FaultInjectedWritesAndDeletes) {
  FaultInjectionFileSystem fs;
  FakeResidentPool pool(1 << 20);
  SessionStoreOptions o = Options();
  o.file_system = &fs;
  o.host_max_sessions = 1;
  auto store = MakeStore(o, &pool);
  std::map<std::string, SessionSnapshot> expected;
  for (const std::string id : {"a", "b"}) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    expected[id] = *Turn(*store, pool, kTenant, id);
    Advance(absl::Seconds(1));
  }
  ASSERT_OK(store->OffloadLeastRecentlyUsed(1));  // a -> host

  // Read-only file system: "b" cannot enter host because "a" cannot move on to disk.
  fs.write_errno = EROFS;
  absl::StatusOr<int64_t> offload = store->OffloadLeastRecentlyUsed(1);
  EXPECT_FALSE(offload.ok());
  EXPECT_THAT(offload.status().message(), HasSubstr("Read-only file system"));
  EXPECT_THAT(offload.status().message(), HasSubstr("host tier full"));
  EXPECT_EQ(TierOf(*store, kTenant, "a"), SessionTier::kHost);
  EXPECT_EQ(TierOf(*store, kTenant, "b"), SessionTier::kResident);

  fs.write_errno = ENOSPC;
  absl::Status persisted = store->PersistAll();
  EXPECT_TRUE(absl::IsResourceExhausted(persisted)) << persisted;
  EXPECT_THAT(persisted.message(), HasSubstr("No space left on device"));
  EXPECT_EQ(*StateOf(*store, kTenant, "a"), expected["a"]);
  EXPECT_EQ(*StateOf(*store, kTenant, "b"), expected["b"]);

  // A file that cannot be removed keeps its session (Delete is all or nothing).
  fs.write_errno = 0;
  ASSERT_OK(store->PersistAll());
  fs.delete_errno = EACCES;
  absl::Status deleted = store->Delete(kTenant, "a");
  EXPECT_TRUE(absl::IsPermissionDenied(deleted)) << deleted;
  EXPECT_EQ(*StateOf(*store, kTenant, "a"), expected["a"]);
  // A restore whose stale file cannot be removed still works; the file goes later.
  ExpectRestoresExactly(*store, pool, kTenant, "b", expected["b"]);
  EXPECT_EQ(store->Stats().disk.sessions, 2) << "b's stale file is still counted";
  fs.delete_errno = 0;
  ASSERT_OK(Turn(*store, pool, kTenant, "b"));
  EXPECT_EQ(store->Stats().disk.sessions, 1);
  ASSERT_OK(store->Delete(kTenant, "a"));
  ASSERT_OK(store->Delete(kTenant, "b"));
  EXPECT_TRUE(SessionFiles().empty());
  EXPECT_EQ(pool.size(), 0u);
  EXPECT_OK(store->TEST_CheckInvariants());
}

TEST_F(SessionStoreTest, ResidentFaultsLeaveSessionsWhereTheyWere) {
  FakeResidentPool pool(1 << 20);
  auto store = MakeStore(Options(), &pool);
  std::map<std::string, SessionSnapshot> expected;
  for (const std::string id : {"a", "b"}) {
    ASSERT_OK(store->CreateSession(kTenant, id));
    expected[id] = *Turn(*store, pool, kTenant, id);
  }
  pool.FailNthSnapshot(1);
  absl::StatusOr<int64_t> offload = store->OffloadLeastRecentlyUsed(1);
  EXPECT_TRUE(absl::IsInternal(offload.status())) << offload.status();
  EXPECT_THAT(offload.status().message(), HasSubstr("injected Snapshot failure"));
  EXPECT_EQ(TierOf(*store, kTenant, "a"), SessionTier::kResident);

  ASSERT_OK(store->OffloadLeastRecentlyUsed(2 * kSessionBytes));
  pool.FailNthRestore(2);  // "a" restores, "b" fails
  ExpectRestoresExactly(*store, pool, kTenant, "a", expected["a"]);
  absl::Status b = store->Acquire(kTenant, "b").status();
  EXPECT_TRUE(absl::IsInternal(b)) << b;
  EXPECT_EQ(TierOf(*store, kTenant, "b"), SessionTier::kHost);
  EXPECT_FALSE(store->Get(kTenant, "b")->busy);
  ExpectRestoresExactly(*store, pool, kTenant, "b", expected["b"]);  // the next try works
  EXPECT_OK(store->TEST_CheckInvariants());
}

// Random operations over many sessions, checking the store's bookkeeping after each and every
// session's state at the end; then everything is deleted and nothing may remain.
TEST_F(SessionStoreTest, RandomWorkloadKeepsInvariantsAndLeavesNothingBehind) {
  FakeResidentPool pool(6 * kSessionBytes);
  SessionStoreOptions o = Options();
  o.host_max_sessions = 4;
  o.disk_max_sessions = 1000;
  o.resident_max_sessions = 5;
  auto store = MakeStore(o, &pool);
  std::map<std::string, std::optional<SessionSnapshot>> expected;
  std::mt19937_64 ops(99);
  for (int step = 0; step < 1500; ++step) {
    Advance(absl::Seconds(1));
    const std::string id = absl::StrCat("s", ops() % 24);
    const int op = static_cast<int>(ops() % 10);
    const bool exists = expected.count(id) > 0;
    if (!exists) {
      ASSERT_OK(store->CreateSession(kTenant, id));
      expected[id] = std::nullopt;
    } else if (op < 5) {
      absl::StatusOr<SessionSnapshot> s = Turn(*store, pool, kTenant, id);
      if (s.ok()) {
        expected[id] = *s;
      } else {
        ASSERT_TRUE(absl::IsResourceExhausted(s.status())) << s.status();
      }
    } else if (op == 5) {
      ASSERT_OK(store->OffloadLeastRecentlyUsed(static_cast<int64_t>(ops() % 3) * kSessionBytes));
    } else if (op == 6) {
      ASSERT_OK(store->Delete(kTenant, id));
      expected.erase(id);
    } else if (op == 7 && ops() % 8 == 0) {
      ASSERT_OK(store->PersistAll());
    } else if (op == 8 && expected[id].has_value()) {
      absl::StatusOr<SessionSnapshot> now = StateOf(*store, kTenant, id);
      ASSERT_OK(now);
      ASSERT_EQ(*now, *expected[id]) << "step " << step;
    } else {
      ASSERT_OK(store->Acquire(kTenant, id));
      ASSERT_OK(store->Abandon(kTenant, id));
    }
    ASSERT_OK(store->TEST_CheckInvariants());
    ASSERT_EQ(pool.bad_releases(), 0);
  }
  for (const auto& [id, state] : expected) {
    if (state.has_value()) ExpectRestoresExactly(*store, pool, kTenant, id, *state);
  }
  for (const auto& [id, state] : expected) ASSERT_OK(store->Delete(kTenant, id));
  EXPECT_EQ(pool.size(), 0u);
  EXPECT_EQ(pool.used_bytes(), 0);
  EXPECT_TRUE(SessionFiles().empty());
  const SessionStoreStats stats = store->Stats();
  EXPECT_EQ(
      stats.resident.sessions + stats.host.sessions + stats.disk.sessions + stats.empty_sessions,
      0);
  EXPECT_EQ(stats.resident.bytes + stats.host.bytes + stats.disk.bytes, 0);
}

// Turns on distinct sessions from several "engine" threads while admin threads list, export
// and offload. Meant for sanitizer builds; in a plain build it checks nothing is lost.
TEST_F(SessionStoreTest, ConcurrentCallersAreSerialized) {
  FakeResidentPool pool(1 << 24);
  SessionStoreOptions o = Options();
  o.clock = nullptr;  // the real clock: the fake one is not meant for threads
  o.host_max_sessions = 4;
  auto store = MakeStore(o, &pool);
  constexpr int kThreads = 4;
  constexpr int kTurns = 50;
  std::vector<std::thread> threads;
  std::vector<SessionSnapshot> last(kThreads);
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      const std::string id = absl::StrCat("t", t);
      if (!store->CreateSession(kTenant, id).ok()) ++failures;
      for (int i = 0; i < kTurns; ++i) {
        absl::StatusOr<std::optional<uint64_t>> h = store->Acquire(kTenant, id);
        if (!h.ok()) {
          ++failures;
          continue;
        }
        SessionSnapshot next = RandomSnapshot(rng, kEntries);
        absl::StatusOr<uint64_t> handle = pool.Add(next);
        if (!handle.ok() || !store->Commit(kTenant, id, *handle, next.accounting).ok()) {
          ++failures;
          continue;
        }
        last[t] = next;
      }
    });
  }
  std::atomic<bool> stop{false};
  std::thread admin([&] {
    while (!stop) {
      (void)store->List(kTenant);
      (void)store->Export(kTenant, "t0");
      (void)store->OffloadLeastRecentlyUsed(kSessionBytes);
      (void)store->Stats();
    }
  });
  for (std::thread& t : threads) t.join();
  stop = true;
  admin.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    ExpectRestoresExactly(*store, pool, kTenant, absl::StrCat("t", t), last[t]);
  }
  EXPECT_OK(store->TEST_CheckInvariants());
}

}  // namespace
}  // namespace anchorserve::cache
