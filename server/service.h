// The AnchorServe gRPC service (anchorserve.v1.AnchorServe) on the callback API: reactors never
// block; work that waits on the engine thread (submission, session administration) runs on a
// small executor; each Generate stream has one outstanding write at a time; client cancel,
// deadline, disconnect and failed writes all cancel the engine request, which frees its KV.
#ifndef ANCHORSERVE_SERVER_SERVICE_H_
#define ANCHORSERVE_SERVER_SERVICE_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "anchorserve/v1/anchorserve.grpc.pb.h"
#include "scheduler/worker_pool.h"

namespace anchorserve::server {

class Metrics;
enum class Rpc;

struct ServiceOptions {
  bool auth_enabled = false;
  std::map<std::string, std::string> tokens;  // bearer token -> tenant
  anchorserve::v1::AttentionMode default_mode = anchorserve::v1::ATTENTION_MODE_ANCHOR;
  anchorserve::v1::PositionPolicy default_policy = anchorserve::v1::POSITION_POLICY_ABSOLUTE;
  anchorserve::v1::AnchorInsertion default_insertion = anchorserve::v1::ANCHOR_INSERTION_SENTENCES;
  int32_t max_sessions_per_tenant = 10000;
  bool log_prompts = false;
  int executor_threads = 4;
};

// Runs closures on a few threads, so that gRPC reactions never wait for the engine.
class Executor {
 public:
  explicit Executor(int threads);
  ~Executor();  // runs what is queued, then joins
  void Post(std::function<void()> fn);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

class AnchorServeService final : public anchorserve::v1::AnchorServe::CallbackService {
 public:
  // `workers` and `metrics` (may be null) must outlive the service. Requests and session
  // calls go through the pool, which routes each to the worker holding the session.
  AnchorServeService(scheduler::WorkerPool* workers, Metrics* metrics, ServiceOptions options);
  ~AnchorServeService() override;

  // New calls get UNAVAILABLE from now on (the workers also refuse new requests).
  void StartDrain() { draining_ = true; }
  int64_t active_streams() const { return active_streams_.load(); }

  grpc::ServerWriteReactor<anchorserve::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context,
      const anchorserve::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const anchorserve::v1::CreateSessionRequest* request,
                                          anchorserve::v1::CreateSessionResponse* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const anchorserve::v1::GetSessionRequest* request,
                                       anchorserve::v1::GetSessionResponse* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const anchorserve::v1::ListSessionsRequest* request,
                                         anchorserve::v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const anchorserve::v1::DeleteSessionRequest* request,
                                          anchorserve::v1::DeleteSessionResponse* response) override;
  grpc::ServerUnaryReactor* ExportSession(grpc::CallbackServerContext* context,
                                          const anchorserve::v1::ExportSessionRequest* request,
                                          anchorserve::v1::ExportSessionResponse* response) override;
  grpc::ServerUnaryReactor* ImportSession(grpc::CallbackServerContext* context,
                                          const anchorserve::v1::ImportSessionRequest* request,
                                          anchorserve::v1::ImportSessionResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const anchorserve::v1::GetModelInfoRequest* request,
                                         anchorserve::v1::GetModelInfoResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const anchorserve::v1::TokenizeRequest* request,
                                     anchorserve::v1::TokenizeResponse* response) override;

  // The tenant of a call, or UNAUTHENTICATED. Public for the tests of auth.
  absl::StatusOr<std::string> Authenticate(const grpc::CallbackServerContext& context) const;
  // Text or messages to prompt tokens, with anchors inserted per `insertion`.
  absl::StatusOr<std::vector<int32_t>> PromptTokens(const anchorserve::v1::GenerateRequest& request,
                                                    bool add_bos) const;

 private:
  class GenerateReactor;
  // Runs `work` on the executor and finishes the unary call with its status.
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, Rpc rpc,
                                  std::function<absl::Status(const std::string& tenant)> work);
  void Record(Rpc rpc, const grpc::Status& status);

  scheduler::WorkerPool* workers_;
  Metrics* metrics_;
  ServiceOptions options_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> active_streams_{0};
  std::atomic<uint64_t> session_counter_{0};
  Executor executor_;
};

// absl::Status -> grpc::Status with the same code and message.
grpc::Status ToGrpc(const absl::Status& status);

}  // namespace anchorserve::server

#endif  // ANCHORSERVE_SERVER_SERVICE_H_
