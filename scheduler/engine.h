// The serving engine: one engine thread owns the model, the KV pool, the session store and all
// request state; other threads talk to it only through this thread-safe, torch-free API
// (llama.cpp server's loop thread, TensorRT-LLM's executor API: enqueue, stream, cancel, shut
// down). Each iteration: drain the inbox, expire deadlines, plan (scheduler/policy.h),
// run prefill chunks and decode steps, sample, handle stops, emit tokens, commit sessions.
#ifndef ANCHORSERVE_SCHEDULER_ENGINE_H_
#define ANCHORSERVE_SCHEDULER_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/session_snapshot.h"
#include "cache/session_store.h"
#include "model/anchor_sequence.h"
#include "model/anchors.h"
#include "model/llama.h"
#include "model/sampling.h"

namespace anchorserve::model {
class Tokenizer;
}

namespace anchorserve::scheduler {

enum class FinishReason { kNone, kStop, kLength, kCancelled, kTimedOut, kError };
absl::string_view FinishReasonName(FinishReason reason);  // "stop", "length", ...

// Token range [begin, end] (inclusive) of the request's prompt kept at full attention.
struct KeptFullSpan {
  int64_t begin = 0;
  int64_t end = 0;
};

struct GenerationRequest {
  std::string tenant;                 // sessions are scoped to it
  std::string session_id;             // empty: one-shot
  std::vector<int32_t> prompt_token_ids;  // this turn's new tokens (anchors already inserted)
  model::SamplingParams sampling;
  int32_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;    // besides the model's EOS
  std::vector<std::string> stop_strings;  // matched on text; never emitted
  absl::Time deadline = absl::InfiniteFuture();
  int32_t priority = 0;                   // higher runs first
  model::AttentionMode mode = model::AttentionMode::kAnchor;
  model::PositionPolicy position_policy = model::PositionPolicy::kAbsolute;
  std::vector<KeptFullSpan> kept_full_spans;
  bool include_anchor_tokens = false;     // show generated <AC> in the streamed text
  bool ignore_eos = false;                // keep generating past EOS (benchmarks)
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // history reused from the session (not prefilled again)
  cache::KvAccounting kv;         // the sequence after this turn
  cache::KvAccounting kv_before;  // the session's state when the turn started (zero one-shot)
  absl::Duration queue_time;      // submitted -> bound to a sequence
  model::PositionPolicy position_policy = model::PositionPolicy::kAbsolute;
};

// One message of a request's stream. The last one has `final` set.
struct StreamEvent {
  std::vector<int32_t> token_ids;
  std::string text;
  bool final = false;
  FinishReason finish_reason = FinishReason::kNone;
  absl::Status status;  // why a kError/kCancelled/kTimedOut stream ended
  Usage usage;          // on the final event
};

// Receives one request's events, in order, on the engine thread. Must not block: hand the
// event to a mailbox and return.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  virtual void OnEvent(StreamEvent event) = 0;
};

struct EngineOptions {
  std::string model_dir;
  model::LoadOptions load;
  int64_t kv_budget_bytes = int64_t{256} << 20;
  double kv_free_memory_fraction = 0.0;  // CUDA: use this share of free memory instead
  int64_t block_tokens = 16;
  int32_t max_waiting = 256;             // a full queue rejects at once
  int32_t max_running = 64;
  int64_t max_batched_tokens = 2048;     // per step
  int64_t max_prefill_chunk = 512;
  int64_t max_prompt_tokens = 8192;
  int32_t max_new_tokens = 4096;
  bool cuda_graphs = true;               // CUDA decode steps replay captured graphs
  cache::SessionStoreOptions sessions;   // model fields are filled in by the engine
};

struct EngineStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t rejected = 0;
  // Engine-thread time, cumulative: whole steps, and the part spent inside model forwards
  // (on CUDA including the one wait for the step's logits). step - model is the engine's own
  // CPU overhead: planning, sampling, stop handling, streaming.
  double step_seconds = 0;
  double model_seconds = 0;
  int64_t decode_tokens = 0;   // tokens decoded (one per running sequence per step)
  int64_t decode_batches = 0;  // batched decode forwards run; decode_tokens / this = mean batch
  // K/V held by running sequences plus stored sessions (committed state), and what full
  // caches of the same histories would hold. A session turn in flight counts twice, as both
  // copies are held: the committed state and the turn's own sequence.
  int64_t kv_kept_bytes = 0;
  int64_t kv_full_equivalent_bytes = 0;
  cache::SessionStoreStats sessions;
};

struct ModelInfo {
  model::ModelConfig config;
  model::AnchorSpec anchors;
  std::string fingerprint;
  std::string model_dir;
  model::Device device = model::Device::kCpu;
  model::Precision precision = model::Precision::kFloat32;
};

class Engine {
 public:
  // Loads the model, allocates the KV pool, opens the session store (restoring persisted
  // sessions) and starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(EngineOptions options);
  ~Engine();  // drains with no grace period

  // Queues `request`; `sink` receives its events until a final one. Errors, returned at once
  // without queueing: InvalidArgument/OutOfRange naming the field, NotFound for an unknown
  // session (or one of another tenant), ResourceExhausted when the queue is full,
  // Unavailable while draining. Thread-safe.
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, std::shared_ptr<StreamSink> sink);
  // Ends the request with kCancelled (the sink gets its final event); its KV returns to the
  // pool at the next step. Unknown or finished ids are ignored. Thread-safe.
  void Cancel(uint64_t request_id);

  // Session administration, executed on the engine thread; the caller waits for the result.
  absl::Status CreateSession(const std::string& tenant, const std::string& session_id);
  absl::StatusOr<cache::SessionInfo> GetSession(const std::string& tenant,
                                                const std::string& session_id);
  std::vector<cache::SessionInfo> ListSessions(const std::string& tenant);
  absl::Status DeleteSession(const std::string& tenant, const std::string& session_id);
  absl::StatusOr<std::string> ExportSession(const std::string& tenant,
                                            const std::string& session_id);
  absl::Status ImportSession(const std::string& tenant, const std::string& session_id,
                             const std::string& bytes);

  // Stops accepting work (Submit -> Unavailable), lets in-flight requests finish for up to
  // `grace`, ends the rest with kCancelled/Unavailable, persists sessions, stops the thread.
  absl::Status Drain(absl::Duration grace);

  const ModelInfo& model_info() const;
  const model::Tokenizer* tokenizer() const;  // null when the model has no tokenizer.model
  EngineStats Stats() const;
  // Requests queued or running, read without a round trip to the engine thread (routing).
  int64_t Load() const;

  // Fault injection: the next `n` model steps throw as if the device failed.
  void TEST_FailSteps(int n);

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace anchorserve::scheduler

#endif  // ANCHORSERVE_SCHEDULER_ENGINE_H_
