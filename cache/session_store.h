// The session-scoped anchor KV store: what a conversation keeps between turns, and where.
//
// A session's state (a SessionSnapshot's worth of anchors, tail, kept-full spans, position
// counter and accounting) lives in exactly one tier:
//   resident : KV blocks in the device pool, owned by the paged cache (ResidentSessions);
//   host     : a SessionSnapshot in host memory;
//   disk     : one file per session in SessionStoreOptions::disk_dir (optional tier).
// A session created but not yet through a turn has no state (tier kEmpty, zero bytes).
// Each tier has byte and session-count limits; when a tier needs room its least recently used
// idle sessions move to the next tier down; only when every tier below is full too does the
// operation that needed room fail, with RESOURCE_EXHAUSTED naming the full tiers. Nothing is
// ever dropped to make room: sessions leave the store only by Delete or the idle TTL.
//
// Sessions are keyed by (tenant, session id): the same id under two tenants names two
// sessions, and a lookup under the wrong tenant is exactly a lookup of an id that does not
// exist (same code, same message).
//
// Thread-safety: every method may be called from any thread (the engine thread runs turns;
// admin RPC threads list, export, import, delete). One mutex serializes them, and
// ResidentSessions and disk I/O are called while it is held, so ResidentSessions must not
// call back into the store. Disk I/O under the lock is a deliberate simplicity: it costs
// latency only when a session actually moves to or from disk.
#ifndef ANCHORSERVE_CACHE_SESSION_STORE_H_
#define ANCHORSERVE_CACHE_SESSION_STORE_H_

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cache/session_snapshot.h"

namespace anchorserve::cache {

// Implemented by the paged cache (and by test fakes). Called only under SessionStore's lock,
// so implementations must not call back into the store. A handle names one sequence's KV
// state in the device pool; the store owns the handles it holds (from Restore, or moved to it
// by Commit) and releases each exactly once.
class ResidentSessions {
 public:
  virtual ~ResidentSessions() = default;
  // Copies the state out (the blocks stay). The snapshot carries the served model's
  // fingerprint and KV shape.
  virtual absl::StatusOr<SessionSnapshot> Snapshot(uint64_t handle) = 0;
  // Frees the handle's blocks.
  virtual void Release(uint64_t handle) = 0;
  // Allocates blocks and copies `s` in. ResourceExhausted when the pool is full (the store
  // then offloads an idle session and retries); any other error is passed to the caller.
  virtual absl::StatusOr<uint64_t> Restore(const SessionSnapshot& s) = 0;
  // Device bytes the handle's state occupies (what the resident tier counts).
  virtual int64_t ResidentBytes(uint64_t handle) const = 0;
};

// The file operations of the disk tier, so tests can inject faults (LevelDB's Env pattern).
// Paths are absolute or relative to the working directory. Errors carry the errno-derived
// code (absl::ErrnoToStatus) and name the path.
class SessionFileSystem {
 public:
  // Held while a store uses a directory; destroying it releases the lock.
  class DirectoryLock {
   public:
    virtual ~DirectoryLock() = default;
  };

  virtual ~SessionFileSystem() = default;

  // The real file system. Never null; lives for the whole process.
  static SessionFileSystem* Posix();

  // Creates `dir` and its missing parents (mode 0700). OK when it already exists.
  virtual absl::Status CreateDirectories(const std::string& dir) = 0;
  // Takes an exclusive lock on `dir` (a LOCK file inside it) so that two stores, in one
  // process or two, never share a directory. FailedPrecondition when it is already held.
  virtual absl::StatusOr<std::unique_ptr<DirectoryLock>> LockDirectory(const std::string& dir) = 0;
  // Names (not paths) of the entries of `dir`, excluding "." and "..", in no particular order.
  virtual absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) = 0;
  // The first min(size, max_bytes) bytes of the file.
  virtual absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) = 0;
  // Replaces `path` with `data` atomically and durably: a temporary file beside it, written,
  // fsync'ed, renamed over `path`, directory fsync'ed. On failure `path` is untouched and the
  // temporary file is removed. Temporary names are `path` + ".tmp." + a random suffix.
  virtual absl::Status WriteFileAtomically(const std::string& path, absl::string_view data) = 0;
  // NotFound when `path` does not exist.
  virtual absl::Status DeleteFile(const std::string& path) = 0;
};

enum class SessionTier : uint8_t { kEmpty = 0, kResident = 1, kHost = 2, kDisk = 3 };
// "empty", "resident", "host", "disk".
absl::string_view SessionTierName(SessionTier tier);

struct SessionStoreOptions {
  static constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

  // The served model. Import and disk files must match all of these, so a snapshot is only
  // ever restored into the model (and KV shape) that produced it. Required: fingerprint
  // non-empty, dimensions > 0, dtype "float32" or "bfloat16".
  std::string model_fingerprint;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  std::string dtype = "float32";

  // Resident tier: how much of the device pool idle sessions may hold. Soft limits, enforced
  // after Acquire and Commit by offloading least recently used idle sessions (busy ones
  // cannot move, so the tier can exceed them while turns run). The pool itself is the hard
  // limit: Restore's ResourceExhausted makes room the same way.
  int64_t resident_max_bytes = kUnlimited;
  int64_t resident_max_sessions = kUnlimited;

  // Host tier: snapshots in process memory. 0 bytes or 0 sessions turns the tier off
  // (offloads then go straight to disk).
  int64_t host_max_bytes = int64_t{1} << 30;  // 1 GiB
  int64_t host_max_sessions = 10'000;

  // Disk tier: empty `disk_dir` means no disk tier. Created if missing; indexed by Create so
  // that persisted sessions survive a restart. One store per directory (it is locked).
  std::string disk_dir;
  int64_t disk_max_bytes = int64_t{16} << 30;  // 16 GiB
  int64_t disk_max_sessions = 100'000;

  // Idle policies, measured from a session's last Acquire/Commit/Abandon; applied by
  // ExpireIdle. Infinite = never.
  absl::Duration idle_ttl = absl::InfiniteDuration();            // delete the session
  absl::Duration idle_offload_after = absl::InfiniteDuration();  // resident -> host

  // Every time the store reads; inject a fake for deterministic tests. Null = absl::Now.
  std::function<absl::Time()> clock;
  // Disk operations; null = SessionFileSystem::Posix(). Not owned; must outlive the store.
  SessionFileSystem* file_system = nullptr;
};

struct SessionInfo {
  std::string tenant;
  std::string session_id;
  SessionTier tier = SessionTier::kEmpty;
  bool busy = false;  // acquired by a turn that has not committed or abandoned yet
  KvAccounting accounting;
  int64_t bytes = 0;  // what it occupies in its tier
  int64_t turns = 0;  // committed turns (0 after Import)
  absl::Time created;
  absl::Time last_used;
};

struct TierUsage {
  int64_t sessions = 0;
  int64_t bytes = 0;
  int64_t max_sessions = 0;
  int64_t max_bytes = 0;
};

// For metrics. `disk` counts session files present, which includes (rarely) a stale file of a
// session that has moved up but whose file could not be removed yet.
struct SessionStoreStats {
  TierUsage resident;
  TierUsage host;
  TierUsage disk;
  int64_t empty_sessions = 0;
  int64_t busy_sessions = 0;
  // Over every stored session, by its last committed turn: K/V bytes kept, and what full
  // caches of the same histories would hold.
  int64_t kv_kept_bytes = 0;
  int64_t kv_full_equivalent_bytes = 0;
};

struct IdleSweepResult {
  int64_t expired = 0;    // deleted by the TTL
  int64_t offloaded = 0;  // resident -> host (or disk) for being idle
  absl::Status status;    // the first failure; the sweep goes on past failures
};

class SessionStore {
 public:
  // Validates `options`; with a disk tier, creates and locks the directory and indexes its
  // session files (reading only their headers). A file that cannot be attributed to a session
  // of this model (bad header, another model's fingerprint, a name that does not match its
  // contents) is skipped, left in place and reported by IndexProblems(); the others load.
  // Leftover temporary files of interrupted writes are removed.
  // Errors: InvalidArgument for bad options; the directory's own errors (cannot create, list,
  // lock: FailedPrecondition when another store holds it).
  // `resident` is not owned and must outlive the store.
  static absl::StatusOr<std::unique_ptr<SessionStore>> Create(SessionStoreOptions options,
                                                              ResidentSessions* resident);

  // Releases nothing: resident blocks stay with the paged cache, which is torn down with it.
  // Call PersistAll first to keep sessions across a restart.
  ~SessionStore();
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  // A new session with no state, tier kEmpty. AlreadyExists when (tenant, session_id) exists;
  // InvalidArgument for an empty id or a tenant or id over 1024 bytes.
  absl::Status CreateSession(absl::string_view tenant, absl::string_view session_id);

  // Starts a turn: brings the session's state into the pool (from host or disk, transparently,
  // offloading least recently used idle resident sessions if the pool is full) and pins it
  // until Commit or Abandon; a pinned session is never moved, evicted, expired or deleted.
  // Returns the resident handle of the session's state, or nullopt when the session has no
  // state yet (its first turn starts from an empty sequence).
  // The turn must not modify the state behind the returned handle in place (it attaches a new
  // sequence that shares or copies it), so that Abandon can return to it.
  // Errors: NotFound; FailedPrecondition "session busy" when already acquired; DataLoss when
  // its disk file is corrupt (only this session is affected; Delete removes it);
  // ResourceExhausted when the pool is full and nothing idle can leave it; errors of Restore.
  // On any error the session stays where it was.
  absl::StatusOr<std::optional<uint64_t>> Acquire(absl::string_view tenant,
                                                  absl::string_view session_id);

  // Ends a successful turn: the state behind `handle` (the turn's sequence, owned by the paged
  // cache's resident set) becomes the session's state, with `accounting`; the previous state's
  // handle, if different, is released. Unpins. Ownership of `handle` moves to the store only
  // on success; on error the caller still owns it.
  // Errors: NotFound; FailedPrecondition when the session is not acquired.
  absl::Status Commit(absl::string_view tenant, absl::string_view session_id, uint64_t handle,
                      const KvAccounting& accounting);

  // Ends a failed turn: unpins and keeps the state the session had at Acquire. The turn's own
  // sequence, if any, stays the caller's to free. Errors: NotFound; FailedPrecondition when
  // the session is not acquired.
  absl::Status Abandon(absl::string_view tenant, absl::string_view session_id);

  // Removes the session from every tier (releases its blocks, drops its snapshot, removes its
  // file). Errors: NotFound; FailedPrecondition "session busy"; the file system's error when
  // its file cannot be removed, in which case the session is kept unchanged.
  absl::Status Delete(absl::string_view tenant, absl::string_view session_id);

  // NotFound as above.
  absl::StatusOr<SessionInfo> Get(absl::string_view tenant, absl::string_view session_id) const;
  // The tenant's sessions, ordered by session id.
  std::vector<SessionInfo> List(absl::string_view tenant) const;

  // EncodeSnapshot bytes of the session's state, from whichever tier holds it; the session
  // does not move and its last-used time does not change.
  // Errors: NotFound; FailedPrecondition when busy or when it has no state yet; DataLoss for
  // a corrupt disk file; errors of ResidentSessions::Snapshot.
  absl::StatusOr<std::string> Export(absl::string_view tenant, absl::string_view session_id);

  // Creates session (tenant, session_id) from Export bytes, in the host tier (or disk when
  // host is full). Turns restart at 0; accounting comes from the snapshot.
  // Errors: InvalidArgument when the bytes do not decode (the DecodeSnapshot message);
  // FailedPrecondition when they belong to another model or KV shape; AlreadyExists;
  // ResourceExhausted when no tier has room.
  absl::Status Import(absl::string_view tenant, absl::string_view session_id,
                      absl::string_view bytes);

  // Pool pressure: moves least recently used idle resident sessions off the device until at
  // least `bytes_needed` resident bytes are freed or none is left to move. Returns the bytes
  // freed (possibly fewer than asked). Errors: the failure of a move (host and disk full:
  // ResourceExhausted), after which sessions moved so far stay moved.
  absl::StatusOr<int64_t> OffloadLeastRecentlyUsed(int64_t bytes_needed);

  // Applies the idle policies at the clock's now: idle >= idle_ttl deletes the session (any
  // tier); otherwise a resident session idle >= idle_offload_after moves to host (or disk).
  // Busy sessions are skipped.
  IdleSweepResult ExpireIdle();

  // Drain: writes every idle session (with or without state) to disk, so a new store over the
  // same directory finds them all. FailedPrecondition without a disk tier. On partial failure
  // the error names how many sessions were not persisted and why; they stay in their tiers.
  // Busy sessions are not persisted and count as failures (drain waits for turns first).
  absl::Status PersistAll();

  SessionStoreStats Stats() const;

  // Problems Create found in the disk directory (one per skipped file). Immutable after Create.
  const std::vector<absl::Status>& IndexProblems() const { return index_problems_; }

  // Test hooks.
  // Path of the file that holds or would hold the session (whether or not it exists).
  std::string TEST_FilePath(absl::string_view tenant, absl::string_view session_id) const;
  // Recomputes every usage counter and index from the sessions and compares; Internal on drift.
  absl::Status TEST_CheckInvariants() const;

 private:
  struct Session;
  using SessionKey = std::pair<std::string, std::string>;  // (tenant, session id)
  static constexpr int kNumTiers = 4;

  SessionStore(SessionStoreOptions options, ResidentSessions* resident, SessionFileSystem* fs);

  absl::Status IndexDiskDirectory();
  absl::Time Now() const;
  std::string FilePath(const Session& s) const;

  // Lookups. NotFound (same for a wrong tenant) / FailedPrecondition when busy.
  absl::StatusOr<Session*> Find(absl::string_view tenant, absl::string_view session_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Session*> FindIdle(absl::string_view tenant, absl::string_view session_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Bookkeeping of tiers, LRU order and files.
  void SetTier(Session* s, SessionTier tier, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetFile(Session* s, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearFile(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Session* LeastRecentlyUsedIdle(SessionTier tier, const Session* exclude) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SessionInfo InfoOf(const Session& s) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string TierState(SessionTier tier) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string DiskState() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Moves between tiers. Each leaves `s` where it was on error.
  absl::Status MakeHostRoom(int64_t bytes, const Session* exclude)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckDiskRoom(int64_t bytes, const Session* s) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteFile(Session* s, const SessionSnapshot* snapshot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PlaceOffDevice(Session* s, SessionSnapshot snapshot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OffloadResident(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PersistHost(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status PersistOne(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SessionSnapshot> ReadFromDisk(const Session& s, std::string* encoded) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint64_t> RestoreIntoPool(const SessionSnapshot& snapshot, const Session* s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnforceResidentLimits() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TryRemoveStaleFile(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DeleteLocked(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckModel(const SessionSnapshot& snapshot) const;

  const SessionStoreOptions options_;
  ResidentSessions* const resident_;
  SessionFileSystem* const fs_;
  // Set once by Create, then immutable.
  std::unique_ptr<SessionFileSystem::DirectoryLock> dir_lock_;
  std::vector<absl::Status> index_problems_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<SessionKey, std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  // Per tier, its sessions by last-use tick (oldest first); busy ones included.
  std::array<std::map<uint64_t, Session*>, kNumTiers> lru_ ABSL_GUARDED_BY(mu_);
  std::array<int64_t, kNumTiers> tier_bytes_ ABSL_GUARDED_BY(mu_) = {};
  // Session files present in disk_dir, by file name, and their total size.
  absl::flat_hash_map<std::string, Session*> files_ ABSL_GUARDED_BY(mu_);
  int64_t file_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_tick_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t busy_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_SESSION_STORE_H_
