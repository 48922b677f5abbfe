#include "client/bench_report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace anchorserve::client {

double Percentile(const std::vector<double>& sorted, double q) {
  const double n = static_cast<double>(sorted.size());
  size_t rank = static_cast<size_t>(std::ceil(q / 100.0 * n));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

Distribution Summarize(std::vector<double> values) {
  Distribution d;
  if (values.empty()) return d;
  std::sort(values.begin(), values.end());
  d.count = static_cast<int64_t>(values.size());
  d.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(d.count);
  d.p50 = Percentile(values, 50);
  d.p99 = Percentile(values, 99);
  d.max = values.back();
  return d;
}

nlohmann::ordered_json DistributionToJson(const Distribution& d) {
  return {{"count", d.count}, {"mean", d.mean}, {"p50", d.p50}, {"p99", d.p99}, {"max", d.max}};
}

nlohmann::ordered_json BuildBenchSummary(const BenchEcho& echo,
                                         const std::vector<RequestSample>& requests,
                                         const std::vector<SessionSample>& sessions,
                                         double elapsed_s, bool interrupted) {
  int64_t ok = 0, errors = 0, cancelled = 0;
  int64_t prompt = 0, completion = 0, cached = 0;
  std::map<std::string, int64_t> errors_by_status;
  std::vector<double> ttft, itl, e2e, lag;
  for (const RequestSample& r : requests) {
    if (r.cancelled_by_client) {
      ++cancelled;
    } else if (r.code != absl::StatusCode::kOk) {
      ++errors;
      ++errors_by_status[absl::StatusCodeToString(r.code)];
    } else {
      ++ok;
      if (r.ttft_ms) ttft.push_back(*r.ttft_ms);
      itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
      e2e.push_back(r.e2e_ms);
    }
    prompt += r.prompt_tokens;
    completion += r.completion_tokens;
    cached += r.cached_tokens;
    if (echo.rate > 0) lag.push_back(r.schedule_lag_ms);
  }
  std::vector<double> kept_bytes, full_bytes, reduction;
  int64_t kept_sum = 0, full_sum = 0;
  for (const SessionSample& s : sessions) {
    kept_bytes.push_back(static_cast<double>(s.kept_kv_bytes));
    full_bytes.push_back(static_cast<double>(s.full_kv_bytes));
    reduction.push_back(s.cache_reduction);
    kept_sum += s.kept_kv_bytes;
    full_sum += s.full_kv_bytes;
  }
  const double seconds = elapsed_s > 0 ? elapsed_s : 1e-9;

  nlohmann::ordered_json config = {{"server", echo.server},
                                   {"concurrency", echo.concurrency},
                                   {"rate", echo.rate},
                                   {"requests", nullptr},
                                   {"duration_s", nullptr},
                                   {"turns", echo.turns},
                                   {"max_tokens", echo.max_tokens},
                                   {"mode", echo.mode.empty() ? "server default" : echo.mode},
                                   {"text", echo.text_source}};
  if (echo.requests) config["requests"] = *echo.requests;
  if (echo.duration_s > 0) config["duration_s"] = echo.duration_s;

  nlohmann::ordered_json by_status = nlohmann::ordered_json::object();
  for (const auto& [name, count] : errors_by_status) by_status[name] = count;

  nlohmann::ordered_json latency = {{"ttft", DistributionToJson(Summarize(ttft))},
                                    {"itl", DistributionToJson(Summarize(itl))},
                                    {"e2e", DistributionToJson(Summarize(e2e))}};
  if (echo.rate > 0) latency["schedule_lag"] = DistributionToJson(Summarize(lag));

  return {
      {"config", config},
      {"interrupted", interrupted},
      {"elapsed_s", elapsed_s},
      {"requests",
       {{"total", static_cast<int64_t>(requests.size())},
        {"ok", ok},
        {"errors", errors},
        {"cancelled", cancelled},
        {"errors_by_status", by_status}}},
      {"throughput",
       {{"requests_per_s", static_cast<double>(ok) / seconds},
        {"output_tokens_per_s", static_cast<double>(completion) / seconds},
        {"prompt_tokens_per_s", static_cast<double>(prompt) / seconds}}},
      {"tokens", {{"prompt", prompt}, {"completion", completion}, {"cached", cached}}},
      {"latency_ms", latency},
      {"kv_per_session",
       {{"sessions", static_cast<int64_t>(sessions.size())},
        {"kept_bytes", DistributionToJson(Summarize(kept_bytes))},
        {"full_bytes", DistributionToJson(Summarize(full_bytes))},
        {"cache_reduction", DistributionToJson(Summarize(reduction))},
        {"cache_reduction_overall",
         full_sum > 0 ? 1.0 - static_cast<double>(kept_sum) / static_cast<double>(full_sum)
                      : 0.0}}},
  };
}

namespace {

std::string Bytes(double bytes) {
  if (bytes >= 1 << 20) return absl::StrFormat("%.2f MiB", bytes / (1 << 20));
  if (bytes >= 1 << 10) return absl::StrFormat("%.1f KiB", bytes / (1 << 10));
  return absl::StrFormat("%.0f B", bytes);
}

std::string LatencyLine(const char* name, const nlohmann::ordered_json& d) {
  return absl::StrFormat("  %-5s p50 %9.2f ms   p99 %9.2f ms   mean %9.2f ms   (n=%d)\n", name,
                         d["p50"].get<double>(), d["p99"].get<double>(), d["mean"].get<double>(),
                         d["count"].get<int64_t>());
}

}  // namespace

std::string BenchSummaryText(const nlohmann::ordered_json& s) {
  const nlohmann::ordered_json& req = s["requests"];
  const nlohmann::ordered_json& tp = s["throughput"];
  const nlohmann::ordered_json& lat = s["latency_ms"];
  const nlohmann::ordered_json& kv = s["kv_per_session"];
  std::string out = absl::StrFormat(
      "bench: %d requests (%d ok, %d errors, %d cancelled) in %.2f s%s\n",
      req["total"].get<int64_t>(), req["ok"].get<int64_t>(), req["errors"].get<int64_t>(),
      req["cancelled"].get<int64_t>(), s["elapsed_s"].get<double>(),
      s["interrupted"].get<bool>() ? " (interrupted)" : "");
  absl::StrAppend(
      &out,
      absl::StrFormat("  throughput %.2f req/s, %.1f output tok/s, %.1f prompt tok/s\n",
                      tp["requests_per_s"].get<double>(), tp["output_tokens_per_s"].get<double>(),
                      tp["prompt_tokens_per_s"].get<double>()));
  absl::StrAppend(&out, LatencyLine("TTFT", lat["ttft"]), LatencyLine("ITL", lat["itl"]),
                  LatencyLine("E2E", lat["e2e"]));
  if (lat.contains("schedule_lag")) absl::StrAppend(&out, LatencyLine("lag", lat["schedule_lag"]));
  if (kv["sessions"].get<int64_t>() > 0) {
    absl::StrAppend(&out,
                    absl::StrFormat("  KV per session (%d sessions): kept %s of %s full-equivalent "
                                    "(mean), C↓ %.1f%% mean, %.1f%% overall\n",
                                    kv["sessions"].get<int64_t>(),
                                    Bytes(kv["kept_bytes"]["mean"].get<double>()),
                                    Bytes(kv["full_bytes"]["mean"].get<double>()),
                                    100.0 * kv["cache_reduction"]["mean"].get<double>(),
                                    100.0 * kv["cache_reduction_overall"].get<double>()));
  }
  for (const auto& [name, count] : req["errors_by_status"].items()) {
    absl::StrAppend(&out, absl::StrFormat("  errors %s: %d\n", name, count.get<int64_t>()));
  }
  return out;
}

}  // namespace anchorserve::client
