// Shared by the cache tests: random snapshots and a fake resident tier with injectable faults.
#ifndef ANCHORSERVE_TESTS_CACHE_SESSION_TEST_UTIL_H_
#define ANCHORSERVE_TESTS_CACHE_SESSION_TEST_UTIL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cache/session_snapshot.h"
#include "cache/session_store.h"

namespace anchorserve::cache::testing {

inline constexpr char kFingerprint[] = "tiny-test-model@0123abcd";
inline constexpr int32_t kLayers = 2;
inline constexpr int32_t kKvHeads = 2;
inline constexpr int32_t kHeadDim = 4;

// A valid snapshot of `entries` kept tokens with random contents (shape defaults to the test
// model's, float32).
inline SessionSnapshot RandomSnapshot(std::mt19937_64& rng, int entries,
                                      std::string dtype = "float32", int32_t layers = kLayers,
                                      int32_t kv_heads = kKvHeads, int32_t head_dim = kHeadDim) {
  SessionSnapshot s;
  s.model_fingerprint = kFingerprint;
  s.num_layers = layers;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.dtype = std::move(dtype);
  s.mode = rng() % 2 ? "anchor" : "full";
  s.position_policy = rng() % 2 ? "absolute" : "compact";
  int64_t position = static_cast<int64_t>(rng() % 1000);
  for (int i = 0; i < entries; ++i) {
    SnapshotEntry e;
    e.token = static_cast<int32_t>(rng() % 32000);
    e.position = position;
    position += 1 + static_cast<int64_t>(rng() % 20);
    e.kind = static_cast<EntryKind>(rng() % 3);
    s.entries.push_back(e);
  }
  s.next_position = position;
  s.accounting.kept_tokens = entries;
  s.accounting.full_tokens = entries + static_cast<int64_t>(rng() % 5000);
  s.accounting.anchors = static_cast<int64_t>(rng() % 100);
  s.accounting.peak_kept_tokens = entries + static_cast<int64_t>(rng() % 50);
  s.accounting.bytes_per_token = 2 * layers * kv_heads * head_dim * (s.dtype == "float32" ? 4 : 2);
  s.kv.resize(static_cast<size_t>(s.ExpectedKvBytes()));
  for (uint8_t& b : s.kv) b = static_cast<uint8_t>(rng());
  return s;
}

// The paged cache as the session store sees it: snapshots in a map, a byte capacity (the
// pool), and failures injected at the Nth Restore or Snapshot call. Thread-safe, because in
// concurrent tests "engine" threads Add sequences outside the store's lock.
class FakeResidentPool : public ResidentSessions {
 public:
  explicit FakeResidentPool(int64_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

  absl::StatusOr<SessionSnapshot> Snapshot(uint64_t handle) override {
    absl::MutexLock lock(&mu_);
    if (++snapshot_calls_ == fail_snapshot_at_) {
      return absl::InternalError("injected Snapshot failure");
    }
    auto it = blocks_.find(handle);
    if (it == blocks_.end()) return absl::NotFoundError(absl::StrCat("no handle ", handle));
    return it->second;
  }

  void Release(uint64_t handle) override {
    absl::MutexLock lock(&mu_);
    auto it = blocks_.find(handle);
    if (it == blocks_.end()) {
      ++bad_releases_;
      return;
    }
    used_bytes_ -= Bytes(it->second);
    blocks_.erase(it);
  }

  absl::StatusOr<uint64_t> Restore(const SessionSnapshot& s) override {
    absl::MutexLock lock(&mu_);
    if (++restore_calls_ == fail_restore_at_) {
      return absl::InternalError("injected Restore failure");
    }
    return AddLocked(s);
  }

  int64_t ResidentBytes(uint64_t handle) const override {
    absl::MutexLock lock(&mu_);
    auto it = blocks_.find(handle);
    return it == blocks_.end() ? 0 : Bytes(it->second);
  }

  // What the engine does when a turn's sequence is built: blocks from the same pool.
  absl::StatusOr<uint64_t> Add(const SessionSnapshot& s) {
    absl::MutexLock lock(&mu_);
    return AddLocked(s);
  }

  // A copy of the state behind `handle`, or nullopt.
  std::optional<SessionSnapshot> Get(uint64_t handle) const {
    absl::MutexLock lock(&mu_);
    auto it = blocks_.find(handle);
    if (it == blocks_.end()) return std::nullopt;
    return it->second;
  }

  // Fail the Nth call from now (1 = the next one).
  void FailNthRestore(int n) {
    absl::MutexLock lock(&mu_);
    fail_restore_at_ = restore_calls_ + n;
  }
  void FailNthSnapshot(int n) {
    absl::MutexLock lock(&mu_);
    fail_snapshot_at_ = snapshot_calls_ + n;
  }

  size_t size() const {
    absl::MutexLock lock(&mu_);
    return blocks_.size();
  }
  int64_t used_bytes() const {
    absl::MutexLock lock(&mu_);
    return used_bytes_;
  }
  int bad_releases() const {
    absl::MutexLock lock(&mu_);
    return bad_releases_;
  }
  static int64_t Bytes(const SessionSnapshot& s) { return static_cast<int64_t>(s.kv.size()); }

 private:
  absl::StatusOr<uint64_t> AddLocked(const SessionSnapshot& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (used_bytes_ + Bytes(s) > capacity_bytes_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("fake pool full: ", used_bytes_, " of ", capacity_bytes_, " bytes used"));
    }
    used_bytes_ += Bytes(s);
    blocks_[next_handle_] = s;
    return next_handle_++;
  }

  const int64_t capacity_bytes_;
  mutable absl::Mutex mu_;
  int64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, SessionSnapshot> blocks_ ABSL_GUARDED_BY(mu_);
  int restore_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int snapshot_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int fail_restore_at_ ABSL_GUARDED_BY(mu_) = -1;
  int fail_snapshot_at_ ABSL_GUARDED_BY(mu_) = -1;
  int bad_releases_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace anchorserve::cache::testing

#endif  // ANCHORSERVE_TESTS_CACHE_SESSION_TEST_UTIL_H_
