// What `anchorctl bench` measured and how it is summarised: per-request and per-session samples
// in, the JSON summary (documented field by field in docs/ANCHORCTL.md) and its human rendering
// out. Pure functions, so the arithmetic is tested without a server.
#ifndef ANCHORSERVE_CLIENT_BENCH_REPORT_H_
#define ANCHORSERVE_CLIENT_BENCH_REPORT_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace anchorserve::client {

// One Generate request (one turn of a simulated session), or a CreateSession that failed.
struct RequestSample {
  absl::StatusCode code = absl::StatusCode::kOk;
  bool cancelled_by_client = false;  // Ctrl-C: neither ok nor an error
  std::optional<double> ttft_ms;
  std::vector<double> itl_ms;
  double e2e_ms = 0;
  double schedule_lag_ms = 0;  // open loop: how late the request started
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};

// A simulated session after its last successful turn (from that turn's usage).
struct SessionSample {
  int64_t turns = 0;
  int64_t kept_kv_tokens = 0;
  int64_t full_kv_tokens = 0;
  int64_t kept_kv_bytes = 0;
  int64_t full_kv_bytes = 0;
  double cache_reduction = 0;
};

struct Distribution {
  int64_t count = 0;
  double mean = 0;
  double p50 = 0;
  double p99 = 0;
  double max = 0;
};

// Nearest-rank percentile (an observed value): the smallest sample with at least q% of the
// samples at or below it. `sorted` ascending and non-empty; q in (0, 100].
double Percentile(const std::vector<double>& sorted, double q);
// All zeros for no samples.
Distribution Summarize(std::vector<double> values);
nlohmann::ordered_json DistributionToJson(const Distribution& d);

// The run as configured, echoed in the summary.
struct BenchEcho {
  std::string server;
  int64_t concurrency = 0;
  double rate = 0;
  std::optional<int64_t> requests;
  double duration_s = 0;
  int64_t turns = 0;
  int64_t max_tokens = 0;
  std::string mode;
  std::string text_source;
};

nlohmann::ordered_json BuildBenchSummary(const BenchEcho& echo,
                                         const std::vector<RequestSample>& requests,
                                         const std::vector<SessionSample>& sessions,
                                         double elapsed_s, bool interrupted);

// A few aligned lines for stderr.
std::string BenchSummaryText(const nlohmann::ordered_json& summary);

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_BENCH_REPORT_H_
