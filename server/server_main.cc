#include "server/server_main.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>

#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/config.h"
#include "server/log.h"
#include "server/metrics.h"

namespace anchorserve::server {
namespace {

constexpr char kServiceName[] = "anchorserve.v1.AnchorServe";

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const RunOptions& o) {
  if (o.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl;
  auto cert = ReadFile(o.tls_cert_file);
  auto key = ReadFile(o.tls_key_file);
  if (!cert.ok()) return cert.status();
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!o.tls_client_ca_file.empty()) {
    auto ca = ReadFile(o.tls_client_ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// Runs one one-token generation on every worker, so the first user request does not pay for
// lazy set-up wherever it lands.
absl::Status WarmUp(scheduler::WorkerPool& workers) {
  struct Waiter : scheduler::StreamSink {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    absl::Status status;
    void OnEvent(scheduler::StreamEvent event) override {
      if (!event.final) return;
      std::lock_guard<std::mutex> lock(mu);
      done = true;
      status = event.status;
      cv.notify_all();
    }
  };
  std::vector<std::shared_ptr<Waiter>> waiters;
  for (int worker = 0; worker < workers.num_workers(); ++worker) {
    auto waiter = std::make_shared<Waiter>();
    scheduler::GenerationRequest request;
    request.tenant = "warm-up";
    const int32_t bos = workers.model_info().config.bos_token_id;
    request.prompt_token_ids = {bos >= 0 ? bos : 0};
    request.max_tokens = 1;
    request.sampling.temperature = 0;
    auto id = workers.SubmitTo(worker, request, waiter);
    if (!id.ok()) return id.status();
    waiters.push_back(std::move(waiter));
  }
  for (size_t worker = 0; worker < waiters.size(); ++worker) {
    Waiter& waiter = *waiters[worker];
    std::unique_lock<std::mutex> lock(waiter.mu);
    waiter.cv.wait(lock, [&] { return waiter.done; });
    if (!waiter.status.ok()) {
      if (waiters.size() == 1) return waiter.status;
      return absl::Status(waiter.status.code(),
                          absl::StrCat("worker ", worker, ": ", waiter.status.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunServer(const RunOptions& options) {
  // Signals go to the sigwait below only: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (!options.effective_config.empty()) {
    std::fprintf(stderr, "anchorserve: effective configuration:\n%s\n",
                 options.effective_config.c_str());
  }
  std::unique_ptr<Metrics> metrics;
  if (!options.metrics_listen.empty()) {
    auto created = Metrics::Create(options.metrics_listen);
    if (!created.ok()) {
      LogEvent("start_failed", "-", "", absl::StrCat("error=\"metrics: ", created.status().ToString(), "\""));
      return 1;
    }
    metrics = *std::move(created);
    metrics->SetServing(false);
    if (auto process = ReadProcessStats(); process.ok()) metrics->SetProcess(*process);
  }
  scheduler::WorkerPoolOptions pool_options;
  pool_options.engine = options.engine;
  pool_options.workers = options.workers;
  auto workers = scheduler::WorkerPool::Create(std::move(pool_options));
  if (!workers.ok()) {
    LogEvent("start_failed", "-", "", absl::StrCat("error=\"", workers.status().ToString(), "\""));
    return 1;
  }
  if (metrics != nullptr) {
    (void)metrics->SetBuildInfo({ANCHORSERVE_VERSION,
                                 std::string(model::DeviceName(options.engine.load.device)),
                                 std::string(model::PrecisionName(options.engine.load.precision))});
    (void)metrics->SetModelInfo(model::AnchorKindName((*workers)->model_info().anchors.kind));
  }
  AnchorServeService service(workers->get(), metrics.get(), options.service);
  // Gauges that mirror engine state (summed over the workers), refreshed once a second.
  std::mutex poll_mu;
  std::condition_variable poll_cv;
  bool poll_stop = false;
  std::thread poller;
  if (metrics != nullptr) {
    poller = std::thread([&] {
      std::unique_lock<std::mutex> lock(poll_mu);
      while (!poll_cv.wait_for(lock, std::chrono::seconds(1), [&] { return poll_stop; })) {
        lock.unlock();
        const scheduler::EngineStats stats = (*workers)->Stats();
        metrics->SetQueue(stats.running, stats.waiting);
        metrics->SetKvPool(stats.kv_blocks_used, stats.kv_blocks_total);
        metrics->SetKvFootprint(stats.kv_kept_bytes, stats.kv_full_equivalent_bytes);
        SessionsByTier tiers;
        tiers.resident = {stats.sessions.resident.sessions, stats.sessions.resident.bytes};
        tiers.host = {stats.sessions.host.sessions, stats.sessions.host.bytes};
        tiers.disk = {stats.sessions.disk.sessions, stats.sessions.disk.bytes};
        tiers.empty_sessions = stats.sessions.empty_sessions;
        metrics->SetSessions(tiers);
        metrics->SyncEngineTotals({stats.preemptions, stats.steps});
        if (auto process = ReadProcessStats(); process.ok()) metrics->SetProcess(*process);
        lock.lock();
      }
    });
  }
  auto stop_poller = [&] {
    if (!poller.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(poll_mu);
      poll_stop = true;
    }
    poll_cv.notify_all();
    poller.join();
  };
  auto credentials = Credentials(options);
  if (!credentials.ok()) {
    LogEvent("start_failed", "-", "", absl::StrCat("error=\"", credentials.status().ToString(), "\""));
    return 1;
  }
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, *credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_time)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogEvent("start_failed", "-", "", absl::StrCat("error=\"cannot listen on ", options.listen, "\""));
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);
  if (absl::Status warm = WarmUp(**workers); !warm.ok()) {
    LogEvent("start_failed", "-", "", absl::StrCat("error=\"warm-up: ", warm.ToString(), "\""));
    server->Shutdown();
    stop_poller();
    return 1;
  }
  health->SetServingStatus(true);
  health->SetServingStatus(kServiceName, true);
  if (metrics != nullptr) metrics->SetServing(true);
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  std::string metrics_at = "off";
  if (metrics != nullptr) {
    metrics_at = absl::StrCat(options.metrics_listen.substr(0, options.metrics_listen.rfind(':')),
                              ":", metrics->port());
  }
  LogEvent("serving", "-", "",
           absl::StrCat("listen=", host, ":", port, " metrics=", metrics_at,
                        " workers=", (*workers)->num_workers(),
                        " model=", options.engine.model_dir,
                        " anchors=", model::AnchorKindName((*workers)->model_info().anchors.kind)));

  int signal = 0;
  sigwait(&signals, &signal);
  LogEvent("drain_start", "-", "",
           absl::StrCat("signal=", signal, " in_flight=", service.active_streams(),
                        " timeout_s=", absl::ToDoubleSeconds(options.drain_timeout)));
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);
  if (metrics != nullptr) {
    metrics->SetServing(false);
    metrics->SetDraining(true);
  }
  service.StartDrain();
  const absl::Status drained = (*workers)->Drain(options.drain_timeout);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  stop_poller();
  LogEvent("drain_done", "-", "", absl::StrCat("sessions_persisted=", drained.ok() ? "yes" : "no",
                                               drained.ok() ? "" : " error=\"" + drained.ToString() + "\""));
  return drained.ok() ? 0 : 1;
}

namespace {

namespace v1 = ::anchorserve::v1;

// The merged configuration in the shape of the engine, the service and the process.
absl::StatusOr<RunOptions> ToRunOptions(const ServerConfig& c) {
  RunOptions o;
  scheduler::EngineOptions& e = o.engine;
  e.model_dir = c.model;
  e.load.device = c.device == ServerConfig::Device::kCuda ? model::Device::kCuda
                                                          : model::Device::kCpu;
  e.load.precision = c.dtype == ServerConfig::Dtype::kBFloat16 ? model::Precision::kBFloat16
                                                               : model::Precision::kFloat32;
  e.load.num_threads = c.threads;
  o.workers = c.workers;
  e.kv_budget_bytes = c.kv.budget_bytes;
  e.kv_free_memory_fraction = c.kv.gpu_memory_fraction;
  e.block_tokens = c.kv.block_tokens;
  e.max_waiting = c.scheduler.max_waiting;
  e.max_running = c.scheduler.max_running;
  e.max_batched_tokens = c.scheduler.max_batched_tokens;
  e.max_prefill_chunk = c.scheduler.max_prefill_chunk;
  e.max_prompt_tokens = c.limits.max_prompt_tokens;
  e.max_new_tokens = c.limits.max_new_tokens;
  e.sessions.disk_dir = c.sessions.disk_dir;
  e.sessions.host_max_bytes = c.sessions.host_max_bytes;
  e.sessions.disk_max_bytes = c.sessions.disk_max_bytes;
  e.sessions.idle_ttl = c.sessions.idle_ttl;
  e.sessions.idle_offload_after = c.sessions.idle_offload_after;
  ServiceOptions& s = o.service;
  s.default_mode = c.defaults.mode == DefaultsConfig::Mode::kFull ? v1::ATTENTION_MODE_FULL
                                                                  : v1::ATTENTION_MODE_ANCHOR;
  s.default_policy = c.defaults.position_policy == DefaultsConfig::PositionPolicy::kCompact
                         ? v1::POSITION_POLICY_COMPACT
                         : v1::POSITION_POLICY_ABSOLUTE;
  switch (c.defaults.anchor_insertion) {
    case DefaultsConfig::AnchorInsertion::kSentences:
      s.default_insertion = v1::ANCHOR_INSERTION_SENTENCES;
      break;
    case DefaultsConfig::AnchorInsertion::kMessages:
      s.default_insertion = v1::ANCHOR_INSERTION_MESSAGES;
      break;
    case DefaultsConfig::AnchorInsertion::kNone:
      s.default_insertion = v1::ANCHOR_INSERTION_NONE;
      break;
    case DefaultsConfig::AnchorInsertion::kClient:
      s.default_insertion = v1::ANCHOR_INSERTION_CLIENT;
      break;
  }
  s.max_sessions_per_tenant = c.limits.max_sessions_per_tenant;
  s.log_prompts = c.log.prompts;
  s.auth_enabled = c.auth.enabled;
  if (c.auth.enabled) {
    auto tokens = LoadAuthTokens(c.auth.tokens_file);
    if (!tokens.ok()) return tokens.status();
    s.tokens = *std::move(tokens);
  }
  o.listen = c.listen;
  o.metrics_listen = c.metrics_listen;
  o.tls_cert_file = c.tls.cert_file;
  o.tls_key_file = c.tls.key_file;
  o.tls_client_ca_file = c.tls.client_ca_file;
  o.reflection = c.grpc.reflection;
  o.keepalive_time = c.grpc.keepalive_time;
  o.keepalive_timeout = c.grpc.keepalive_timeout;
  o.max_message_bytes = c.limits.max_message_bytes;
  o.drain_timeout = c.drain_timeout;
  o.effective_config = EffectiveConfigYaml(c);
  return o;
}

}  // namespace

int ServerMain(int argc, char** argv) {
  auto command_line = ParseCommandLine(argc, argv);
  if (!command_line.ok()) {
    std::fprintf(stderr, "anchorserve: %s (see --help)\n",
                 std::string(command_line.status().message()).c_str());
    return 2;
  }
  if (command_line->help) {
    std::fputs(ConfigHelpText().c_str(), stdout);
    return 0;
  }
  auto config = LoadServerConfig(*command_line, ReadProcessEnvironment());
  if (!config.ok()) {
    std::fprintf(stderr, "anchorserve: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  auto options = ToRunOptions(*config);
  if (!options.ok()) {
    std::fprintf(stderr, "anchorserve: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  return RunServer(*options);
}

}  // namespace anchorserve::server
