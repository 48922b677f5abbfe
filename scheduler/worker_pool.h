// The engines of one process: one worker (a scheduler::Engine with its own thread, model, KV
// pool and session store) per visible GPU, or one CPU worker, behind the same thread-safe,
// torch-free operations as a single Engine, so the server holds one of these and never picks
// a worker itself.
//
// Routing (docs/DECISIONS.md, "Workers and routing"):
//   - A session lives on exactly one worker, the one that created or imported it (or restored
//     it from its disk directory); every turn and admin call naming it goes there, so its KV
//     never crosses devices. The pool remembers (tenant, session id) -> worker; a session it
//     has not seen yet is looked up on each worker once, which is how sessions restored from
//     disk at start are found.
//   - New sessions (CreateSession, ImportSession) and one-shot requests go to the least loaded
//     worker: fewest requests waiting + running (Engine::Load), then, for sessions, fewest
//     sessions held, then the lowest index.
//   - Request ids are the pool's: id = engine id * num_workers + worker, so Cancel finds the
//     worker without a table (with one worker the ids are the engine's own).
//   - With a disk tier, worker 0 keeps its session files in sessions.disk_dir itself and
//     worker i >= 1 in <disk_dir>/worker-<i>, so two workers never write the same file and a
//     single-worker directory stays valid when GPUs are added. The host and disk tier limits
//     are the process's: each worker gets 1/N of them. The KV budget is per worker.
#ifndef ANCHORSERVE_SCHEDULER_WORKER_POOL_H_
#define ANCHORSERVE_SCHEDULER_WORKER_POOL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "scheduler/engine.h"

namespace anchorserve::scheduler {

struct WorkerPoolOptions {
  // Every worker's engine options. The pool sets load.device_index (worker i on cuda:i),
  // sessions.disk_dir (see above) and splits sessions.host_max_bytes / disk_max_bytes.
  EngineOptions engine;
  // 0 = automatic: one per visible CUDA device when engine.load.device is cuda, one on cpu.
  // On cuda at most one per visible device.
  int32_t workers = 0;
};

// The number of workers for `requested` (0 = automatic) on `device` with `visible_gpus`
// visible CUDA devices. InvalidArgument naming `workers` for a negative count or more cuda
// workers than devices. With cuda and no visible device it answers 1, so that the engine's
// own error ("no GPU is visible") is the one reported.
absl::StatusOr<int> ResolveWorkerCount(model::Device device, int32_t requested, int visible_gpus);

// Worker `worker`'s session directory under `disk_dir` ("" stays ""): disk_dir itself for
// worker 0, <disk_dir>/worker-<i> otherwise.
std::string WorkerSessionDir(const std::string& disk_dir, int worker);

class WorkerPool {
 public:
  // Resolves the worker count (CudaDeviceCount() on cuda) and creates every engine (loading
  // the model once per worker; on cuda the workers load in parallel). Errors: those of
  // ResolveWorkerCount; the first engine that fails, prefixed "worker <i> (<device>): " when
  // there are several (the ones already created are shut down).
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Create(WorkerPoolOptions options);
  ~WorkerPool();  // drains every worker with no grace period

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int num_workers() const { return static_cast<int>(engines_.size()); }

  // Engine::Submit on the session's worker, or for a one-shot request on the least loaded
  // one. Returns a pool request id for Cancel. Errors: Engine::Submit's; NotFound for a
  // session no worker holds. Thread-safe.
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, std::shared_ptr<StreamSink> sink);
  // A one-shot request on worker `worker` (start-up warm-up of every worker, tests).
  // InvalidArgument for a session request or a worker out of range. Thread-safe.
  absl::StatusOr<uint64_t> SubmitTo(int worker, GenerationRequest request,
                                    std::shared_ptr<StreamSink> sink);
  // Engine::Cancel on the worker that got the request. Unknown ids are ignored. Thread-safe.
  void Cancel(uint64_t request_id);
  // The worker a pool request id went to.
  int WorkerOfRequest(uint64_t request_id) const;

  // Session administration with Engine's contracts, routed as described above. Create and
  // Import are serialized among themselves, so one (tenant, id) never exists on two workers;
  // they answer AlreadyExists when any worker holds it. Thread-safe; each waits on the
  // engine thread(s) it asks.
  absl::Status CreateSession(const std::string& tenant, const std::string& session_id);
  absl::StatusOr<cache::SessionInfo> GetSession(const std::string& tenant,
                                                const std::string& session_id);
  // Every worker's sessions of the tenant, ordered by session id.
  std::vector<cache::SessionInfo> ListSessions(const std::string& tenant);
  absl::Status DeleteSession(const std::string& tenant, const std::string& session_id);
  absl::StatusOr<std::string> ExportSession(const std::string& tenant,
                                            const std::string& session_id);
  absl::Status ImportSession(const std::string& tenant, const std::string& session_id,
                             const std::string& bytes);
  // The worker holding the session; NotFound as GetSession.
  absl::StatusOr<int> SessionWorker(const std::string& tenant, const std::string& session_id);

  // Engine::Drain on every worker at once (one grace period for all). Returns the first
  // failure, prefixed "worker <i>: " when there are several; the others still drain.
  absl::Status Drain(absl::Duration grace);

  // Same model on every worker: worker 0's.
  const ModelInfo& model_info() const { return engines_.front()->model_info(); }
  const model::Tokenizer* tokenizer() const { return engines_.front()->tokenizer(); }
  // Sums over the workers (counts, bytes, limits and times add up).
  EngineStats Stats() const;
  EngineStats WorkerStats(int worker) const;  // precondition: 0 <= worker < num_workers()
  int64_t WorkerLoad(int worker) const;       // Engine::Load of one worker

  // The engine behind worker `worker`, for tests (fault injection). Not for routing.
  Engine& TEST_Worker(int worker) { return *engines_[static_cast<size_t>(worker)]; }

 private:
  using SessionKey = std::pair<std::string, std::string>;  // (tenant, session id)

  explicit WorkerPool(std::vector<std::unique_ptr<Engine>> engines);

  // The session's worker: the remembered one, else the first worker whose store has it
  // (remembered from then on). NotFound (the engine's message) when none has it.
  absl::StatusOr<int> Locate(const std::string& tenant, const std::string& session_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Pin(const SessionKey& key, int worker) ABSL_LOCKS_EXCLUDED(mu_);
  void Forget(const SessionKey& key, int worker) ABSL_LOCKS_EXCLUDED(mu_);
  // Least loaded worker: for a new session (ties by sessions held) or a one-shot request.
  int PickWorker(bool for_session) const ABSL_LOCKS_EXCLUDED(mu_);
  // Create/Import on the least loaded worker unless some worker has the session already.
  absl::Status PlaceSession(const std::string& tenant, const std::string& session_id,
                            const std::function<absl::Status(Engine&)>& place)
      ABSL_LOCKS_EXCLUDED(placement_mu_, mu_);
  uint64_t PoolId(uint64_t engine_id, int worker) const {
    return engine_id * engines_.size() + static_cast<uint64_t>(worker);
  }

  const std::vector<std::unique_ptr<Engine>> engines_;  // immutable after Create; never empty

  // Held across a placement's engine calls so that two creates of one key cannot land on
  // two workers. Taken before mu_.
  absl::Mutex placement_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // Never held across an engine call.
  mutable absl::Mutex mu_;
  std::map<SessionKey, int> session_worker_ ABSL_GUARDED_BY(mu_);
  // Sessions each worker holds: its store's count at start, then +1 per create or import and
  // -1 per delete through the pool (idle-TTL expiry is not seen; it only breaks load ties).
  std::vector<int64_t> sessions_held_ ABSL_GUARDED_BY(mu_);
};

}  // namespace anchorserve::scheduler

#endif  // ANCHORSERVE_SCHEDULER_WORKER_POOL_H_
