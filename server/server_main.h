// The anchorserve process: build the workers and the gRPC server from options, serve, and drain
// on SIGTERM/SIGINT. Separate from main() so tests can drive it.
#ifndef ANCHORSERVE_SERVER_SERVER_MAIN_H_
#define ANCHORSERVE_SERVER_SERVER_MAIN_H_

#include <string>

#include "absl/time/time.h"
#include "scheduler/worker_pool.h"
#include "server/service.h"

namespace anchorserve::server {

struct RunOptions {
  scheduler::EngineOptions engine;  // every worker's (scheduler/worker_pool.h)
  int32_t workers = 0;              // 0 = one per visible GPU on cuda, one on cpu
  ServiceOptions service;
  std::string listen = "0.0.0.0:50051";
  std::string metrics_listen;  // empty: no metrics endpoint
  std::string tls_cert_file, tls_key_file, tls_client_ca_file;
  bool reflection = true;
  absl::Duration keepalive_time = absl::Minutes(2);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  int max_message_bytes = 16 << 20;
  absl::Duration drain_timeout = absl::Seconds(30);
  std::string effective_config;  // logged at start (secrets redacted)
};

// Serves until SIGTERM/SIGINT, then drains. Returns the process exit code: 0 after a clean
// drain, 1 when start-up fails (the reason is logged).
int RunServer(const RunOptions& options);

// main(): parses the configuration (YAML < env < flags), then RunServer. 2 on bad arguments.
int ServerMain(int argc, char** argv);

}  // namespace anchorserve::server

#endif  // ANCHORSERVE_SERVER_SERVER_MAIN_H_
