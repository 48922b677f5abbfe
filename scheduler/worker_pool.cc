#include "scheduler/worker_pool.h"

#include <algorithm>
#include <limits>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "model/llama.h"

namespace anchorserve::scheduler {
namespace {

absl::Status Prefixed(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& value) {
  return value.status();
}

// Limits may be kUnlimited (int64 max): a sum must not overflow.
int64_t SaturatingAdd(int64_t a, int64_t b) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (b > 0 && a > kMax - b) return kMax;
  return a + b;
}

void AddTier(cache::TierUsage& sum, const cache::TierUsage& t) {
  sum.sessions += t.sessions;
  sum.bytes += t.bytes;
  sum.max_sessions = SaturatingAdd(sum.max_sessions, t.max_sessions);
  sum.max_bytes = SaturatingAdd(sum.max_bytes, t.max_bytes);
}

void AddStats(EngineStats& sum, const EngineStats& s) {
  sum.waiting += s.waiting;
  sum.running += s.running;
  sum.kv_blocks_total += s.kv_blocks_total;
  sum.kv_blocks_used += s.kv_blocks_used;
  sum.steps += s.steps;
  sum.preemptions += s.preemptions;
  sum.rejected += s.rejected;
  sum.step_seconds += s.step_seconds;
  sum.model_seconds += s.model_seconds;
  sum.decode_tokens += s.decode_tokens;
  sum.decode_batches += s.decode_batches;
  sum.kv_kept_bytes += s.kv_kept_bytes;
  sum.kv_full_equivalent_bytes += s.kv_full_equivalent_bytes;
  AddTier(sum.sessions.resident, s.sessions.resident);
  AddTier(sum.sessions.host, s.sessions.host);
  AddTier(sum.sessions.disk, s.sessions.disk);
  sum.sessions.empty_sessions += s.sessions.empty_sessions;
  sum.sessions.busy_sessions += s.sessions.busy_sessions;
  sum.sessions.kv_kept_bytes += s.sessions.kv_kept_bytes;
  sum.sessions.kv_full_equivalent_bytes += s.sessions.kv_full_equivalent_bytes;
}

int64_t SessionsIn(const cache::SessionStoreStats& s) {
  return s.resident.sessions + s.host.sessions + s.disk.sessions + s.empty_sessions;
}

// A process-wide tier limit split over `workers`; a non-zero limit stays non-zero (0 turns a
// tier off, which the split must not do).
int64_t Share(int64_t limit, int workers) {
  if (limit <= 0) return limit;
  return std::max<int64_t>(1, limit / workers);
}

std::string WorkerName(const EngineOptions& options, int worker) {
  return options.load.device == model::Device::kCuda ? absl::StrCat("cuda:", worker) : "cpu";
}

}  // namespace

absl::StatusOr<int> ResolveWorkerCount(model::Device device, int32_t requested, int visible_gpus) {
  if (requested < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "workers: must be 0 (one per visible GPU, or one on cpu) or positive, got ", requested));
  }
  if (device != model::Device::kCuda) return requested == 0 ? 1 : requested;
  if (visible_gpus <= 0) return 1;  // Engine::Create says why cuda is unusable
  if (requested == 0) return visible_gpus;
  if (requested > visible_gpus) {
    return absl::InvalidArgumentError(
        absl::StrCat("workers: ", requested, " cuda workers need as many GPUs, but ", visible_gpus,
                     " are visible (one worker per GPU; 0 = one per visible GPU)"));
  }
  return requested;
}

std::string WorkerSessionDir(const std::string& disk_dir, int worker) {
  if (disk_dir.empty() || worker == 0) return disk_dir;
  return absl::StrCat(disk_dir, "/worker-", worker);
}

WorkerPool::WorkerPool(std::vector<std::unique_ptr<Engine>> engines)
    : engines_(std::move(engines)), sessions_held_(engines_.size(), 0) {}

WorkerPool::~WorkerPool() { (void)Drain(absl::ZeroDuration()); }

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(WorkerPoolOptions options) {
  const model::Device device = options.engine.load.device;
  const int visible = device == model::Device::kCuda ? model::CudaDeviceCount() : 0;
  absl::StatusOr<int> count = ResolveWorkerCount(device, options.workers, visible);
  if (!count.ok()) return count.status();
  const int n = *count;

  std::vector<EngineOptions> per_worker(static_cast<size_t>(n), options.engine);
  for (int i = 0; i < n; ++i) {
    EngineOptions& e = per_worker[static_cast<size_t>(i)];
    e.load.device_index = device == model::Device::kCuda ? i : 0;
    e.sessions.disk_dir = WorkerSessionDir(options.engine.sessions.disk_dir, i);
    e.sessions.host_max_bytes = Share(options.engine.sessions.host_max_bytes, n);
    e.sessions.disk_max_bytes = Share(options.engine.sessions.disk_max_bytes, n);
  }
  std::vector<absl::StatusOr<std::unique_ptr<Engine>>> created;
  created.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) created.emplace_back(absl::UnknownError("not created"));
  auto create = [&](int i) {
    created[static_cast<size_t>(i)] = Engine::Create(per_worker[static_cast<size_t>(i)]);
  };
  if (device == model::Device::kCuda && n > 1) {
    // One GPU each: loading weights in parallel cuts start-up by the worker count. On cpu they
    // load one after another (same memory bandwidth, and libtorch's thread settings are global).
    std::vector<std::thread> loaders;
    loaders.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) loaders.emplace_back(create, i);
    for (std::thread& t : loaders) t.join();
  } else {
    for (int i = 0; i < n; ++i) {
      create(i);
      if (!created[static_cast<size_t>(i)].ok()) break;
    }
  }
  std::vector<std::unique_ptr<Engine>> engines;
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<std::unique_ptr<Engine>>& engine = created[static_cast<size_t>(i)];
    if (!engine.ok()) {
      // The engines created so far (and any created after, on cuda) drain as they go.
      if (n == 1) return engine.status();
      return Prefixed(engine.status(),
                      absl::StrCat("worker ", i, " (", WorkerName(options.engine, i), "): "));
    }
    engines.push_back(*std::move(engine));
  }
  auto pool = std::unique_ptr<WorkerPool>(new WorkerPool(std::move(engines)));
  for (int i = 0; i < n; ++i) {
    // Sessions restored from each worker's disk directory count towards its placement load;
    // which ones they are is learned on first use (Locate), as the stores list by tenant.
    const int64_t held = SessionsIn(pool->engines_[static_cast<size_t>(i)]->Stats().sessions);
    absl::MutexLock lock(&pool->mu_);
    pool->sessions_held_[static_cast<size_t>(i)] = held;
  }
  return pool;
}

// ---------------------------------------------------------------- routing

absl::StatusOr<int> WorkerPool::Locate(const std::string& tenant, const std::string& session_id) {
  if (engines_.size() == 1) return 0;  // the engine answers NotFound itself
  const SessionKey key(tenant, session_id);
  {
    absl::MutexLock lock(&mu_);
    auto it = session_worker_.find(key);
    if (it != session_worker_.end()) return it->second;
  }
  absl::Status missing;
  for (int i = 0; i < num_workers(); ++i) {
    absl::StatusOr<cache::SessionInfo> info =
        engines_[static_cast<size_t>(i)]->GetSession(tenant, session_id);
    if (info.ok()) {
      Pin(key, i);
      return i;
    }
    if (missing.ok() || !absl::IsNotFound(info.status())) missing = info.status();
  }
  return missing;
}

void WorkerPool::Pin(const SessionKey& key, int worker) {
  absl::MutexLock lock(&mu_);
  session_worker_.emplace(key, worker);  // a lower worker found first keeps a duplicate id
}

void WorkerPool::Forget(const SessionKey& key, int worker) {
  absl::MutexLock lock(&mu_);
  auto it = session_worker_.find(key);
  if (it != session_worker_.end() && it->second == worker) session_worker_.erase(it);
}

int WorkerPool::PickWorker(bool for_session) const {
  std::vector<int64_t> load(engines_.size());
  for (size_t i = 0; i < engines_.size(); ++i) load[i] = engines_[i]->Load();
  absl::MutexLock lock(&mu_);
  int best = 0;
  for (int i = 1; i < num_workers(); ++i) {
    const size_t a = static_cast<size_t>(i), b = static_cast<size_t>(best);
    const int64_t held_a = for_session ? sessions_held_[a] : 0;
    const int64_t held_b = for_session ? sessions_held_[b] : 0;
    if (std::tie(load[a], held_a) < std::tie(load[b], held_b)) best = i;
  }
  return best;
}

absl::StatusOr<int> WorkerPool::SessionWorker(const std::string& tenant,
                                              const std::string& session_id) {
  absl::StatusOr<int> worker = Locate(tenant, session_id);
  if (!worker.ok() || engines_.size() > 1) return worker;
  // One worker: Locate did not ask; NotFound must still come for an unknown session.
  absl::StatusOr<cache::SessionInfo> info = engines_[0]->GetSession(tenant, session_id);
  if (!info.ok()) return info.status();
  return 0;
}

// ---------------------------------------------------------------- requests

absl::StatusOr<uint64_t> WorkerPool::Submit(GenerationRequest request,
                                            std::shared_ptr<StreamSink> sink) {
  if (request.session_id.empty()) {
    const int worker = PickWorker(/*for_session=*/false);
    absl::StatusOr<uint64_t> id =
        engines_[static_cast<size_t>(worker)]->Submit(std::move(request), std::move(sink));
    if (!id.ok()) return id.status();
    return PoolId(*id, worker);
  }
  const SessionKey key(request.tenant, request.session_id);
  absl::StatusOr<int> worker = Locate(key.first, key.second);
  if (!worker.ok()) return worker.status();
  absl::StatusOr<uint64_t> id =
      engines_[static_cast<size_t>(*worker)]->Submit(std::move(request), std::move(sink));
  if (!id.ok()) {
    if (absl::IsNotFound(id.status())) Forget(key, *worker);  // expired or deleted meanwhile
    return id.status();
  }
  return PoolId(*id, *worker);
}

absl::StatusOr<uint64_t> WorkerPool::SubmitTo(int worker, GenerationRequest request,
                                              std::shared_ptr<StreamSink> sink) {
  if (worker < 0 || worker >= num_workers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker ", worker, " does not exist (", num_workers(), " workers)"));
  }
  if (!request.session_id.empty()) {
    return absl::InvalidArgumentError("SubmitTo takes one-shot requests; sessions are routed");
  }
  absl::StatusOr<uint64_t> id =
      engines_[static_cast<size_t>(worker)]->Submit(std::move(request), std::move(sink));
  if (!id.ok()) return id.status();
  return PoolId(*id, worker);
}

void WorkerPool::Cancel(uint64_t request_id) {
  engines_[static_cast<size_t>(WorkerOfRequest(request_id))]->Cancel(request_id / engines_.size());
}

int WorkerPool::WorkerOfRequest(uint64_t request_id) const {
  return static_cast<int>(request_id % engines_.size());
}

// ---------------------------------------------------------------- sessions

absl::Status WorkerPool::PlaceSession(const std::string& tenant, const std::string& session_id,
                                      const std::function<absl::Status(Engine&)>& place) {
  absl::MutexLock placing(&placement_mu_);
  int worker;
  if (absl::StatusOr<int> holder = Locate(tenant, session_id); holder.ok()) {
    worker = *holder;  // exists (or one worker): that engine answers, AlreadyExists included
  } else if (absl::IsNotFound(holder.status())) {
    worker = PickWorker(/*for_session=*/true);
  } else {
    return holder.status();
  }
  absl::Status placed = place(*engines_[static_cast<size_t>(worker)]);
  if (placed.ok()) {
    Pin(SessionKey(tenant, session_id), worker);
    absl::MutexLock lock(&mu_);
    ++sessions_held_[static_cast<size_t>(worker)];
  }
  return placed;
}

absl::Status WorkerPool::CreateSession(const std::string& tenant, const std::string& session_id) {
  return PlaceSession(tenant, session_id,
                      [&](Engine& engine) { return engine.CreateSession(tenant, session_id); });
}

absl::Status WorkerPool::ImportSession(const std::string& tenant, const std::string& session_id,
                                       const std::string& bytes) {
  return PlaceSession(tenant, session_id, [&](Engine& engine) {
    return engine.ImportSession(tenant, session_id, bytes);
  });
}

absl::StatusOr<cache::SessionInfo> WorkerPool::GetSession(const std::string& tenant,
                                                          const std::string& session_id) {
  absl::StatusOr<int> worker = Locate(tenant, session_id);
  if (!worker.ok()) return worker.status();
  absl::StatusOr<cache::SessionInfo> info =
      engines_[static_cast<size_t>(*worker)]->GetSession(tenant, session_id);
  if (absl::IsNotFound(StatusOf(info))) Forget(SessionKey(tenant, session_id), *worker);
  return info;
}

std::vector<cache::SessionInfo> WorkerPool::ListSessions(const std::string& tenant) {
  if (engines_.size() == 1) return engines_[0]->ListSessions(tenant);
  std::vector<cache::SessionInfo> all;
  for (int i = 0; i < num_workers(); ++i) {
    std::vector<cache::SessionInfo> some = engines_[static_cast<size_t>(i)]->ListSessions(tenant);
    for (cache::SessionInfo& info : some) {
      Pin(SessionKey(tenant, info.session_id), i);
      all.push_back(std::move(info));
    }
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const cache::SessionInfo& a, const cache::SessionInfo& b) {
                     return a.session_id < b.session_id;
                   });
  return all;
}

absl::Status WorkerPool::DeleteSession(const std::string& tenant, const std::string& session_id) {
  absl::StatusOr<int> worker = Locate(tenant, session_id);
  if (!worker.ok()) return worker.status();
  absl::Status deleted = engines_[static_cast<size_t>(*worker)]->DeleteSession(tenant, session_id);
  if (deleted.ok() || absl::IsNotFound(deleted)) Forget(SessionKey(tenant, session_id), *worker);
  if (deleted.ok()) {
    absl::MutexLock lock(&mu_);
    int64_t& held = sessions_held_[static_cast<size_t>(*worker)];
    held = std::max<int64_t>(0, held - 1);
  }
  return deleted;
}

absl::StatusOr<std::string> WorkerPool::ExportSession(const std::string& tenant,
                                                      const std::string& session_id) {
  absl::StatusOr<int> worker = Locate(tenant, session_id);
  if (!worker.ok()) return worker.status();
  absl::StatusOr<std::string> bytes =
      engines_[static_cast<size_t>(*worker)]->ExportSession(tenant, session_id);
  if (absl::IsNotFound(StatusOf(bytes))) Forget(SessionKey(tenant, session_id), *worker);
  return bytes;
}

// ---------------------------------------------------------------- lifecycle and stats

absl::Status WorkerPool::Drain(absl::Duration grace) {
  std::vector<absl::Status> results(engines_.size());
  if (engines_.size() == 1) {
    results[0] = engines_[0]->Drain(grace);
  } else {
    std::vector<std::thread> drains;
    drains.reserve(engines_.size());
    for (size_t i = 0; i < engines_.size(); ++i) {
      drains.emplace_back([this, &results, i, grace] { results[i] = engines_[i]->Drain(grace); });
    }
    for (std::thread& t : drains) t.join();
  }
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].ok()) continue;
    return engines_.size() == 1 ? results[i]
                                : Prefixed(results[i], absl::StrCat("worker ", i, ": "));
  }
  return absl::OkStatus();
}

EngineStats WorkerPool::Stats() const {
  if (engines_.size() == 1) return engines_[0]->Stats();
  EngineStats sum;
  for (const std::unique_ptr<Engine>& engine : engines_) AddStats(sum, engine->Stats());
  return sum;
}

EngineStats WorkerPool::WorkerStats(int worker) const {
  return engines_[static_cast<size_t>(worker)]->Stats();
}

int64_t WorkerPool::WorkerLoad(int worker) const {
  return engines_[static_cast<size_t>(worker)]->Load();
}

}  // namespace anchorserve::scheduler
