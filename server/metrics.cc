#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

#ifndef ANCHORSERVE_VERSION
#define ANCHORSERVE_VERSION "unknown"
#endif

namespace anchorserve::server {
namespace {

constexpr std::array<absl::string_view, kNumRpcs> kRpcNames = {
    "Generate",      "CreateSession", "GetSession",   "ListSessions", "DeleteSession",
    "ExportSession", "ImportSession", "GetModelInfo", "Tokenize",
};

// The gRPC status names, indexed by code (grpc/doc/statuscodes.md).
constexpr int kNumStatusCodes = 17;
constexpr std::array<absl::string_view, kNumStatusCodes> kStatusCodeNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};
constexpr int kUnknownCode = 2;

constexpr int kNumCancellationReasons = 3;
constexpr std::array<absl::string_view, kNumCancellationReasons> kCancellationReasonNames = {
    "client", "deadline", "drain"};

constexpr std::array<absl::string_view, 4> kAnchorTypes = {"ac", "ep", "custom", "none"};

// Bucket boundaries (docs/METRICS.md says why each set). Upper bounds; +Inf is implicit.
// TTFT: milliseconds on a GPU up to a minute for a long prompt queued on a CPU; dense around
// the 0.2 to 2 s range where TTFT SLOs usually sit.
const std::vector<double> kTtftBuckets = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
                                          0.2,   0.3,  0.5,   0.75, 1,     1.5, 2,
                                          3,     5,    7.5,   10,   20,    30,  60};
// Inter-token latency: one decode step, ~1 ms (small model, GPU) to ~1 s (CPU, big batch).
const std::vector<double> kInterTokenBuckets = {0.001, 0.0025, 0.005, 0.0075, 0.01,  0.015, 0.02,
                                                0.025, 0.03,   0.04,  0.05,   0.075, 0.1,   0.15,
                                                0.2,   0.3,    0.5,   0.75,   1,     2.5};
// End to end: a short answer in tens of ms up to max_tokens on a CPU (minutes).
const std::vector<double> kRequestDurationBuckets = {
    0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600};
// Queue time: ~0 when there is room, growing to the drain/deadline scale under overload.
const std::vector<double> kQueueTimeBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5,   1,      2.5,   5,    10,    30,   60};
// Cache reduction C-down = 1 - kept/full: anchor models sit at 0.9..0.99, so the buckets are
// dense near 1; le="0" isolates full-attention turns (nothing reduced).
const std::vector<double> kReductionBuckets = {0, .5, .8, .9, .95, .97, .98, .99, .995, 1};
// Anchors per turn: about one per sentence, so powers of two up to a long document.
const std::vector<double> kAnchorsPerTurnBuckets = {0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512};

// Label values of info metrics: short, printable, nothing that needs escaping.
absl::Status CheckInfoValue(absl::string_view field, absl::string_view value) {
  const bool ok =
      !value.empty() && value.size() <= 64 && std::all_of(value.begin(), value.end(), [](char c) {
        return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
               c == ':' || c == '+' || c == '-';
      });
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("build info ", field, " \"", absl::CEscape(value),
                   "\": use 1 to 64 characters from [A-Za-z0-9._:+-]"));
}

absl::Status CheckListenAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (address.empty() || colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("metrics listen address \"",
                                                   absl::CEscape(address),
                                                   "\": expected host:port, e.g. 0.0.0.0:9090"));
  }
  const absl::string_view port_text = absl::string_view(address).substr(colon + 1);
  int port = -1;
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); }) ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics listen address \"", absl::CEscape(address),
                     "\": port must be a number from 0 to 65535 (0 picks a free port)"));
  }
  return absl::OkStatus();
}

bool UsableSeconds(double seconds) { return std::isfinite(seconds) && seconds >= 0; }

// The HTTP side of /metrics: one thread that answers one connection at a time (Prometheus
// scrapes a target one request at a time) and closes it. It replaces prometheus-cpp's civetweb
// Exposer, whose threads are created with a fixed 100 KiB stack: glibc refuses such a thread
// (pthread_create EINVAL) once the process's static TLS, which every thread stack must hold,
// grows past it, and libtorch with OpenBLAS alone brings about 100 KiB of it.
class ScrapeEndpoint {
 public:
  // Binds `address` ("host:port", validated by CheckListenAddress; port 0 picks one) and starts
  // serving `body()` at GET /metrics. Unavailable, naming the address, when it cannot bind.
  static absl::StatusOr<std::unique_ptr<ScrapeEndpoint>> Start(const std::string& address,
                                                               std::function<std::string()> body) {
    const size_t colon = address.rfind(':');
    std::string host = address.substr(0, colon);
    const std::string port = address.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const int lookup =
        getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
    if (lookup != 0) {
      return absl::UnavailableError(absl::StrCat("metrics endpoint: cannot listen on ", address,
                                                 " (", gai_strerror(lookup), ")"));
    }
    int fd = -1;
    int error = 0;
    for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
      fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) {
        error = errno;
        continue;
      }
      const int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        error = errno;
        close(fd);
        fd = -1;
      }
    }
    freeaddrinfo(found);
    if (fd < 0) {
      return absl::UnavailableError(absl::StrCat("metrics endpoint: cannot listen on ", address,
                                                 " (", std::strerror(error),
                                                 "): is the port in use?"));
    }
    sockaddr_storage bound{};
    socklen_t length = sizeof(bound);
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
    auto endpoint = std::unique_ptr<ScrapeEndpoint>(new ScrapeEndpoint(fd, std::move(body)));
    endpoint->port_ = ntohs(bound.ss_family == AF_INET6
                                ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    if (pipe2(endpoint->wake_, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("metrics endpoint: pipe: ", std::strerror(errno)));
    }
    endpoint->thread_ = std::thread([e = endpoint.get()] { e->Serve(); });
    return endpoint;
  }

  // Stops accepting, lets an answer in progress finish (at most its socket timeouts) and joins
  // the thread.
  ~ScrapeEndpoint() {
    if (thread_.joinable()) {
      const char stop = 's';
      while (write(wake_[1], &stop, 1) < 0 && errno == EINTR) {
      }
      thread_.join();
    }
    for (int fd : {listen_fd_, wake_[0], wake_[1]}) {
      if (fd >= 0) close(fd);
    }
  }

  int port() const { return port_; }

 private:
  ScrapeEndpoint(int listen_fd, std::function<std::string()> body)
      : listen_fd_(listen_fd), body_(std::move(body)) {}

  void Serve() {
    for (;;) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0) return;
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        // Out of descriptors: the pending connection stays queued; do not spin on it.
        if (errno == EMFILE || errno == ENFILE) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        continue;
      }
      Answer(fd);
      close(fd);
    }
  }

  // Reads the request head and answers: 200 with the exposition for GET/HEAD /metrics, 404 for
  // another path, 405 for another method, 400 for anything unparsable. A client that sends
  // nothing for 2 s, or does not read the answer for 5 s, is dropped: the next scrape waits at
  // most that long.
  void Answer(int fd) {
    const timeval read_timeout{2, 0};
    const timeval write_timeout{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &read_timeout, sizeof(read_timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &write_timeout, sizeof(write_timeout));
    std::string head;
    char buffer[4096];
    while (head.find("\r\n\r\n") == std::string::npos &&
           head.find("\n\n") == std::string::npos) {
      if (head.size() > 16384) break;
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      head.append(buffer, static_cast<size_t>(n));
    }
    const std::string line = head.substr(0, head.find_first_of("\r\n"));
    const size_t space = line.find(' ');
    const size_t space2 = space == std::string::npos ? space : line.find(' ', space + 1);
    std::string status = "400 Bad Request";
    std::string body = "bad request\n";
    std::string extra;
    if (space2 != std::string::npos && absl::StartsWith(line.substr(space2 + 1), "HTTP/")) {
      const std::string method = line.substr(0, space);
      const std::string target = line.substr(space + 1, space2 - space - 1);
      const std::string path = target.substr(0, target.find('?'));
      if (method != "GET" && method != "HEAD") {
        status = "405 Method Not Allowed";
        body = "only GET and HEAD\n";
        extra = "Allow: GET, HEAD\r\n";
      } else if (path != "/metrics") {
        status = "404 Not Found";
        body = "the metrics are at /metrics\n";
      } else {
        status = "200 OK";
        body = body_();
        extra = "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n";
      }
      if (method == "HEAD") {
        extra += absl::StrCat("Content-Length: ", body.size(), "\r\n");
        body.clear();
        SendAll(fd,
                absl::StrCat("HTTP/1.1 ", status, "\r\n", extra, "Connection: close\r\n\r\n"));
        return;
      }
    }
    if (extra.find("Content-Type") == std::string::npos) {
      extra += "Content-Type: text/plain; charset=utf-8\r\n";
    }
    SendAll(fd, absl::StrCat("HTTP/1.1 ", status, "\r\n", extra, "Content-Length: ", body.size(),
                             "\r\nConnection: close\r\n\r\n", body));
  }

  static void SendAll(int fd, const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the client went away or stalled past the timeout
      sent += static_cast<size_t>(n);
    }
  }

  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a byte on wake_[1] stops Serve()
  int port_ = 0;
  std::function<std::string()> body_;
  std::thread thread_;
};

}  // namespace

absl::string_view RpcName(Rpc rpc) {
  const int i = static_cast<int>(rpc);
  return i >= 0 && i < kNumRpcs ? kRpcNames[i] : "unknown";
}

absl::string_view StatusCodeName(absl::StatusCode code) {
  const int i = static_cast<int>(code);
  return kStatusCodeNames[i >= 0 && i < kNumStatusCodes ? i : kUnknownCode];
}

absl::string_view CancellationReasonName(CancellationReason reason) {
  const int i = static_cast<int>(reason);
  return i >= 0 && i < kNumCancellationReasons ? kCancellationReasonNames[i] : "unknown";
}

// Every series whose labels are known up front is created at start (at 0), so that the first
// event shows up in rate()/increase() and dashboards see every family from the first scrape.
struct Metrics::State {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();

  // Requests.
  prometheus::Family<prometheus::Counter>* requests_family = nullptr;
  std::array<std::array<prometheus::Counter*, kNumStatusCodes>, kNumRpcs> requests{};
  prometheus::Gauge* requests_running = nullptr;
  prometheus::Gauge* requests_waiting = nullptr;
  prometheus::Counter* queue_rejections = nullptr;
  prometheus::Counter* prompt_tokens = nullptr;
  prometheus::Counter* generation_tokens = nullptr;
  std::array<prometheus::Counter*, kNumCancellationReasons> cancellations{};
  prometheus::Counter* preemptions = nullptr;
  prometheus::Counter* engine_steps = nullptr;

  // Latencies.
  prometheus::Histogram* ttft = nullptr;
  prometheus::Histogram* inter_token = nullptr;
  prometheus::Histogram* request_duration = nullptr;
  prometheus::Histogram* queue_time = nullptr;

  // KV pool and sessions.
  prometheus::Gauge* kv_pool_usage = nullptr;
  prometheus::Gauge* kv_blocks_used = nullptr;
  prometheus::Gauge* kv_blocks_free = nullptr;
  // Indexed resident, host, disk, empty.
  std::array<prometheus::Gauge*, 4> sessions{};
  std::array<prometheus::Gauge*, 4> session_bytes{};

  // Anchor metrics.
  prometheus::Histogram* turn_reduction = nullptr;
  prometheus::Histogram* session_reduction = nullptr;
  prometheus::Gauge* kv_kept_bytes = nullptr;
  prometheus::Gauge* kv_full_bytes = nullptr;
  prometheus::Counter* kv_saved_bytes = nullptr;
  prometheus::Histogram* anchors_per_turn = nullptr;

  // Process.
  prometheus::Gauge* up = nullptr;
  prometheus::Gauge* draining = nullptr;
  prometheus::Gauge* resident_memory = nullptr;
  prometheus::Gauge* open_fds = nullptr;
  prometheus::Family<prometheus::Gauge>* build_info_family = nullptr;
  prometheus::Family<prometheus::Gauge>* model_info_family = nullptr;

  // Serializes the replacement of the info series (Remove then Add).
  absl::Mutex info_mu;
  prometheus::Gauge* build_info ABSL_GUARDED_BY(info_mu) = nullptr;
  prometheus::Gauge* model_info ABSL_GUARDED_BY(info_mu) = nullptr;

  // Engine totals last seen, to turn them into counter increments.
  absl::Mutex totals_mu;
  EngineTotals last_totals ABSL_GUARDED_BY(totals_mu);

  // Declared last so that it stops serving before the metrics above go away.
  std::unique_ptr<ScrapeEndpoint> endpoint;
  int port = 0;

  State();
};

Metrics::State::State() {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  prometheus::Registry& r = *registry;

  requests_family = &BuildCounter()
                         .Name("anchorserve_requests_total")
                         .Help("RPCs finished, by method and final gRPC status.")
                         .Register(r);
  for (int rpc = 0; rpc < kNumRpcs; ++rpc) {
    for (int code = 0; code < kNumStatusCodes; ++code) {
      requests[rpc][code] = &requests_family->Add(
          {{"rpc", std::string(kRpcNames[rpc])}, {"code", std::string(kStatusCodeNames[code])}});
    }
  }
  requests_running = &BuildGauge()
                          .Name("anchorserve_requests_running")
                          .Help("Generate requests scheduled on the engine (holding KV).")
                          .Register(r)
                          .Add({});
  requests_waiting = &BuildGauge()
                          .Name("anchorserve_requests_waiting")
                          .Help("Generate requests queued, not yet scheduled.")
                          .Register(r)
                          .Add({});
  queue_rejections = &BuildCounter()
                          .Name("anchorserve_queue_rejections_total")
                          .Help("Generate requests refused at once because the queue was full.")
                          .Register(r)
                          .Add({});
  prompt_tokens = &BuildCounter()
                       .Name("anchorserve_prompt_tokens_total")
                       .Help(
                           "Prompt tokens prefilled (new tokens of each turn; session history "
                           "is not prefilled again).")
                       .Register(r)
                       .Add({});
  generation_tokens = &BuildCounter()
                           .Name("anchorserve_generation_tokens_total")
                           .Help("Tokens generated and streamed.")
                           .Register(r)
                           .Add({});
  auto& cancellations_family = BuildCounter()
                                   .Name("anchorserve_cancellations_total")
                                   .Help(
                                       "Requests ended before finishing, by reason: client "
                                       "(cancel, disconnect, failed write), deadline, drain.")
                                   .Register(r);
  for (int i = 0; i < kNumCancellationReasons; ++i) {
    cancellations[i] =
        &cancellations_family.Add({{"reason", std::string(kCancellationReasonNames[i])}});
  }
  preemptions = &BuildCounter()
                     .Name("anchorserve_preemptions_total")
                     .Help("Running requests preempted (KV freed, requeued) to make room.")
                     .Register(r)
                     .Add({});
  engine_steps = &BuildCounter()
                      .Name("anchorserve_engine_steps_total")
                      .Help("Engine iterations (batched forward passes) run.")
                      .Register(r)
                      .Add({});

  ttft = &BuildHistogram()
              .Name("anchorserve_time_to_first_token_seconds")
              .Help("Generate: time from arrival to the first token sent.")
              .Register(r)
              .Add({}, kTtftBuckets);
  inter_token = &BuildHistogram()
                     .Name("anchorserve_inter_token_latency_seconds")
                     .Help("Generate: time between consecutive tokens of one stream.")
                     .Register(r)
                     .Add({}, kInterTokenBuckets);
  request_duration = &BuildHistogram()
                          .Name("anchorserve_request_duration_seconds")
                          .Help("Generate: end-to-end time from arrival to the final message.")
                          .Register(r)
                          .Add({}, kRequestDurationBuckets);
  queue_time = &BuildHistogram()
                    .Name("anchorserve_queue_time_seconds")
                    .Help("Generate: time from queueing to first being scheduled.")
                    .Register(r)
                    .Add({}, kQueueTimeBuckets);

  kv_pool_usage = &BuildGauge()
                       .Name("anchorserve_kv_pool_usage_ratio")
                       .Help("Share of the KV block pool in use (0 to 1).")
                       .Register(r)
                       .Add({});
  auto& blocks_family = BuildGauge()
                            .Name("anchorserve_kv_pool_blocks")
                            .Help("KV pool blocks by state (used, free).")
                            .Register(r);
  kv_blocks_used = &blocks_family.Add({{"state", "used"}});
  kv_blocks_free = &blocks_family.Add({{"state", "free"}});
  auto& sessions_family = BuildGauge()
                              .Name("anchorserve_sessions")
                              .Help(
                                  "Sessions by the tier holding their KV (resident, host, "
                                  "disk; empty: no turn yet).")
                              .Register(r);
  auto& session_bytes_family = BuildGauge()
                                   .Name("anchorserve_session_bytes")
                                   .Help(
                                       "Bytes sessions occupy, by tier (device, host memory, "
                                       "disk; empty is always 0).")
                                   .Register(r);
  constexpr std::array<const char*, 4> kTiers = {"resident", "host", "disk", "empty"};
  for (size_t i = 0; i < kTiers.size(); ++i) {
    sessions[i] = &sessions_family.Add({{"tier", kTiers[i]}});
    session_bytes[i] = &session_bytes_family.Add({{"tier", kTiers[i]}});
  }

  turn_reduction = &BuildHistogram()
                        .Name("anchorserve_turn_cache_reduction_ratio")
                        .Help(
                            "Cache reduction (1 - kept/full-equivalent KV) of each completed "
                            "turn's own tokens.")
                        .Register(r)
                        .Add({}, kReductionBuckets);
  session_reduction = &BuildHistogram()
                           .Name("anchorserve_session_cache_reduction_ratio")
                           .Help(
                               "Cumulative cache reduction of a session, observed at each "
                               "committed turn.")
                           .Register(r)
                           .Add({}, kReductionBuckets);
  kv_kept_bytes = &BuildGauge()
                       .Name("anchorserve_kv_kept_bytes")
                       .Help("K/V bytes kept by live sequences and stored sessions.")
                       .Register(r)
                       .Add({});
  kv_full_bytes = &BuildGauge()
                       .Name("anchorserve_kv_full_equivalent_bytes")
                       .Help(
                           "K/V bytes full caches of the same live sequences and sessions "
                           "would hold.")
                       .Register(r)
                       .Add({});
  kv_saved_bytes = &BuildCounter()
                        .Name("anchorserve_kv_saved_bytes_total")
                        .Help("Full-equivalent minus kept K/V bytes of each completed turn.")
                        .Register(r)
                        .Add({});
  anchors_per_turn = &BuildHistogram()
                          .Name("anchorserve_anchors_per_turn")
                          .Help("Anchors (compressed sentences) added by each completed turn.")
                          .Register(r)
                          .Add({}, kAnchorsPerTurnBuckets);

  up = &BuildGauge()
            .Name("anchorserve_up")
            .Help("1 while the server accepts requests (model loaded, health SERVING), else 0.")
            .Register(r)
            .Add({});
  draining = &BuildGauge()
                  .Name("anchorserve_draining")
                  .Help("1 from the start of a graceful drain, else 0.")
                  .Register(r)
                  .Add({});
  resident_memory = &BuildGauge()
                         .Name("anchorserve_process_resident_memory_bytes")
                         .Help("Resident set size of the server process (/proc/self/statm).")
                         .Register(r)
                         .Add({});
  open_fds = &BuildGauge()
                  .Name("anchorserve_process_open_fds")
                  .Help("Open file descriptors of the server process (/proc/self/fd).")
                  .Register(r)
                  .Add({});
  build_info_family = &BuildGauge()
                           .Name("anchorserve_build_info")
                           .Help("Always 1; labels: server version, compute device, KV dtype.")
                           .Register(r);
  model_info_family = &BuildGauge()
                           .Name("anchorserve_model_info")
                           .Help("Always 1; labels: the served model's anchor type.")
                           .Register(r);
  absl::MutexLock lock(&info_mu);
  build_info = &build_info_family->Add(
      {{"version", ANCHORSERVE_VERSION}, {"device", "unknown"}, {"dtype", "unknown"}});
  build_info->Set(1);
  model_info = &model_info_family->Add({{"anchor_type", "unknown"}});
  model_info->Set(1);
}

Metrics::Metrics(std::unique_ptr<State> state) : state_(std::move(state)) {}

Metrics::~Metrics() = default;

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& listen_address) {
  if (absl::Status valid = CheckListenAddress(listen_address); !valid.ok()) return valid;
  auto state = std::make_unique<State>();
  prometheus::Registry* registry = state->registry.get();
  auto endpoint = ScrapeEndpoint::Start(listen_address, [registry] {
    return prometheus::TextSerializer().Serialize(registry->Collect());
  });
  if (!endpoint.ok()) return endpoint.status();
  state->endpoint = *std::move(endpoint);
  state->port = state->endpoint->port();
  return std::unique_ptr<Metrics>(new Metrics(std::move(state)));
}

std::unique_ptr<Metrics> Metrics::CreateRegistryOnly() {
  return std::unique_ptr<Metrics>(new Metrics(std::make_unique<State>()));
}

int Metrics::port() const { return state_->port; }

std::string Metrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(state_->registry->Collect());
}

void Metrics::RecordRequest(Rpc rpc, absl::StatusCode code) {
  const int r = static_cast<int>(rpc);
  if (r < 0 || r >= kNumRpcs) return;
  int c = static_cast<int>(code);
  if (c < 0 || c >= kNumStatusCodes) c = kUnknownCode;
  state_->requests[r][c]->Increment();
}

void Metrics::RecordQueueRejection() { state_->queue_rejections->Increment(); }

void Metrics::RecordCancellation(CancellationReason reason) {
  const int i = static_cast<int>(reason);
  if (i < 0 || i >= kNumCancellationReasons) return;
  state_->cancellations[i]->Increment();
}

void Metrics::AddPromptTokens(int64_t tokens) {
  if (tokens > 0) state_->prompt_tokens->Increment(static_cast<double>(tokens));
}

void Metrics::AddGenerationTokens(int64_t tokens) {
  if (tokens > 0) state_->generation_tokens->Increment(static_cast<double>(tokens));
}

void Metrics::ObserveTimeToFirstToken(double seconds) {
  if (UsableSeconds(seconds)) state_->ttft->Observe(seconds);
}

void Metrics::ObserveInterTokenLatency(double seconds) {
  if (UsableSeconds(seconds)) state_->inter_token->Observe(seconds);
}

void Metrics::ObserveRequestDuration(double seconds) {
  if (UsableSeconds(seconds)) state_->request_duration->Observe(seconds);
}

void Metrics::ObserveQueueTime(double seconds) {
  if (UsableSeconds(seconds)) state_->queue_time->Observe(seconds);
}

void Metrics::ObserveTurn(const TurnStats& turn) {
  const int64_t added_full = turn.after.full_tokens - turn.before.full_tokens;
  if (added_full <= 0) return;
  // A turn can free more than it adds (its first anchor reduces the previous turn's unfinished
  // sentence), so the kept delta may be negative: clamp the ratio into [0, 1].
  const int64_t added_kept = turn.after.kept_tokens - turn.before.kept_tokens;
  const double turn_reduction =
      std::clamp(1.0 - static_cast<double>(added_kept) / static_cast<double>(added_full), 0.0, 1.0);
  state_->turn_reduction->Observe(turn_reduction);
  state_->anchors_per_turn->Observe(
      static_cast<double>(std::max<int64_t>(0, turn.after.anchors - turn.before.anchors)));
  const int64_t saved_tokens = added_full - added_kept;
  if (saved_tokens > 0 && turn.bytes_per_token > 0) {
    state_->kv_saved_bytes->Increment(static_cast<double>(saved_tokens) *
                                      static_cast<double>(turn.bytes_per_token));
  }
  if (turn.in_session && turn.after.full_tokens > 0) {
    const double session_reduction = 1.0 - static_cast<double>(turn.after.kept_tokens) /
                                               static_cast<double>(turn.after.full_tokens);
    state_->session_reduction->Observe(std::clamp(session_reduction, 0.0, 1.0));
  }
}

void Metrics::SetKvFootprint(int64_t kept_bytes, int64_t full_equivalent_bytes) {
  state_->kv_kept_bytes->Set(static_cast<double>(kept_bytes));
  state_->kv_full_bytes->Set(static_cast<double>(full_equivalent_bytes));
}

void Metrics::SetQueue(int64_t running, int64_t waiting) {
  state_->requests_running->Set(static_cast<double>(running));
  state_->requests_waiting->Set(static_cast<double>(waiting));
}

void Metrics::SetKvPool(int64_t used_blocks, int64_t total_blocks) {
  state_->kv_blocks_used->Set(static_cast<double>(used_blocks));
  state_->kv_blocks_free->Set(
      static_cast<double>(std::max<int64_t>(0, total_blocks - used_blocks)));
  state_->kv_pool_usage->Set(total_blocks > 0 ? static_cast<double>(used_blocks) /
                                                    static_cast<double>(total_blocks)
                                              : 0.0);
}

void Metrics::SetSessions(const SessionsByTier& s) {
  const std::array<SessionTierUsage, 4> tiers = {s.resident, s.host, s.disk,
                                                 SessionTierUsage{s.empty_sessions, 0}};
  for (size_t i = 0; i < tiers.size(); ++i) {
    state_->sessions[i]->Set(static_cast<double>(tiers[i].sessions));
    state_->session_bytes[i]->Set(static_cast<double>(tiers[i].bytes));
  }
}

void Metrics::SyncEngineTotals(const EngineTotals& totals) {
  absl::MutexLock lock(&state_->totals_mu);
  EngineTotals& last = state_->last_totals;
  // Like Prometheus's own reset handling: a total that went down restarted from zero.
  auto advance = [](prometheus::Counter* counter, int64_t total, int64_t& last_total) {
    const int64_t delta = total >= last_total ? total - last_total : total;
    if (delta > 0) counter->Increment(static_cast<double>(delta));
    last_total = total;
  };
  advance(state_->preemptions, totals.preemptions, last.preemptions);
  advance(state_->engine_steps, totals.steps, last.steps);
}

void Metrics::SetServing(bool serving) { state_->up->Set(serving ? 1 : 0); }

void Metrics::SetDraining(bool draining) { state_->draining->Set(draining ? 1 : 0); }

void Metrics::SetProcess(const ProcessStats& stats) {
  state_->resident_memory->Set(static_cast<double>(std::max<int64_t>(0, stats.resident_bytes)));
  state_->open_fds->Set(static_cast<double>(std::max<int64_t>(0, stats.open_fds)));
}

absl::StatusOr<ProcessStats> ReadProcessStats() {
  ProcessStats stats;
  // statm: size resident shared text lib data dt, in pages.
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (statm == nullptr) return absl::UnavailableError("cannot open /proc/self/statm");
  long long size_pages = 0, resident_pages = 0;
  const int fields = std::fscanf(statm, "%lld %lld", &size_pages, &resident_pages);
  std::fclose(statm);
  if (fields != 2) return absl::UnavailableError("cannot parse /proc/self/statm");
  stats.resident_bytes = static_cast<int64_t>(resident_pages) * sysconf(_SC_PAGESIZE);
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return absl::UnavailableError("cannot open /proc/self/fd");
  while (const dirent* entry = readdir(fds)) {
    if (entry->d_name[0] != '.') ++stats.open_fds;
  }
  closedir(fds);
  --stats.open_fds;  // the descriptor opendir itself holds
  return stats;
}

absl::Status Metrics::SetBuildInfo(const BuildInfo& info) {
  if (absl::Status s = CheckInfoValue("version", info.version); !s.ok()) return s;
  if (absl::Status s = CheckInfoValue("device", info.device); !s.ok()) return s;
  if (absl::Status s = CheckInfoValue("dtype", info.dtype); !s.ok()) return s;
  absl::MutexLock lock(&state_->info_mu);
  // Add before Remove so that no scrape sees the family without a series.
  prometheus::Gauge* next = &state_->build_info_family->Add(
      {{"version", info.version}, {"device", info.device}, {"dtype", info.dtype}});
  next->Set(1);
  if (next != state_->build_info) state_->build_info_family->Remove(state_->build_info);
  state_->build_info = next;
  return absl::OkStatus();
}

absl::Status Metrics::SetModelInfo(absl::string_view anchor_type) {
  if (std::find(kAnchorTypes.begin(), kAnchorTypes.end(), anchor_type) == kAnchorTypes.end()) {
    return absl::InvalidArgumentError(absl::StrCat("model info anchor_type \"",
                                                   absl::CEscape(anchor_type),
                                                   "\": expected ac, ep, custom or none"));
  }
  absl::MutexLock lock(&state_->info_mu);
  prometheus::Gauge* next =
      &state_->model_info_family->Add({{"anchor_type", std::string(anchor_type)}});
  next->Set(1);
  if (next != state_->model_info) state_->model_info_family->Remove(state_->model_info);
  state_->model_info = next;
  return absl::OkStatus();
}

}  // namespace anchorserve::server
