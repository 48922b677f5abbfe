#include "cache/session_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/durable_coding.h"
#include "cache/session_file.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"

namespace anchorserve::cache {

// ---------------------------------------------------------------------------------------------
// POSIX file system.
namespace {

using ::anchorserve::ScopedFd;

absl::Status Errno(absl::string_view what, absl::string_view path) {
  const int error = errno;
  return absl::ErrnoToStatus(error, absl::StrCat("cannot ", what, " ", path));
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("write", path);
    if (n == 0) return absl::DataLossError(absl::StrCat("write to ", path, " made no progress"));
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

class PosixDirectoryLock : public SessionFileSystem::DirectoryLock {
 public:
  explicit PosixDirectoryLock(int fd) : fd_(fd) {}
  ~PosixDirectoryLock() override { ::close(fd_); }  // closing drops the flock

 private:
  int fd_;
};

class PosixSessionFileSystem : public SessionFileSystem {
 public:
  absl::Status CreateDirectories(const std::string& dir) override {
    if (dir.empty()) return absl::InvalidArgumentError("empty directory name");
    for (size_t pos = dir.find('/', 1);; pos = dir.find('/', pos + 1)) {
      const std::string prefix = dir.substr(0, pos);
      if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) return Errno("create", prefix);
      if (pos == std::string::npos) break;
    }
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0) return Errno("stat", dir);
    if (!S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not a directory"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<DirectoryLock>> LockDirectory(const std::string& dir) override {
    const std::string path = dir + "/LOCK";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return Errno("open", path);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int error = errno;
      ::close(fd);
      if (error == EWOULDBLOCK) {
        return absl::FailedPreconditionError(absl::StrCat(
            "session directory ", dir, " is in use by another session store (", path, " held)"));
      }
      return absl::ErrnoToStatus(error, absl::StrCat("cannot lock ", path));
    }
    return std::unique_ptr<DirectoryLock>(new PosixDirectoryLock(fd));
  }

  absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return Errno("list", dir);
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* e = ::readdir(d)) {
      const absl::string_view name = e->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    const int error = errno;
    ::closedir(d);
    if (error != 0) return absl::ErrnoToStatus(error, absl::StrCat("cannot list ", dir));
    return names;
  }

  absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) override {
    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return Errno("open", path);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Errno("stat", path);
    std::string data(std::min(max_bytes, static_cast<size_t>(st.st_size)), '\0');
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Errno("read", path);
      if (n == 0) break;  // shrank under us: the caller's checks see a short file
      done += static_cast<size_t>(n);
    }
    data.resize(done);
    return data;
  }

  absl::Status WriteFileAtomically(const std::string& path, absl::string_view data) override {
    std::string temp = path + ".tmp.XXXXXX";
    ScopedFd fd(::mkostemp(temp.data(), O_CLOEXEC));  // 0600: session state is user data
    if (fd.get() < 0) return Errno("create a temporary file for", path);
    absl::Status status = WriteAll(fd.get(), data, temp);
    if (status.ok() && ::fsync(fd.get()) != 0) status = Errno("sync", temp);
    if (fd.Close() != 0 && status.ok()) status = Errno("close", temp);
    if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
      status = Errno(absl::StrCat("rename ", temp, " to"), path);
    }
    if (!status.ok()) {
      ::unlink(temp.c_str());
      return status;
    }
    // Make the rename durable. Best effort: the file is complete either way.
    const size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
    ScopedFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir_fd.get() >= 0) (void)::fsync(dir_fd.get());
    return absl::OkStatus();
  }

  absl::Status DeleteFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Errno("delete", path);
    return absl::OkStatus();
  }
};

}  // namespace

SessionFileSystem* SessionFileSystem::Posix() {
  static SessionFileSystem* const fs = new PosixSessionFileSystem();
  return fs;
}

absl::string_view SessionTierName(SessionTier tier) {
  switch (tier) {
    case SessionTier::kEmpty:
      return "empty";
    case SessionTier::kResident:
      return "resident";
    case SessionTier::kHost:
      return "host";
    case SessionTier::kDisk:
      return "disk";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// Session files.
namespace {

// One file per session: "<16 hex digits>.session", the hex being SessionFileHash(tenant, id),
// so neither the id nor the tenant appears in a file name; contents in cache/session_file.h.
// Create reads only the header, so a restart costs one small read per session; the snapshot
// is read and verified when the session is restored or exported.
constexpr absl::string_view kSessionFileSuffix = ".session";
constexpr size_t kFileHashHexDigits = 16;

uint64_t SessionFileHash(absl::string_view tenant, absl::string_view session_id) {
  // FNV-1a over a length-delimited encoding (so ("ab","c") and ("a","bc") differ), then the
  // splitmix64 finalizer for diffusion. Stable across builds and platforms: it names files.
  std::string input = "anchorserve-session-v1";
  LittleEndianWriter w(&input);
  w.String(tenant);
  w.String(session_id);
  uint64_t h = 14695981039346656037ull;
  for (const char c : input) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

std::string SessionFileName(absl::string_view tenant, absl::string_view session_id) {
  return absl::StrCat(absl::StrFormat("%016x", SessionFileHash(tenant, session_id)),
                      kSessionFileSuffix);
}

bool IsHex(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool IsSessionFileName(absl::string_view name) {
  return name.size() == kFileHashHexDigits + kSessionFileSuffix.size() &&
         absl::EndsWith(name, kSessionFileSuffix) && IsHex(name.substr(0, kFileHashHexDigits));
}

// A temporary file of an interrupted WriteFileAtomically of one of our files.
bool IsLeftoverTempName(absl::string_view name) {
  const size_t at = name.find(".tmp.");
  return at != absl::string_view::npos && IsSessionFileName(name.substr(0, at));
}

absl::Status ValidateId(absl::string_view tenant, absl::string_view session_id) {
  if (session_id.empty()) return absl::InvalidArgumentError("empty session id");
  if (session_id.size() > kMaxSessionIdBytes || tenant.size() > kMaxSessionIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("session id and tenant are limited to ", kMaxSessionIdBytes, " bytes"));
  }
  return absl::OkStatus();
}

// Approximate host memory of a snapshot held in the host tier.
int64_t HostBytes(const SessionSnapshot& s) {
  return static_cast<int64_t>(sizeof(SessionSnapshot) + s.model_fingerprint.size() +
                              s.dtype.size() + s.mode.size() + s.position_policy.size() +
                              s.entries.size() * sizeof(SnapshotEntry) + s.kv.size());
}

absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

std::string Limit(int64_t v) {
  return v == SessionStoreOptions::kUnlimited ? "unlimited" : absl::StrCat(v);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SessionStore.

struct SessionStore::Session {
  std::string tenant;
  std::string session_id;
  std::string file_name;  // SessionFileName(tenant, session_id)
  SessionTier tier = SessionTier::kEmpty;
  int64_t bytes = 0;  // in its tier; kDisk: the file's size
  uint64_t tick = 0;  // LRU position: larger = used more recently
  bool busy = false;
  uint64_t handle = 0;                  // kResident
  std::optional<SessionSnapshot> host;  // kHost
  // The file in disk_dir. Present for every kDisk session; for a session in another tier only
  // when its file could not be removed as it moved up (a stale copy, removed at the next
  // Acquire/Commit/move, overwritten by the next write).
  bool has_file = false;
  int64_t file_bytes = 0;
  bool file_has_state = false;
  KvAccounting accounting;
  int64_t turns = 0;
  absl::Time created;
  absl::Time last_used;

  // How errors and messages that are not addressed to this session's own caller name it.
  std::string Label() const { return absl::StrCat("session ", file_name.substr(0, 16)); }
};

SessionStore::SessionStore(SessionStoreOptions options, ResidentSessions* resident,
                           SessionFileSystem* fs)
    : options_(std::move(options)), resident_(resident), fs_(fs) {}

SessionStore::~SessionStore() = default;

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Create(SessionStoreOptions options,
                                                                   ResidentSessions* resident) {
  if (resident == nullptr) return absl::InvalidArgumentError("SessionStore needs a resident tier");
  if (options.model_fingerprint.empty() ||
      options.model_fingerprint.size() > kMaxFingerprintBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model_fingerprint must be non-empty and at most ", kMaxFingerprintBytes, " bytes"));
  }
  if (options.num_layers <= 0 || options.num_kv_heads <= 0 || options.head_dim <= 0) {
    return absl::InvalidArgumentError("num_layers, num_kv_heads and head_dim must be positive");
  }
  if (options.dtype != "float32" && options.dtype != "bfloat16") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype must be float32 or bfloat16, not \"", options.dtype, "\""));
  }
  for (const int64_t limit :
       {options.resident_max_bytes, options.resident_max_sessions, options.host_max_bytes,
        options.host_max_sessions, options.disk_max_bytes, options.disk_max_sessions}) {
    if (limit < 0) return absl::InvalidArgumentError("tier limits must not be negative");
  }
  if (options.idle_ttl < absl::ZeroDuration() ||
      options.idle_offload_after < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("idle durations must not be negative");
  }
  while (options.disk_dir.size() > 1 && options.disk_dir.back() == '/') options.disk_dir.pop_back();
  if (!options.clock) options.clock = [] { return absl::Now(); };
  SessionFileSystem* fs =
      options.file_system != nullptr ? options.file_system : SessionFileSystem::Posix();
  std::unique_ptr<SessionStore> store(new SessionStore(std::move(options), resident, fs));
  if (!store->options_.disk_dir.empty()) RETURN_IF_ERROR(store->IndexDiskDirectory());
  return store;
}

absl::Status SessionStore::IndexDiskDirectory() {
  const std::string& dir = options_.disk_dir;
  RETURN_IF_ERROR(fs_->CreateDirectories(dir));
  ASSIGN_OR_RETURN(dir_lock_, fs_->LockDirectory(dir));
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs_->ListDirectory(dir));
  std::sort(names.begin(), names.end());

  std::vector<std::unique_ptr<Session>> loaded;
  for (const std::string& name : names) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (IsLeftoverTempName(name)) {
      (void)fs_->DeleteFile(path);  // an interrupted write; the real file (if any) is intact
      continue;
    }
    if (!IsSessionFileName(name)) continue;  // not ours
    absl::StatusOr<std::string> prefix = fs_->ReadFile(path, kMaxSessionFileHeaderBytes);
    if (!prefix.ok()) {
      index_problems_.push_back(WithPrefix(prefix.status(), "skipped: "));
      continue;
    }
    absl::StatusOr<SessionFileHeader> header = DecodeSessionFileHeader(*prefix, path);
    if (!header.ok()) {
      index_problems_.push_back(WithPrefix(header.status(), "skipped: "));
      continue;
    }
    if (header->model_fingerprint != options_.model_fingerprint) {
      index_problems_.push_back(absl::FailedPreconditionError(absl::StrCat(
          "skipped: ", path, " holds a session of model \"", header->model_fingerprint,
          "\", this store serves \"", options_.model_fingerprint, "\"; left in place")));
      continue;
    }
    if (SessionFileName(header->tenant, header->session_id) != name) {
      index_problems_.push_back(absl::DataLossError(
          absl::StrCat("skipped: ", path, ": the file name does not match the session it holds")));
      continue;
    }
    auto s = std::make_unique<Session>();
    s->tenant = std::move(header->tenant);
    s->session_id = std::move(header->session_id);
    s->file_name = name;
    s->tier = SessionTier::kDisk;
    s->file_has_state = header->has_state;
    s->bytes = static_cast<int64_t>(header->header_bytes + header->snapshot_bytes);
    s->accounting = header->accounting;
    s->turns = header->turns;
    s->created = absl::FromUnixMicros(header->created_us);
    s->last_used = absl::FromUnixMicros(header->last_used_us);
    loaded.push_back(std::move(s));
  }

  // LRU order survives the restart: ticks follow the persisted last-used times.
  std::stable_sort(loaded.begin(), loaded.end(),
                   [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
  absl::MutexLock lock(&mu_);
  for (std::unique_ptr<Session>& s : loaded) {
    Session* p = s.get();
    p->tick = ++next_tick_;
    lru_[static_cast<int>(SessionTier::kDisk)][p->tick] = p;
    tier_bytes_[static_cast<int>(SessionTier::kDisk)] += p->bytes;
    SetFile(p, p->bytes);
    sessions_[SessionKey(p->tenant, p->session_id)] = std::move(s);
  }
  return absl::OkStatus();
}

absl::Time SessionStore::Now() const { return options_.clock(); }

std::string SessionStore::FilePath(const Session& s) const {
  return absl::StrCat(options_.disk_dir, "/", s.file_name);
}

std::string SessionStore::TEST_FilePath(absl::string_view tenant,
                                        absl::string_view session_id) const {
  return absl::StrCat(options_.disk_dir, "/", SessionFileName(tenant, session_id));
}

// --- lookups and bookkeeping -----------------------------------------------------------------

absl::StatusOr<SessionStore::Session*> SessionStore::Find(absl::string_view tenant,
                                                          absl::string_view session_id) const {
  auto it = sessions_.find(SessionKey(tenant, session_id));
  // The same answer for a wrong tenant as for a missing id: nothing tells a tenant that
  // another tenant has a session of that name.
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session \"", session_id, "\" not found"));
  }
  return it->second.get();
}

absl::StatusOr<SessionStore::Session*> SessionStore::FindIdle(absl::string_view tenant,
                                                              absl::string_view session_id) const {
  ASSIGN_OR_RETURN(Session * s, Find(tenant, session_id));
  if (s->busy) {
    return absl::FailedPreconditionError(
        absl::StrCat("session busy: \"", session_id, "\" has a turn in progress"));
  }
  return s;
}

void SessionStore::SetTier(Session* s, SessionTier tier, int64_t bytes) {
  lru_[static_cast<int>(s->tier)].erase(s->tick);
  tier_bytes_[static_cast<int>(s->tier)] -= s->bytes;
  s->tier = tier;
  s->bytes = bytes;
  lru_[static_cast<int>(tier)][s->tick] = s;
  tier_bytes_[static_cast<int>(tier)] += bytes;
}

void SessionStore::Touch(Session* s) {
  auto& lru = lru_[static_cast<int>(s->tier)];
  lru.erase(s->tick);
  s->tick = ++next_tick_;
  lru[s->tick] = s;
  s->last_used = Now();
}

void SessionStore::SetFile(Session* s, int64_t bytes) {
  if (s->has_file) {
    file_bytes_ -= s->file_bytes;
  } else {
    files_[s->file_name] = s;
  }
  s->has_file = true;
  s->file_bytes = bytes;
  file_bytes_ += bytes;
}

void SessionStore::ClearFile(Session* s) {
  if (!s->has_file) return;
  files_.erase(s->file_name);
  file_bytes_ -= s->file_bytes;
  s->has_file = false;
  s->file_bytes = 0;
  s->file_has_state = false;
}

SessionStore::Session* SessionStore::LeastRecentlyUsedIdle(SessionTier tier,
                                                           const Session* exclude) const {
  for (const auto& [tick, s] : lru_[static_cast<int>(tier)]) {
    if (!s->busy && s != exclude) return s;
  }
  return nullptr;
}

SessionInfo SessionStore::InfoOf(const Session& s) const {
  SessionInfo info;
  info.tenant = s.tenant;
  info.session_id = s.session_id;
  info.tier = s.tier;
  info.busy = s.busy;
  info.accounting = s.accounting;
  info.bytes = s.bytes;
  info.turns = s.turns;
  info.created = s.created;
  info.last_used = s.last_used;
  return info;
}

std::string SessionStore::TierState(SessionTier tier) const {
  const bool host = tier == SessionTier::kHost;
  return absl::StrCat(tier_bytes_[static_cast<int>(tier)], " of ",
                      Limit(host ? options_.host_max_bytes : options_.resident_max_bytes),
                      " bytes, ", lru_[static_cast<int>(tier)].size(), " of ",
                      Limit(host ? options_.host_max_sessions : options_.resident_max_sessions),
                      " sessions");
}

std::string SessionStore::DiskState() const {
  return absl::StrCat(file_bytes_, " of ", Limit(options_.disk_max_bytes), " bytes, ",
                      files_.size(), " of ", Limit(options_.disk_max_sessions), " sessions");
}

// --- moves between tiers ---------------------------------------------------------------------

absl::Status SessionStore::MakeHostRoom(int64_t bytes, const Session* exclude) {
  const int64_t max_bytes = options_.host_max_bytes;
  const int64_t max_sessions = options_.host_max_sessions;
  if (bytes > max_bytes || max_sessions < 1) {
    return absl::ResourceExhaustedError(absl::StrCat("host tier cannot hold ", bytes, " bytes (",
                                                     TierState(SessionTier::kHost), ")"));
  }
  auto& host = lru_[static_cast<int>(SessionTier::kHost)];
  while (tier_bytes_[static_cast<int>(SessionTier::kHost)] > max_bytes - bytes ||
         static_cast<int64_t>(host.size()) >= max_sessions) {
    Session* victim = LeastRecentlyUsedIdle(SessionTier::kHost, exclude);
    const std::string full = absl::StrCat("host tier full (", TierState(SessionTier::kHost), ")");
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(full, " and none of it can move"));
    }
    if (options_.disk_dir.empty()) {
      return absl::ResourceExhaustedError(absl::StrCat(full, " and no disk tier configured"));
    }
    const absl::Status moved = PersistHost(victim);
    if (!moved.ok()) {
      return WithPrefix(moved, absl::StrCat(full,
                                            " and its least recently used session cannot move "
                                            "to disk: "));
    }
  }
  return absl::OkStatus();
}

absl::Status SessionStore::CheckDiskRoom(int64_t bytes, const Session* s) const {
  // A rewrite replaces the session's own file.
  const int64_t own_bytes = s->has_file ? s->file_bytes : 0;
  const int64_t own_files = s->has_file ? 1 : 0;
  if (bytes > options_.disk_max_bytes - (file_bytes_ - own_bytes) ||
      static_cast<int64_t>(files_.size()) - own_files >= options_.disk_max_sessions) {
    return absl::ResourceExhaustedError(
        absl::StrCat("disk tier full (", DiskState(), "; needs ", bytes, " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status SessionStore::WriteFile(Session* s, const SessionSnapshot* snapshot) {
  if (options_.disk_dir.empty()) {
    return absl::FailedPreconditionError("no disk tier configured (disk_dir is empty)");
  }
  SessionFileHeader header;
  header.tenant = s->tenant;
  header.session_id = s->session_id;
  header.model_fingerprint = options_.model_fingerprint;
  header.created_us = absl::ToUnixMicros(s->created);
  header.last_used_us = absl::ToUnixMicros(s->last_used);
  header.turns = s->turns;
  header.accounting = s->accounting;
  header.has_state = snapshot != nullptr;
  const std::string file =
      EncodeSessionFile(header, snapshot != nullptr ? EncodeSnapshot(*snapshot) : std::string());
  RETURN_IF_ERROR(CheckDiskRoom(static_cast<int64_t>(file.size()), s));
  auto owner = files_.find(s->file_name);
  if (owner != files_.end() && owner->second != s) {
    // Two (tenant, id) pairs with one 64-bit hash: astronomically rare, but never overwrite.
    return absl::InternalError(
        absl::StrCat("cannot persist ", s->Label(), ": its file name is taken by another session"));
  }
  const absl::Status written = fs_->WriteFileAtomically(FilePath(*s), file);
  if (!written.ok()) {
    return WithPrefix(written, absl::StrCat("cannot write ", s->Label(), " to disk: "));
  }
  SetFile(s, static_cast<int64_t>(file.size()));
  s->file_has_state = snapshot != nullptr;
  return absl::OkStatus();
}

absl::Status SessionStore::PlaceOffDevice(Session* s, SessionSnapshot snapshot) {
  const int64_t bytes = HostBytes(snapshot);
  absl::Status host = MakeHostRoom(bytes, s);
  if (host.ok()) {
    s->host = std::move(snapshot);
    SetTier(s, SessionTier::kHost, bytes);
    TryRemoveStaleFile(s);
    return absl::OkStatus();
  }
  if (options_.disk_dir.empty()) return host;
  const absl::Status disk = WriteFile(s, &snapshot);
  if (disk.ok()) {
    SetTier(s, SessionTier::kDisk, s->file_bytes);
    return absl::OkStatus();
  }
  if (absl::IsResourceExhausted(host) && absl::IsResourceExhausted(disk)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no tier below the device has room for ", bytes, " bytes: host tier ",
                     bytes > options_.host_max_bytes ? "too small" : "full", " (",
                     TierState(SessionTier::kHost), "), disk tier full (", DiskState(), ")"));
  }
  // A real failure (I/O, say) on one side: both messages, so the caller learns what failed.
  const absl::StatusCode code = absl::IsResourceExhausted(disk) ? host.code() : disk.code();
  return absl::Status(code, absl::StrCat(host.message(), "; ", disk.message()));
}

absl::Status SessionStore::OffloadResident(Session* s) {
  absl::StatusOr<SessionSnapshot> snapshot = resident_->Snapshot(s->handle);
  if (!snapshot.ok()) {
    return WithPrefix(snapshot.status(),
                      absl::StrCat("cannot copy ", s->Label(), " out of the device pool: "));
  }
  const uint64_t handle = s->handle;
  RETURN_IF_ERROR(PlaceOffDevice(s, *std::move(snapshot)));
  resident_->Release(handle);
  s->handle = 0;
  return absl::OkStatus();
}

absl::Status SessionStore::PersistHost(Session* s) {
  RETURN_IF_ERROR(WriteFile(s, &*s->host));
  s->host.reset();
  SetTier(s, SessionTier::kDisk, s->file_bytes);
  return absl::OkStatus();
}

absl::Status SessionStore::PersistOne(Session* s) {
  switch (s->tier) {
    case SessionTier::kEmpty:
      RETURN_IF_ERROR(WriteFile(s, nullptr));
      SetTier(s, SessionTier::kDisk, s->file_bytes);
      return absl::OkStatus();
    case SessionTier::kResident: {
      absl::StatusOr<SessionSnapshot> snapshot = resident_->Snapshot(s->handle);
      if (!snapshot.ok()) {
        return WithPrefix(snapshot.status(),
                          absl::StrCat("cannot copy ", s->Label(), " out of the device pool: "));
      }
      RETURN_IF_ERROR(WriteFile(s, &*snapshot));
      resident_->Release(s->handle);
      s->handle = 0;
      SetTier(s, SessionTier::kDisk, s->file_bytes);
      return absl::OkStatus();
    }
    case SessionTier::kHost:
      return PersistHost(s);
    case SessionTier::kDisk:
      return absl::OkStatus();
  }
  return absl::InternalError("unknown tier");
}

absl::StatusOr<SessionSnapshot> SessionStore::ReadFromDisk(const Session& s,
                                                           std::string* encoded) const {
  const std::string path = FilePath(s);
  const std::string prefix = absl::StrCat("session \"", s.session_id, "\": ");
  // One byte more than expected, so a file that grew is caught as well as one that shrank.
  absl::StatusOr<std::string> file = fs_->ReadFile(path, static_cast<size_t>(s.bytes) + 1);
  if (!file.ok()) {
    // A vanished file is lost state, not an unknown session.
    if (absl::IsNotFound(file.status())) {
      return absl::DataLossError(absl::StrCat(prefix, "its file ", path, " is missing"));
    }
    return WithPrefix(file.status(), prefix);
  }
  absl::StatusOr<SessionFileHeader> header = DecodeSessionFileHeader(*file, path);
  if (!header.ok()) return WithPrefix(header.status(), prefix);
  if (header->tenant != s.tenant || header->session_id != s.session_id ||
      header->model_fingerprint != options_.model_fingerprint || !header->has_state) {
    return absl::DataLossError(
        absl::StrCat(prefix, path, " now holds different contents than when it was indexed"));
  }
  if (file->size() != header->header_bytes + header->snapshot_bytes) {
    return absl::DataLossError(
        absl::StrCat(prefix, path, " has ", file->size(), " bytes, its header says ",
                     header->header_bytes + header->snapshot_bytes, " (truncated or appended to)"));
  }
  const absl::string_view bytes = absl::string_view(*file).substr(header->header_bytes);
  absl::StatusOr<SessionSnapshot> snapshot = DecodeSnapshot(bytes, path);
  if (!snapshot.ok()) return WithPrefix(snapshot.status(), prefix);
  const absl::Status model = CheckModel(*snapshot);
  if (!model.ok()) return absl::DataLossError(absl::StrCat(prefix, path, ": ", model.message()));
  if (encoded != nullptr) encoded->assign(bytes.data(), bytes.size());
  return snapshot;
}

absl::StatusOr<uint64_t> SessionStore::RestoreIntoPool(const SessionSnapshot& snapshot,
                                                       const Session* s) {
  for (;;) {
    absl::StatusOr<uint64_t> handle = resident_->Restore(snapshot);
    if (handle.ok()) return handle;
    const std::string prefix = absl::StrCat("session \"", s->session_id, "\": ");
    if (!absl::IsResourceExhausted(handle.status())) return WithPrefix(handle.status(), prefix);
    // Pool pressure: the least recently used idle resident session makes room, then retry.
    Session* victim = LeastRecentlyUsedIdle(SessionTier::kResident, s);
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(prefix, "the device KV pool is full (",
                                                       handle.status().message(),
                                                       ") and every resident session is busy"));
    }
    const absl::Status moved = OffloadResident(victim);
    if (!moved.ok()) {
      return WithPrefix(moved, absl::StrCat(prefix,
                                            "the device KV pool is full and its least "
                                            "recently used session cannot leave it: "));
    }
  }
}

void SessionStore::EnforceResidentLimits() {
  // Soft limits: a failure leaves the tier over its limit until the next attempt; the pool's
  // own ResourceExhausted stays the hard limit.
  while (tier_bytes_[static_cast<int>(SessionTier::kResident)] > options_.resident_max_bytes ||
         static_cast<int64_t>(lru_[static_cast<int>(SessionTier::kResident)].size()) >
             options_.resident_max_sessions) {
    Session* victim = LeastRecentlyUsedIdle(SessionTier::kResident, nullptr);
    if (victim == nullptr || !OffloadResident(victim).ok()) return;
  }
}

void SessionStore::TryRemoveStaleFile(Session* s) {
  if (!s->has_file || s->tier == SessionTier::kDisk) return;
  const absl::Status deleted = fs_->DeleteFile(FilePath(*s));
  // On failure the file stays counted and a later move retries; Delete insists.
  if (deleted.ok() || absl::IsNotFound(deleted)) ClearFile(s);
}

absl::Status SessionStore::DeleteLocked(Session* s) {
  if (s->has_file) {
    const absl::Status deleted = fs_->DeleteFile(FilePath(*s));
    if (!deleted.ok() && !absl::IsNotFound(deleted)) {
      return WithPrefix(deleted, absl::StrCat("session \"", s->session_id,
                                              "\" kept: its file cannot be removed: "));
    }
    ClearFile(s);
  }
  if (s->tier == SessionTier::kResident) resident_->Release(s->handle);
  lru_[static_cast<int>(s->tier)].erase(s->tick);
  tier_bytes_[static_cast<int>(s->tier)] -= s->bytes;
  sessions_.erase(SessionKey(s->tenant, s->session_id));  // destroys *s
  return absl::OkStatus();
}

absl::Status SessionStore::CheckModel(const SessionSnapshot& snapshot) const {
  if (snapshot.model_fingerprint != options_.model_fingerprint) {
    return absl::FailedPreconditionError(
        absl::StrCat("the state belongs to model \"", snapshot.model_fingerprint,
                     "\", this server serves \"", options_.model_fingerprint, "\""));
  }
  if (snapshot.num_layers != options_.num_layers ||
      snapshot.num_kv_heads != options_.num_kv_heads || snapshot.head_dim != options_.head_dim ||
      snapshot.dtype != options_.dtype) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the state's KV shape (", snapshot.num_layers, " layers, ", snapshot.num_kv_heads,
        " kv heads, head_dim ", snapshot.head_dim, ", ", snapshot.dtype,
        ") differs from the served model's (", options_.num_layers, ", ", options_.num_kv_heads,
        ", ", options_.head_dim, ", ", options_.dtype, ")"));
  }
  return absl::OkStatus();
}

// --- public API ------------------------------------------------------------------------------

absl::Status SessionStore::CreateSession(absl::string_view tenant, absl::string_view session_id) {
  RETURN_IF_ERROR(ValidateId(tenant, session_id));
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = sessions_.try_emplace(SessionKey(tenant, session_id));
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("session \"", session_id, "\" already exists"));
  }
  it->second = std::make_unique<Session>();
  Session* s = it->second.get();
  s->tenant = std::string(tenant);
  s->session_id = std::string(session_id);
  s->file_name = SessionFileName(tenant, session_id);
  s->created = Now();
  s->tick = ++next_tick_;
  lru_[static_cast<int>(SessionTier::kEmpty)][s->tick] = s;
  Touch(s);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<uint64_t>> SessionStore::Acquire(absl::string_view tenant,
                                                              absl::string_view session_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Session * s, FindIdle(tenant, session_id));
  // Pinned from here on, so that making room in the pool never picks this session (its host
  // snapshot is what Restore reads).
  s->busy = true;
  ++busy_;
  absl::Cleanup unpin_on_error = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    s->busy = false;
    --busy_;
  };
  switch (s->tier) {
    case SessionTier::kEmpty:
    case SessionTier::kResident:
      break;
    case SessionTier::kHost: {
      ASSIGN_OR_RETURN(const uint64_t handle, RestoreIntoPool(*s->host, s));
      s->host.reset();
      s->handle = handle;
      SetTier(s, SessionTier::kResident, resident_->ResidentBytes(handle));
      break;
    }
    case SessionTier::kDisk: {
      if (!s->file_has_state) {
        SetTier(s, SessionTier::kEmpty, 0);
      } else {
        ASSIGN_OR_RETURN(const SessionSnapshot snapshot, ReadFromDisk(*s, nullptr));
        ASSIGN_OR_RETURN(const uint64_t handle, RestoreIntoPool(snapshot, s));
        s->handle = handle;
        SetTier(s, SessionTier::kResident, resident_->ResidentBytes(handle));
      }
      TryRemoveStaleFile(s);
      break;
    }
  }
  std::move(unpin_on_error).Cancel();
  Touch(s);
  EnforceResidentLimits();
  if (s->tier == SessionTier::kResident) return std::optional<uint64_t>(s->handle);
  return std::optional<uint64_t>();
}

absl::Status SessionStore::Commit(absl::string_view tenant, absl::string_view session_id,
                                  uint64_t handle, const KvAccounting& accounting) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Session * s, Find(tenant, session_id));
  if (!s->busy) {
    return absl::FailedPreconditionError(
        absl::StrCat("session \"", session_id, "\" is not acquired: Commit follows Acquire"));
  }
  if (s->tier == SessionTier::kResident && s->handle != handle) resident_->Release(s->handle);
  s->handle = handle;
  s->accounting = accounting;
  ++s->turns;
  SetTier(s, SessionTier::kResident, resident_->ResidentBytes(handle));
  s->busy = false;
  --busy_;
  Touch(s);
  TryRemoveStaleFile(s);
  EnforceResidentLimits();
  return absl::OkStatus();
}

absl::Status SessionStore::Abandon(absl::string_view tenant, absl::string_view session_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Session * s, Find(tenant, session_id));
  if (!s->busy) {
    return absl::FailedPreconditionError(
        absl::StrCat("session \"", session_id, "\" is not acquired: Abandon follows Acquire"));
  }
  s->busy = false;
  --busy_;
  Touch(s);
  EnforceResidentLimits();
  return absl::OkStatus();
}

absl::Status SessionStore::Delete(absl::string_view tenant, absl::string_view session_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Session * s, FindIdle(tenant, session_id));
  return DeleteLocked(s);
}

absl::StatusOr<SessionInfo> SessionStore::Get(absl::string_view tenant,
                                              absl::string_view session_id) const {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const Session* s, Find(tenant, session_id));
  return InfoOf(*s);
}

std::vector<SessionInfo> SessionStore::List(absl::string_view tenant) const {
  absl::MutexLock lock(&mu_);
  std::vector<SessionInfo> out;
  for (const auto& [key, s] : sessions_) {
    if (key.first == tenant) out.push_back(InfoOf(*s));
  }
  std::sort(out.begin(), out.end(),
            [](const SessionInfo& a, const SessionInfo& b) { return a.session_id < b.session_id; });
  return out;
}

absl::StatusOr<std::string> SessionStore::Export(absl::string_view tenant,
                                                 absl::string_view session_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Session * s, FindIdle(tenant, session_id));
  switch (s->tier) {
    case SessionTier::kResident: {
      ASSIGN_OR_RETURN(const SessionSnapshot snapshot, resident_->Snapshot(s->handle));
      return EncodeSnapshot(snapshot);
    }
    case SessionTier::kHost:
      return EncodeSnapshot(*s->host);
    case SessionTier::kDisk:
      if (s->file_has_state) {
        std::string encoded;
        RETURN_IF_ERROR(ReadFromDisk(*s, &encoded).status());
        return encoded;
      }
      break;
    case SessionTier::kEmpty:
      break;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("session \"", session_id, "\" has no state yet (no turn committed)"));
}

absl::Status SessionStore::Import(absl::string_view tenant, absl::string_view session_id,
                                  absl::string_view bytes) {
  RETURN_IF_ERROR(ValidateId(tenant, session_id));
  absl::StatusOr<SessionSnapshot> snapshot = DecodeSnapshot(bytes, "imported session state");
  // Bytes from a client: malformed input is its argument error, whatever damaged it.
  if (!snapshot.ok()) return absl::InvalidArgumentError(snapshot.status().message());
  RETURN_IF_ERROR(CheckModel(*snapshot));

  absl::MutexLock lock(&mu_);
  auto [it, inserted] = sessions_.try_emplace(SessionKey(tenant, session_id));
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("session \"", session_id, "\" already exists"));
  }
  it->second = std::make_unique<Session>();
  Session* s = it->second.get();
  s->tenant = std::string(tenant);
  s->session_id = std::string(session_id);
  s->file_name = SessionFileName(tenant, session_id);
  s->created = Now();
  s->accounting = snapshot->accounting;
  s->tick = ++next_tick_;
  lru_[static_cast<int>(SessionTier::kEmpty)][s->tick] = s;
  Touch(s);
  const absl::Status placed = PlaceOffDevice(s, *std::move(snapshot));
  if (!placed.ok()) {
    lru_[static_cast<int>(s->tier)].erase(s->tick);
    tier_bytes_[static_cast<int>(s->tier)] -= s->bytes;
    ClearFile(s);  // no file was written for it (a failed write leaves none)
    sessions_.erase(it);
    return WithPrefix(placed, absl::StrCat("cannot import session \"", session_id, "\": "));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SessionStore::OffloadLeastRecentlyUsed(int64_t bytes_needed) {
  absl::MutexLock lock(&mu_);
  int64_t freed = 0;
  while (freed < bytes_needed) {
    Session* victim = LeastRecentlyUsedIdle(SessionTier::kResident, nullptr);
    if (victim == nullptr) break;
    const int64_t bytes = victim->bytes;
    RETURN_IF_ERROR(OffloadResident(victim));
    freed += bytes;
  }
  return freed;
}

IdleSweepResult SessionStore::ExpireIdle() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = Now();
  // Oldest first, so idle offloads fill the host tier in LRU order.
  std::vector<Session*> order;
  order.reserve(sessions_.size());
  for (const auto& [key, s] : sessions_) order.push_back(s.get());
  std::sort(order.begin(), order.end(),
            [](const Session* a, const Session* b) { return a->tick < b->tick; });
  IdleSweepResult result;
  auto note = [&result](const absl::Status& status) {
    if (result.status.ok()) result.status = status;
  };
  for (Session* s : order) {
    if (s->busy) continue;
    const absl::Duration idle = now - s->last_used;
    if (idle >= options_.idle_ttl) {
      const absl::Status deleted = DeleteLocked(s);  // destroys *s on success
      if (deleted.ok()) {
        ++result.expired;
      } else {
        note(deleted);
      }
    } else if (s->tier == SessionTier::kResident && idle >= options_.idle_offload_after) {
      const absl::Status moved = OffloadResident(s);
      if (moved.ok()) {
        ++result.offloaded;
      } else {
        note(moved);
      }
    }
  }
  return result;
}

absl::Status SessionStore::PersistAll() {
  if (options_.disk_dir.empty()) {
    return absl::FailedPreconditionError("PersistAll needs a disk tier (disk_dir is empty)");
  }
  absl::MutexLock lock(&mu_);
  std::vector<Session*> order;
  order.reserve(sessions_.size());
  for (const auto& [key, s] : sessions_) order.push_back(s.get());
  std::sort(order.begin(), order.end(),
            [](const Session* a, const Session* b) { return a->tick < b->tick; });
  int64_t busy = 0;
  int64_t failed = 0;
  absl::Status first_failure;
  for (Session* s : order) {
    if (s->busy) {
      ++busy;
      continue;
    }
    const absl::Status persisted = PersistOne(s);
    if (!persisted.ok()) {
      if (failed++ == 0) first_failure = persisted;
    }
  }
  if (busy == 0 && failed == 0) return absl::OkStatus();
  const int64_t total = static_cast<int64_t>(order.size());
  std::string message =
      absl::StrCat("persisted ", total - busy - failed, " of ", total, " sessions; ", busy,
                   " busy (turn in progress), ", failed, " failed");
  if (failed > 0) absl::StrAppend(&message, "; first failure: ", first_failure.message());
  return absl::Status(failed > 0 ? first_failure.code() : absl::StatusCode::kFailedPrecondition,
                      message);
}

SessionStoreStats SessionStore::Stats() const {
  absl::MutexLock lock(&mu_);
  SessionStoreStats stats;
  auto tier = [&](SessionTier t, int64_t max_bytes, int64_t max_sessions)
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                    TierUsage u;
                    u.sessions = static_cast<int64_t>(lru_[static_cast<int>(t)].size());
                    u.bytes = tier_bytes_[static_cast<int>(t)];
                    u.max_bytes = max_bytes;
                    u.max_sessions = max_sessions;
                    return u;
                  };
  stats.resident =
      tier(SessionTier::kResident, options_.resident_max_bytes, options_.resident_max_sessions);
  stats.host = tier(SessionTier::kHost, options_.host_max_bytes, options_.host_max_sessions);
  stats.disk.sessions = static_cast<int64_t>(files_.size());
  stats.disk.bytes = file_bytes_;
  stats.disk.max_bytes = options_.disk_dir.empty() ? 0 : options_.disk_max_bytes;
  stats.disk.max_sessions = options_.disk_dir.empty() ? 0 : options_.disk_max_sessions;
  stats.empty_sessions = static_cast<int64_t>(lru_[static_cast<int>(SessionTier::kEmpty)].size());
  stats.busy_sessions = busy_;
  for (const auto& [key, session] : sessions_) {
    stats.kv_kept_bytes += session->accounting.kept_bytes();
    stats.kv_full_equivalent_bytes += session->accounting.full_bytes();
  }
  return stats;
}

absl::Status SessionStore::TEST_CheckInvariants() const {
  absl::MutexLock lock(&mu_);
  std::array<int64_t, kNumTiers> bytes = {};
  std::array<size_t, kNumTiers> count = {};
  int64_t files = 0;
  int64_t file_bytes = 0;
  int64_t busy = 0;
  for (const auto& [key, s] : sessions_) {
    const int t = static_cast<int>(s->tier);
    const std::string who = s->Label();
    if (key != SessionKey(s->tenant, s->session_id)) return absl::InternalError(who + ": key");
    auto in_lru = lru_[t].find(s->tick);
    if (in_lru == lru_[t].end() || in_lru->second != s.get()) {
      return absl::InternalError(who + ": missing from its tier's LRU");
    }
    bytes[t] += s->bytes;
    ++count[t];
    if (s->busy) ++busy;
    if (s->host.has_value() != (s->tier == SessionTier::kHost)) {
      return absl::InternalError(who + ": host snapshot present iff in the host tier");
    }
    if (s->tier == SessionTier::kDisk && (!s->has_file || s->bytes != s->file_bytes)) {
      return absl::InternalError(who + ": disk tier without its file");
    }
    if (s->busy && s->tier != SessionTier::kResident && s->tier != SessionTier::kEmpty) {
      return absl::InternalError(who + ": busy outside the pool");
    }
    if (s->has_file) {
      ++files;
      file_bytes += s->file_bytes;
      auto f = files_.find(s->file_name);
      if (f == files_.end() || f->second != s.get()) return absl::InternalError(who + ": file");
    }
  }
  for (int t = 0; t < kNumTiers; ++t) {
    if (bytes[t] != tier_bytes_[t] || count[t] != lru_[t].size()) {
      return absl::InternalError(absl::StrCat("tier ", t, " usage drifted"));
    }
  }
  if (files != static_cast<int64_t>(files_.size()) || file_bytes != file_bytes_) {
    return absl::InternalError("file usage drifted");
  }
  if (busy != busy_) return absl::InternalError("busy count drifted");
  return absl::OkStatus();
}

}  // namespace anchorserve::cache
