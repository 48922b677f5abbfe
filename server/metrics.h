// Prometheus metrics of the server: one registry with every `anchorserve_*` family, optionally
// served over HTTP at `/metrics` (docs/METRICS.md lists the families, their types, labels and
// bucket choices; the Grafana dashboard and the alert rules use those names).
//
// The API takes plain C++ values only, so neither prometheus-cpp nor protobuf leaks into the
// server's headers. Label values come from the fixed sets below (enums, or process-wide info
// strings); nothing request-specific (session id, tenant, request id, prompt text) can reach a
// label, by construction: no method accepts one.
//
// Thread-safety: every method may be called from any thread at any time (gRPC reactors, the
// engine's stats poller, the main thread); prometheus-cpp metrics are atomic, and the few
// read-modify-write updates here take their own lock. No method blocks on I/O.
#ifndef ANCHORSERVE_SERVER_METRICS_H_
#define ANCHORSERVE_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace anchorserve::server {

// The RPCs of `anchorserve.v1.AnchorServe`; the `rpc` label is the method name ("Generate").
// The standard health and reflection services are not counted.
enum class Rpc {
  kGenerate,
  kCreateSession,
  kGetSession,
  kListSessions,
  kDeleteSession,
  kExportSession,
  kImportSession,
  kGetModelInfo,
  kTokenize,
};
inline constexpr int kNumRpcs = 9;
absl::string_view RpcName(Rpc rpc);

// The gRPC status name of `code` ("OK", "INVALID_ARGUMENT", ...); "UNKNOWN" for values outside
// the 17 defined codes. absl::StatusCode and grpc::StatusCode share their numbering, so the
// server passes `static_cast<absl::StatusCode>(grpc_status.error_code())`.
absl::string_view StatusCodeName(absl::StatusCode code);

// Why a request ended before finishing: the client cancelled (or disconnected, or a write to
// it failed), its deadline passed, or the server's drain timeout ran out.
enum class CancellationReason { kClient, kDeadline, kDrain };
absl::string_view CancellationReasonName(CancellationReason reason);  // "client", ...

// The KV of one sequence or session, as the cache accounts it (cache::KvAccounting).
struct KvTokens {
  int64_t kept_tokens = 0;  // K/V entries kept
  int64_t full_tokens = 0;  // full-equivalent: every token the history contains
  int64_t anchors = 0;      // anchors among them
};

// One completed turn: a one-shot request, or a session turn that committed.
struct TurnStats {
  bool in_session = false;  // also observe the session's cumulative reduction
  // The session's KV when the turn started (all zero for one-shot requests and first turns)
  // and after the turn's last REDUCTION. The turn's own reduction is over the difference.
  KvTokens before;
  KvTokens after;
  int64_t bytes_per_token = 0;  // K+V bytes of one token over all layers
};

// Sessions and what they occupy in each tier of the session store (cache::SessionStoreStats).
struct SessionTierUsage {
  int64_t sessions = 0;
  int64_t bytes = 0;
};
struct SessionsByTier {
  SessionTierUsage resident;   // device KV blocks
  SessionTierUsage host;       // snapshots in host memory
  SessionTierUsage disk;       // session files
  int64_t empty_sessions = 0;  // created, no turn yet (no bytes)
};

// Cumulative counts the engine keeps (scheduler::EngineStats), published as counters.
struct EngineTotals {
  int64_t preemptions = 0;
  int64_t steps = 0;
};

// What the process holds, from /proc/self (Linux): published so that a soak or a dashboard sees
// memory or descriptor leaks without node-level tooling.
struct ProcessStats {
  int64_t resident_bytes = 0;  // RSS: resident pages of /proc/self/statm times the page size
  int64_t open_fds = 0;        // entries of /proc/self/fd
};
// Reads /proc/self/statm and /proc/self/fd. Unavailable (naming the file) where /proc is not
// mounted. Thread-safe; a few system calls, no allocation beyond the directory walk.
absl::StatusOr<ProcessStats> ReadProcessStats();

// `anchorserve_build_info` labels. Each value: 1 to 64 characters from [A-Za-z0-9._:+-].
struct BuildInfo {
  std::string version;  // "0.1.0"
  std::string device;   // "cpu", "cuda"
  std::string dtype;    // "float32", "bfloat16"
};

class Metrics {
 public:
  // Registers every family and serves the registry at http://<listen_address>/metrics.
  // `listen_address` is "host:port"; port 0 picks a free port (see port()).
  // Errors: InvalidArgument for an empty or malformed address (no port, port > 65535);
  // Unavailable when the address cannot be bound (in use, no such interface).
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const std::string& listen_address);
  // The same registry with no HTTP endpoint (tests; metrics disabled; Serialize() still works).
  static std::unique_ptr<Metrics> CreateRegistryOnly();

  // Stops the HTTP endpoint: waits for a scrape being answered (at most its socket timeouts,
  // 2 s to read and 5 s to write; usually none), so destroy it after the drain, off
  // latency-critical paths.
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The bound TCP port of the endpoint; 0 in registry-only mode.
  int port() const;

  // The registry in the Prometheus text exposition format (version 0.0.4): exactly what a
  // scrape of `/metrics` returns.
  std::string Serialize() const;

  // --- Requests (called at the RPC edge) ---
  // One finished RPC with its final status (for Generate, the status the stream ended with).
  // A code outside the 17 gRPC codes counts as UNKNOWN; an `rpc` outside the enum is ignored.
  void RecordRequest(Rpc rpc, absl::StatusCode code);
  // A Generate refused because the queue was full (it is also recorded as RESOURCE_EXHAUSTED).
  void RecordQueueRejection();
  // A request ended early; call once per request, with the first reason that applied.
  void RecordCancellation(CancellationReason reason);
  // Tokens prefilled for a request's prompt (the turn's new tokens, not session history), and
  // tokens generated (call as they stream, so that rate() is live). Negative values are ignored.
  void AddPromptTokens(int64_t tokens);
  void AddGenerationTokens(int64_t tokens);

  // --- Latencies of Generate, in seconds (negative or NaN values are ignored) ---
  void ObserveTimeToFirstToken(double seconds);   // arrival -> first token sent
  void ObserveInterTokenLatency(double seconds);  // between consecutive tokens of one stream
  void ObserveRequestDuration(double seconds);    // arrival -> final message (end to end)
  void ObserveQueueTime(double seconds);          // queued -> first scheduled

  // --- Anchor metrics ---
  // Observes the turn's reduction, anchors, and saved bytes, and, for a session turn, the
  // session's cumulative reduction. Call once per completed turn (finish reason stop or
  // length, and for a session only after its commit succeeded). A turn that added no tokens
  // is ignored.
  void ObserveTurn(const TurnStats& turn);
  // K/V bytes held now by live sequences and stored sessions, and what full caches of the same
  // histories would hold.
  void SetKvFootprint(int64_t kept_bytes, int64_t full_equivalent_bytes);

  // --- State, set by a periodic poller from the engine's stats ---
  void SetQueue(int64_t running, int64_t waiting);
  // KV pool blocks; usage ratio = used / total (0 when total is 0).
  void SetKvPool(int64_t used_blocks, int64_t total_blocks);
  void SetSessions(const SessionsByTier& sessions);
  // Raises the counters to the engine's totals. A total below the last one seen is taken as a
  // counter reset (a new engine) and counted from zero.
  void SyncEngineTotals(const EngineTotals& totals);

  // --- Process state ---
  // `anchorserve_up`: 1 while the server accepts requests (model loaded and warmed, health
  // SERVING), 0 before that and from the start of a drain. Starts at 0.
  void SetServing(bool serving);
  // `anchorserve_draining`: 1 from the start of a graceful drain. Starts at 0.
  void SetDraining(bool draining);
  // `anchorserve_process_resident_memory_bytes` and `anchorserve_process_open_fds` (0 until
  // the first call; the server's stats poller calls it once a second).
  void SetProcess(const ProcessStats& stats);
  // Replaces the one `anchorserve_build_info` series (initially version from the build,
  // device and dtype "unknown"). InvalidArgument naming the field for a value outside the
  // allowed characters; the old series then stays.
  absl::Status SetBuildInfo(const BuildInfo& info);
  // Replaces the one `anchorserve_model_info` series (initially anchor_type "unknown").
  // `anchor_type` is "ac", "ep", "custom" or "none"; anything else is InvalidArgument.
  absl::Status SetModelInfo(absl::string_view anchor_type);

  struct State;

 private:
  explicit Metrics(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace anchorserve::server

#endif  // ANCHORSERVE_SERVER_METRICS_H_
