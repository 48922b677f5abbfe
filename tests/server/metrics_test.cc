// Metrics: every documented family is registered with its type and labels; the HTTP endpoint
// serves the same text; promtool accepts it; a real Prometheus server scrapes it; label sets
// stay fixed (no session, tenant or request ids) however many requests and turns are recorded.
#include "common/remove_tree.h"
#include "server/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"

extern char** environ;

#ifndef ANCHORSERVE_TEST_DATA_DIR
#error "ANCHORSERVE_TEST_DATA_DIR must name tests/data"
#endif

namespace anchorserve::server {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// A small reader of the text exposition format (enough for what prometheus-cpp writes).

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram|...
  std::vector<Sample> samples;

  // Samples of `family` (for a histogram, its _bucket/_sum/_count series too).
  std::vector<Sample> Of(const std::string& family) const {
    std::vector<Sample> out;
    for (const Sample& s : samples) {
      if (s.name == family || s.name == family + "_bucket" || s.name == family + "_sum" ||
          s.name == family + "_count") {
        out.push_back(s);
      }
    }
    return out;
  }
  // The value of the one sample named `name` with exactly `labels`; NaN when absent.
  double Value(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const {
    for (const Sample& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    return std::nan("");
  }
};

absl::StatusOr<Exposition> ParseExposition(absl::string_view text) {
  Exposition out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      if (parts.size() != 2) return absl::InvalidArgumentError(absl::StrCat("TYPE: ", line));
      out.types[parts[0]] = parts[1];
      continue;
    }
    if (absl::StartsWith(line, "#")) continue;
    Sample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    sample.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == absl::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          return absl::InvalidArgumentError(absl::StrCat("labels: ", line));
        }
        std::string key(line.substr(i, eq - i));
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) ++j;
          value.push_back(line[j]);
        }
        sample.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // '}'
    }
    absl::string_view rest = absl::StripAsciiWhitespace(line.substr(std::min(i, line.size())));
    const std::string value_text(rest.substr(0, rest.find(' ')));  // a timestamp may follow
    if (value_text == "+Inf") {
      sample.value = INFINITY;
    } else if (!absl::SimpleAtod(value_text, &sample.value)) {
      return absl::InvalidArgumentError(absl::StrCat("value: ", line));
    }
    out.samples.push_back(std::move(sample));
  }
  return out;
}

Exposition MustParse(absl::string_view text) {
  absl::StatusOr<Exposition> parsed = ParseExposition(text);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *std::move(parsed) : Exposition{};
}

// ---------------------------------------------------------------------------------------------
// The documented families (docs/METRICS.md): name, type, label names.

struct FamilySpec {
  std::string name;
  std::string type;
  std::set<std::string> labels;  // besides a histogram's `le`
};

const std::vector<FamilySpec>& DocumentedFamilies() {
  static const auto* families = new std::vector<FamilySpec>{
      {"anchorserve_requests_total", "counter", {"rpc", "code"}},
      {"anchorserve_requests_running", "gauge", {}},
      {"anchorserve_requests_waiting", "gauge", {}},
      {"anchorserve_queue_rejections_total", "counter", {}},
      {"anchorserve_prompt_tokens_total", "counter", {}},
      {"anchorserve_generation_tokens_total", "counter", {}},
      {"anchorserve_cancellations_total", "counter", {"reason"}},
      {"anchorserve_preemptions_total", "counter", {}},
      {"anchorserve_engine_steps_total", "counter", {}},
      {"anchorserve_time_to_first_token_seconds", "histogram", {}},
      {"anchorserve_inter_token_latency_seconds", "histogram", {}},
      {"anchorserve_request_duration_seconds", "histogram", {}},
      {"anchorserve_queue_time_seconds", "histogram", {}},
      {"anchorserve_kv_pool_usage_ratio", "gauge", {}},
      {"anchorserve_kv_pool_blocks", "gauge", {"state"}},
      {"anchorserve_sessions", "gauge", {"tier"}},
      {"anchorserve_session_bytes", "gauge", {"tier"}},
      {"anchorserve_turn_cache_reduction_ratio", "histogram", {}},
      {"anchorserve_session_cache_reduction_ratio", "histogram", {}},
      {"anchorserve_kv_kept_bytes", "gauge", {}},
      {"anchorserve_kv_full_equivalent_bytes", "gauge", {}},
      {"anchorserve_kv_saved_bytes_total", "counter", {}},
      {"anchorserve_anchors_per_turn", "histogram", {}},
      {"anchorserve_build_info", "gauge", {"version", "device", "dtype"}},
      {"anchorserve_model_info", "gauge", {"anchor_type"}},
      {"anchorserve_up", "gauge", {}},
      {"anchorserve_draining", "gauge", {}},
      {"anchorserve_process_resident_memory_bytes", "gauge", {}},
      {"anchorserve_process_open_fds", "gauge", {}},
  };
  return *families;
}

// The values each bounded label may take.
const std::map<std::string, std::set<std::string>>& AllowedLabelValues() {
  static const auto* allowed = new std::map<std::string, std::set<std::string>>{
      {"rpc",
       {"Generate", "CreateSession", "GetSession", "ListSessions", "DeleteSession", "ExportSession",
        "ImportSession", "GetModelInfo", "Tokenize"}},
      {"code",
       {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED"}},
      {"reason", {"client", "deadline", "drain"}},
      {"state", {"used", "free"}},
      {"tier", {"resident", "host", "disk", "empty"}},
      {"anchor_type", {"ac", "ep", "custom", "none", "unknown"}},
  };
  return *allowed;
}

enum class Source { kSerialize, kScrape };

// Checks `text` holds exactly the documented families, each with its type, at least one series,
// and the documented label names. A scrape carries nothing else either (`source` names which
// of the two the text came from, for the failure messages).
void ExpectDocumentedFamilies(absl::string_view text, Source source) {
  const Exposition e = MustParse(text);
  std::set<std::string> documented;
  for (const FamilySpec& f : DocumentedFamilies()) {
    documented.insert(f.name);
    SCOPED_TRACE(f.name);
    auto type = e.types.find(f.name);
    ASSERT_NE(type, e.types.end()) << "family missing";
    EXPECT_EQ(type->second, f.type);
    const std::vector<Sample> samples = e.Of(f.name);
    EXPECT_FALSE(samples.empty()) << "family has no series";
    for (const Sample& s : samples) {
      std::set<std::string> names;
      for (const auto& [k, v] : s.labels) {
        if (k != "le") names.insert(k);
      }
      EXPECT_EQ(names, f.labels) << s.name;
      if (f.type == "histogram" && absl::EndsWith(s.name, "_bucket")) {
        EXPECT_EQ(s.labels.count("le"), 1u) << s.name;
      }
    }
  }
  for (const auto& [name, type] : e.types) {
    if (documented.count(name) != 0) continue;
    ADD_FAILURE() << "undocumented family " << name << " (" << type << ") in the "
                  << (source == Source::kScrape ? "scrape" : "serialization");
  }
}

// The samples of the `anchorserve_` families, for comparing a scrape with Serialize().
std::vector<std::string> OwnSamples(const Exposition& e) {
  std::vector<std::string> out;
  for (const Sample& s : e.samples) {
    if (!absl::StartsWith(s.name, "anchorserve_")) continue;
    std::string line = s.name;
    for (const auto& [k, v] : s.labels) absl::StrAppend(&line, ",", k, "=", v);
    absl::StrAppend(&line, " ", s.value);
    out.push_back(std::move(line));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.0 client (the server closes the connection after the response).

struct HttpResponse {
  int status = 0;
  std::string headers;
  std::string body;
};

absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& target) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket");
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to 127.0.0.1:", port));
  }
  const std::string request =
      absl::StrCat("GET ", target, " HTTP/1.0\r\nHost: 127.0.0.1:", port, "\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError("send");
    }
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buffer[8192];
  for (;;) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0) {
      close(fd);
      return absl::DeadlineExceededError("recv");
    }
    if (n == 0) break;
    raw.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos || !absl::StartsWith(raw, "HTTP/1.")) {
    return absl::DataLossError(absl::StrCat("not an HTTP response: ", raw.substr(0, 200)));
  }
  HttpResponse response;
  response.headers = raw.substr(0, header_end);
  response.body = raw.substr(header_end + 4);
  const size_t space = raw.find(' ');
  if (space == std::string::npos || !absl::SimpleAtoi(raw.substr(space + 1, 3), &response.status)) {
    return absl::DataLossError("status line");
  }
  return response;
}

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// An executable on PATH (or an absolute path that exists); empty when absent.
std::string FindExecutable(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// A scratch directory removed at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::path(testing::TempDir()) / "metrics_test_XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~ScratchDir() {
    if (!path_.empty()) anchorserve::RemoveTree(path_);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Records one of everything, so that histograms and counters hold data.
void RecordSomeTraffic(Metrics& m) {
  m.RecordRequest(Rpc::kGenerate, absl::StatusCode::kOk);
  m.RecordRequest(Rpc::kGenerate, absl::StatusCode::kResourceExhausted);
  m.RecordQueueRejection();
  m.RecordCancellation(CancellationReason::kClient);
  m.AddPromptTokens(120);
  m.AddGenerationTokens(30);
  m.ObserveTimeToFirstToken(0.12);
  m.ObserveInterTokenLatency(0.02);
  m.ObserveRequestDuration(0.9);
  m.ObserveQueueTime(0.003);
  m.ObserveTurn({.in_session = true,
                 .before = {},
                 .after = {.kept_tokens = 7, .full_tokens = 100, .anchors = 5},
                 .bytes_per_token = 4096});
  m.SetKvFootprint(7 * 4096, 100 * 4096);
  m.SetQueue(1, 2);
  m.SetKvPool(10, 100);
  m.SetSessions({.resident = {1, 28672}, .host = {2, 4096}, .disk = {0, 0}, .empty_sessions = 1});
  m.SyncEngineTotals({.preemptions = 1, .steps = 40});
  m.SetServing(true);
  ASSERT_TRUE(m.SetBuildInfo({"0.1.0", "cpu", "float32"}).ok());
  ASSERT_TRUE(m.SetModelInfo("ac").ok());
}

// ---------------------------------------------------------------------------------------------

TEST(MetricsTest, EveryDocumentedFamilyIsRegisteredWithItsType) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  EXPECT_EQ(m->port(), 0);
  ExpectDocumentedFamilies(m->Serialize(), Source::kSerialize);
  // And still after traffic (no family or label appears only later).
  RecordSomeTraffic(*m);
  ExpectDocumentedFamilies(m->Serialize(), Source::kSerialize);
}

TEST(MetricsTest, DocsDescribeEveryFamily) {
  const fs::path doc = fs::path(ANCHORSERVE_TEST_DATA_DIR) / ".." / ".." / "docs" / "METRICS.md";
  const std::string text = ReadFile(doc);
  ASSERT_FALSE(text.empty()) << doc;
  for (const FamilySpec& f : DocumentedFamilies()) {
    EXPECT_TRUE(absl::StrContains(text, absl::StrCat("`", f.name, "`"))) << f.name;
  }
}

TEST(MetricsTest, InitialValues) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  const Exposition e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_up"), 0);
  EXPECT_EQ(e.Value("anchorserve_draining"), 0);
  EXPECT_EQ(e.Value("anchorserve_model_info", {{"anchor_type", "unknown"}}), 1);
  EXPECT_EQ(e.Of("anchorserve_build_info").size(), 1u);
  // Every (rpc, code) pair and every reason exists at 0, so increase() sees the first event.
  EXPECT_EQ(e.Of("anchorserve_requests_total").size(), 9u * 17u);
  EXPECT_EQ(e.Value("anchorserve_requests_total", {{"rpc", "Tokenize"}, {"code", "DATA_LOSS"}}), 0);
  EXPECT_EQ(e.Value("anchorserve_cancellations_total", {{"reason", "drain"}}), 0);
}

TEST(MetricsTest, CountersAndGauges) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  m->RecordRequest(Rpc::kGenerate, absl::StatusCode::kOk);
  m->RecordRequest(Rpc::kGenerate, absl::StatusCode::kOk);
  m->RecordRequest(Rpc::kListSessions, absl::StatusCode::kUnauthenticated);
  m->RecordRequest(Rpc::kTokenize, static_cast<absl::StatusCode>(99));  // -> UNKNOWN
  m->RecordRequest(static_cast<Rpc>(42), absl::StatusCode::kOk);        // ignored
  m->RecordQueueRejection();
  m->RecordCancellation(CancellationReason::kDeadline);
  m->RecordCancellation(CancellationReason::kDrain);
  m->RecordCancellation(CancellationReason::kDrain);
  m->AddPromptTokens(100);
  m->AddPromptTokens(-5);  // ignored
  m->AddGenerationTokens(7);
  m->AddGenerationTokens(3);
  m->SetQueue(3, 11);
  m->SetKvPool(30, 120);
  m->SetKvFootprint(1000, 25000);
  m->SetSessions(
      {.resident = {2, 2048}, .host = {3, 3072}, .disk = {4, 4096}, .empty_sessions = 5});
  m->SetServing(true);
  m->SetDraining(true);

  Exposition e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_requests_total", {{"rpc", "Generate"}, {"code", "OK"}}), 2);
  EXPECT_EQ(
      e.Value("anchorserve_requests_total", {{"rpc", "ListSessions"}, {"code", "UNAUTHENTICATED"}}),
      1);
  EXPECT_EQ(e.Value("anchorserve_requests_total", {{"rpc", "Tokenize"}, {"code", "UNKNOWN"}}), 1);
  double total = 0;
  for (const Sample& s : e.Of("anchorserve_requests_total")) total += s.value;
  EXPECT_EQ(total, 4);
  EXPECT_EQ(e.Value("anchorserve_queue_rejections_total"), 1);
  EXPECT_EQ(e.Value("anchorserve_cancellations_total", {{"reason", "client"}}), 0);
  EXPECT_EQ(e.Value("anchorserve_cancellations_total", {{"reason", "deadline"}}), 1);
  EXPECT_EQ(e.Value("anchorserve_cancellations_total", {{"reason", "drain"}}), 2);
  EXPECT_EQ(e.Value("anchorserve_prompt_tokens_total"), 100);
  EXPECT_EQ(e.Value("anchorserve_generation_tokens_total"), 10);
  EXPECT_EQ(e.Value("anchorserve_requests_running"), 3);
  EXPECT_EQ(e.Value("anchorserve_requests_waiting"), 11);
  EXPECT_DOUBLE_EQ(e.Value("anchorserve_kv_pool_usage_ratio"), 0.25);
  EXPECT_EQ(e.Value("anchorserve_kv_pool_blocks", {{"state", "used"}}), 30);
  EXPECT_EQ(e.Value("anchorserve_kv_pool_blocks", {{"state", "free"}}), 90);
  EXPECT_EQ(e.Value("anchorserve_kv_kept_bytes"), 1000);
  EXPECT_EQ(e.Value("anchorserve_kv_full_equivalent_bytes"), 25000);
  EXPECT_EQ(e.Value("anchorserve_sessions", {{"tier", "resident"}}), 2);
  EXPECT_EQ(e.Value("anchorserve_sessions", {{"tier", "host"}}), 3);
  EXPECT_EQ(e.Value("anchorserve_sessions", {{"tier", "disk"}}), 4);
  EXPECT_EQ(e.Value("anchorserve_sessions", {{"tier", "empty"}}), 5);
  EXPECT_EQ(e.Value("anchorserve_session_bytes", {{"tier", "disk"}}), 4096);
  EXPECT_EQ(e.Value("anchorserve_session_bytes", {{"tier", "empty"}}), 0);
  EXPECT_EQ(e.Value("anchorserve_up"), 1);
  EXPECT_EQ(e.Value("anchorserve_draining"), 1);

  m->SetKvPool(0, 0);  // no pool yet: ratio 0, not NaN
  e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_kv_pool_usage_ratio"), 0);
}

TEST(MetricsTest, ProcessStatsFromProc) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  Exposition e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_process_resident_memory_bytes"), 0);
  EXPECT_EQ(e.Value("anchorserve_process_open_fds"), 0);

  absl::StatusOr<ProcessStats> before = ReadProcessStats();
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_GT(before->resident_bytes, 1 << 20);  // a gtest binary with gRPC linked in
  EXPECT_GE(before->open_fds, 3);              // at least stdin, stdout, stderr
  // Touching 64 MiB raises the RSS by about that much; opening a file adds one descriptor.
  std::vector<char> block(64 << 20, 1);
  std::FILE* file = std::fopen("/proc/self/statm", "r");
  ASSERT_NE(file, nullptr);
  absl::StatusOr<ProcessStats> after = ReadProcessStats();
  std::fclose(file);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GE(after->resident_bytes - before->resident_bytes, 60 << 20) << block[block.size() / 2];
  EXPECT_EQ(after->open_fds, before->open_fds + 1);

  m->SetProcess(*after);
  e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_process_resident_memory_bytes"),
            static_cast<double>(after->resident_bytes));
  EXPECT_EQ(e.Value("anchorserve_process_open_fds"), static_cast<double>(after->open_fds));
}

TEST(MetricsTest, LatencyHistogramsIgnoreInvalidSamples) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  m->ObserveTimeToFirstToken(0.3);
  m->ObserveTimeToFirstToken(-1);
  m->ObserveTimeToFirstToken(std::nan(""));
  m->ObserveInterTokenLatency(0.012);
  m->ObserveInterTokenLatency(INFINITY);
  m->ObserveRequestDuration(4);
  m->ObserveQueueTime(0);
  const Exposition e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_time_to_first_token_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(e.Value("anchorserve_time_to_first_token_seconds_sum"), 0.3);
  EXPECT_EQ(e.Value("anchorserve_time_to_first_token_seconds_bucket", {{"le", "0.2"}}), 0);
  EXPECT_EQ(e.Value("anchorserve_time_to_first_token_seconds_bucket", {{"le", "0.3"}}), 1);
  EXPECT_EQ(e.Value("anchorserve_inter_token_latency_seconds_count"), 1);
  EXPECT_EQ(e.Value("anchorserve_inter_token_latency_seconds_bucket", {{"le", "0.015"}}), 1);
  EXPECT_EQ(e.Value("anchorserve_inter_token_latency_seconds_bucket", {{"le", "0.01"}}), 0);
  EXPECT_EQ(e.Value("anchorserve_request_duration_seconds_bucket", {{"le", "5"}}), 1);
  EXPECT_EQ(e.Value("anchorserve_queue_time_seconds_bucket", {{"le", "0.001"}}), 1);
}

TEST(MetricsTest, ObserveTurnRecordsTurnAndSessionReduction) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  constexpr int64_t kBytesPerToken = 1024;
  // Turn 1 of a session: 100 tokens, 7 kept (5 anchors + a 2-token tail): C-down 0.93.
  const KvTokens t1{.kept_tokens = 7, .full_tokens = 100, .anchors = 5};
  m->ObserveTurn(
      {.in_session = true, .before = {}, .after = t1, .bytes_per_token = kBytesPerToken});
  // Turn 2: 200 more tokens, 3 more kept: turn C-down 0.985, session 1 - 10/300 = 0.9667.
  const KvTokens t2{.kept_tokens = 10, .full_tokens = 300, .anchors = 15};
  m->ObserveTurn(
      {.in_session = true, .before = t1, .after = t2, .bytes_per_token = kBytesPerToken});
  // A turn that freed more than it kept (its anchor reduced the previous tail): clamped to 1.
  const KvTokens t3{.kept_tokens = 9, .full_tokens = 301, .anchors = 16};
  m->ObserveTurn(
      {.in_session = true, .before = t2, .after = t3, .bytes_per_token = kBytesPerToken});
  // A turn that added nothing (e.g. max_tokens reached on an empty prompt) is not observed.
  m->ObserveTurn(
      {.in_session = true, .before = t3, .after = t3, .bytes_per_token = kBytesPerToken});
  // A one-shot request in full mode: C-down 0, not a session observation.
  m->ObserveTurn({.in_session = false,
                  .before = {},
                  .after = {.kept_tokens = 50, .full_tokens = 50, .anchors = 0},
                  .bytes_per_token = kBytesPerToken});

  const Exposition e = MustParse(m->Serialize());
  const std::string turn = "anchorserve_turn_cache_reduction_ratio";
  EXPECT_EQ(e.Value(turn + "_count"), 4);
  EXPECT_EQ(e.Value(turn + "_bucket", {{"le", "0"}}), 1);  // the full-mode request
  EXPECT_EQ(e.Value(turn + "_bucket", {{"le", "0.9"}}), 1);
  EXPECT_EQ(e.Value(turn + "_bucket", {{"le", "0.95"}}), 2);  // + 0.93
  EXPECT_EQ(e.Value(turn + "_bucket", {{"le", "0.98"}}), 2);
  EXPECT_EQ(e.Value(turn + "_bucket", {{"le", "0.99"}}), 3);  // + 0.985
  EXPECT_EQ(e.Value(turn + "_bucket", {{"le", "0.995"}}), 3);
  EXPECT_EQ(e.Value(turn + "_bucket", {{"le", "1"}}), 4);  // + the clamped turn
  EXPECT_NEAR(e.Value(turn + "_sum"), 0.93 + 0.985 + 1.0, 1e-9);

  const std::string session = "anchorserve_session_cache_reduction_ratio";
  EXPECT_EQ(e.Value(session + "_count"), 3);
  EXPECT_EQ(e.Value(session + "_bucket", {{"le", "0.95"}}), 1);  // 0.93
  EXPECT_EQ(e.Value(session + "_bucket", {{"le", "0.97"}}), 2);  // + 0.9667
  EXPECT_EQ(e.Value(session + "_bucket", {{"le", "0.98"}}), 3);  // + 0.9701
  EXPECT_NEAR(e.Value(session + "_sum"), 0.93 + (1 - 10.0 / 300) + (1 - 9.0 / 301), 1e-9);

  const std::string anchors = "anchorserve_anchors_per_turn";
  EXPECT_EQ(e.Value(anchors + "_count"), 4);
  EXPECT_EQ(e.Value(anchors + "_sum"), 5 + 10 + 1 + 0);
  EXPECT_EQ(e.Value(anchors + "_bucket", {{"le", "0"}}), 1);
  EXPECT_EQ(e.Value(anchors + "_bucket", {{"le", "1"}}), 2);
  EXPECT_EQ(e.Value(anchors + "_bucket", {{"le", "8"}}), 3);
  EXPECT_EQ(e.Value(anchors + "_bucket", {{"le", "16"}}), 4);

  // Saved: (100 - 7) + (200 - 3) + (1 + 1) tokens; the full-mode request saved nothing.
  EXPECT_EQ(e.Value("anchorserve_kv_saved_bytes_total"), (93 + 197 + 2) * kBytesPerToken);
}

TEST(MetricsTest, SyncEngineTotalsFollowsCumulativeCountsAndResets) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  m->SyncEngineTotals({.preemptions = 2, .steps = 100});
  m->SyncEngineTotals({.preemptions = 2, .steps = 150});
  Exposition e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_preemptions_total"), 2);
  EXPECT_EQ(e.Value("anchorserve_engine_steps_total"), 150);
  // A new engine starts from zero: its totals are added, the counter never goes down.
  m->SyncEngineTotals({.preemptions = 1, .steps = 10});
  e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_preemptions_total"), 3);
  EXPECT_EQ(e.Value("anchorserve_engine_steps_total"), 160);
}

TEST(MetricsTest, InfoMetricsKeepOneSeries) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  ASSERT_TRUE(m->SetBuildInfo({"0.1.0", "cuda", "bfloat16"}).ok());
  ASSERT_TRUE(m->SetBuildInfo({"0.1.0", "cuda", "bfloat16"}).ok());  // same labels: no-op
  ASSERT_TRUE(m->SetModelInfo("ep").ok());
  ASSERT_TRUE(m->SetModelInfo("ac").ok());
  EXPECT_EQ(m->SetBuildInfo({"0.1.0", "cuda", "bf 16"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->SetBuildInfo({"", "cpu", "float32"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->SetBuildInfo({"1\"}", "cpu", "float32"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->SetModelInfo("session-1234").code(), absl::StatusCode::kInvalidArgument);

  const Exposition e = MustParse(m->Serialize());
  ASSERT_EQ(e.Of("anchorserve_build_info").size(), 1u);
  EXPECT_EQ(e.Value("anchorserve_build_info",
                    {{"version", "0.1.0"}, {"device", "cuda"}, {"dtype", "bfloat16"}}),
            1);
  ASSERT_EQ(e.Of("anchorserve_model_info").size(), 1u);
  EXPECT_EQ(e.Value("anchorserve_model_info", {{"anchor_type", "ac"}}), 1);
}

// However many sessions, tenants and requests pass through, the series set is the one that
// existed at Create (fixed label sets), and no identifier of a user shows up anywhere.
TEST(MetricsTest, NoLabelCarriesSessionTenantOrRequestIds) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  ASSERT_TRUE(m->SetBuildInfo({"0.1.0", "cpu", "float32"}).ok());
  ASSERT_TRUE(m->SetModelInfo("ac").ok());
  auto series_of = [](const Exposition& e) {
    std::set<std::string> series;
    for (const Sample& s : e.samples) {
      std::string key = s.name;
      for (const auto& [k, v] : s.labels) absl::StrAppend(&key, ",", k, "=", v);
      series.insert(key);
    }
    return series;
  };
  const std::set<std::string> before = series_of(MustParse(m->Serialize()));

  // What the server does per request of 50 sessions of 5 tenants, 4 turns each.
  for (int session = 0; session < 50; ++session) {
    const std::string session_id = absl::StrCat("sess-7f3a", session);  // never passed on
    const std::string tenant = absl::StrCat("tenant-acme", session % 5);
    KvTokens kv;
    for (int turn = 0; turn < 4; ++turn) {
      KvTokens next{.kept_tokens = kv.kept_tokens + 3,
                    .full_tokens = kv.full_tokens + 80 + session,
                    .anchors = kv.anchors + 2};
      m->RecordRequest(Rpc::kGenerate, turn == 3 && session % 7 == 0
                                           ? absl::StatusCode::kDeadlineExceeded
                                           : absl::StatusCode::kOk);
      m->AddPromptTokens(40);
      m->AddGenerationTokens(40 + session);
      m->ObserveTimeToFirstToken(0.01 * (turn + 1));
      m->ObserveTurn({.in_session = true, .before = kv, .after = next, .bytes_per_token = 512});
      kv = next;
    }
    m->RecordRequest(Rpc::kGetSession,
                     session % 3 == 0 ? absl::StatusCode::kNotFound : absl::StatusCode::kOk);
    if (session % 7 == 0) m->RecordCancellation(CancellationReason::kDeadline);
    m->SetSessions({.resident = {session + 1, 1024 * (session + 1)},
                    .host = {},
                    .disk = {},
                    .empty_sessions = 0});
  }

  const std::string text = m->Serialize();
  const Exposition after = MustParse(text);
  EXPECT_EQ(series_of(after), before) << "the set of series changed with traffic";
  EXPECT_FALSE(absl::StrContains(text, "sess-")) << "a session id reached the exposition";
  EXPECT_FALSE(absl::StrContains(text, "tenant-")) << "a tenant reached the exposition";

  const auto& allowed = AllowedLabelValues();
  const std::set<std::string> info_labels = {"version", "device", "dtype"};
  for (const Sample& s : after.samples) {
    for (const auto& [name, value] : s.labels) {
      if (name == "le") {
        double bound = 0;
        EXPECT_TRUE(value == "+Inf" || absl::SimpleAtod(value, &bound)) << s.name << " " << value;
      } else if (info_labels.count(name) != 0) {
        EXPECT_EQ(s.name, "anchorserve_build_info");
      } else {
        auto it = allowed.find(name);
        ASSERT_NE(it, allowed.end()) << "unexpected label " << name << " on " << s.name;
        EXPECT_EQ(it->second.count(value), 1u) << s.name << " " << name << "=" << value;
      }
    }
  }
  EXPECT_EQ(after.Value("anchorserve_requests_total", {{"rpc", "Generate"}, {"code", "OK"}}),
            200 - 8);
}

TEST(MetricsTest, ConcurrentUpdatesAreAllCounted) {
  std::unique_ptr<Metrics> m = Metrics::CreateRegistryOnly();
  constexpr int kThreads = 4;
  constexpr int kPerThread = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&m, t] {
      for (int i = 0; i < kPerThread; ++i) {
        m->RecordRequest(Rpc::kGenerate, absl::StatusCode::kOk);
        m->AddGenerationTokens(2);
        m->ObserveInterTokenLatency(0.005);
        m->SyncEngineTotals({.preemptions = 0, .steps = i});
        if (i % 500 == 0) {
          (void)m->Serialize();
          ASSERT_TRUE(m->SetModelInfo(t % 2 == 0 ? "ac" : "ep").ok());
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const Exposition e = MustParse(m->Serialize());
  EXPECT_EQ(e.Value("anchorserve_requests_total", {{"rpc", "Generate"}, {"code", "OK"}}),
            kThreads * kPerThread);
  EXPECT_EQ(e.Value("anchorserve_generation_tokens_total"), 2 * kThreads * kPerThread);
  EXPECT_EQ(e.Value("anchorserve_inter_token_latency_seconds_count"), kThreads * kPerThread);
  EXPECT_EQ(e.Of("anchorserve_model_info").size(), 1u);
}

// ---------------------------------------------------------------------------------------------
// The HTTP endpoint.

// One endpoint shared by the tests below.
class MetricsEndpointTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<Metrics>> m = Metrics::Create("127.0.0.1:0");
    ASSERT_TRUE(m.ok()) << m.status();
    metrics_ = std::move(m).value().release();
    RecordSomeTraffic(*metrics_);
  }
  static void TearDownTestSuite() {
    delete metrics_;
    metrics_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(metrics_, nullptr); }

  static Metrics* metrics_;
};
Metrics* MetricsEndpointTest::metrics_ = nullptr;

TEST(MetricsCreateTest, RejectsBadAddresses) {
  for (const std::string address : {"", "9090", ":9090", "127.0.0.1:", "127.0.0.1:x90",
                                    "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:123456"}) {
    absl::StatusOr<std::unique_ptr<Metrics>> m = Metrics::Create(address);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << "\"" << address << "\"";
  }
}

TEST_F(MetricsEndpointTest, CreateReportsAPortInUse) {
  const std::string taken = absl::StrCat("127.0.0.1:", metrics_->port());
  absl::StatusOr<std::unique_ptr<Metrics>> second = Metrics::Create(taken);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), taken)) << second.status();
}

TEST_F(MetricsEndpointTest, ServesTheRegistryAtSlashMetrics) {
  Metrics* m = metrics_;
  ASSERT_GT(m->port(), 0);

  absl::StatusOr<HttpResponse> scrape = HttpGet(m->port(), "/metrics");
  ASSERT_TRUE(scrape.ok()) << scrape.status();
  EXPECT_EQ(scrape->status, 200) << scrape->headers;
  EXPECT_TRUE(absl::StrContains(scrape->headers, "text/plain")) << scrape->headers;
  ExpectDocumentedFamilies(scrape->body, Source::kScrape);
  // Nothing changed between the scrape and Serialize(): the same families and samples.
  const Exposition scraped = MustParse(scrape->body);
  const Exposition serialized = MustParse(m->Serialize());
  for (const auto& [name, type] : serialized.types) {
    auto it = scraped.types.find(name);
    ASSERT_NE(it, scraped.types.end()) << name;
    EXPECT_EQ(it->second, type) << name;
  }
  EXPECT_EQ(OwnSamples(scraped), OwnSamples(serialized));

  absl::StatusOr<HttpResponse> other = HttpGet(m->port(), "/not-metrics");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->status, 404);
  absl::StatusOr<HttpResponse> query = HttpGet(m->port(), "/metrics?x=1");
  ASSERT_TRUE(query.ok()) << query.status();
  EXPECT_EQ(query->status, 200);
}

// The endpoint's own thread (civetweb, prometheus-cpp's Exposer, could not start one with the
// static TLS of libtorch and OpenBLAS in the process): concurrent scrapes all succeed, a
// silent client delays them by at most its 2 s read timeout (HttpGet waits 5 s), other methods
// are refused, and destroying the endpoint is immediate.
TEST(MetricsEndpointLifecycleTest, ConcurrentScrapesSilentClientsAndStop) {
  absl::StatusOr<std::unique_ptr<Metrics>> created = Metrics::Create("127.0.0.1:0");
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Metrics> m = *std::move(created);
  const int port = m->port();
  // A client that connects and never sends: the endpoint drops it after 2 s.
  const int silent = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(silent, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::vector<std::thread> scrapers;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    scrapers.emplace_back([&] {
      absl::StatusOr<HttpResponse> r = HttpGet(port, "/metrics");
      if (r.ok() && r->status == 200 && absl::StrContains(r->body, "anchorserve_up")) ++ok;
    });
  }
  for (std::thread& t : scrapers) t.join();
  EXPECT_EQ(ok.load(), 8);
  close(silent);

  const int post = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(post, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string request = "POST /metrics HTTP/1.0\r\n\r\n";
  ASSERT_EQ(send(post, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  char reply[256] = {};
  ASSERT_GT(recv(post, reply, sizeof(reply) - 1, 0), 0);
  EXPECT_TRUE(absl::StartsWith(reply, "HTTP/1.1 405")) << reply;
  close(post);

  const auto start = std::chrono::steady_clock::now();
  m.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
  EXPECT_FALSE(HttpGet(port, "/metrics").ok()) << "still serving after destruction";
}

TEST_F(MetricsEndpointTest, ScrapePassesPromtoolCheckMetrics) {
  const std::string promtool = FindExecutable("promtool");
  if (promtool.empty()) GTEST_SKIP() << "promtool not found (Debian package prometheus)";
  Metrics* m = metrics_;
  absl::StatusOr<HttpResponse> scrape = HttpGet(m->port(), "/metrics");
  ASSERT_TRUE(scrape.ok()) << scrape.status();

  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const fs::path input = dir.path() / "metrics.txt";
  std::ofstream(input) << scrape->body;
  const std::string command = absl::StrCat(promtool, " check metrics < ", input.string(), " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  EXPECT_EQ(output, "") << "promtool lint findings";
}

// A Prometheus server process on 127.0.0.1, stopped (SIGTERM, then SIGKILL) when destroyed.
class PrometheusServer {
 public:
  ~PrometheusServer() { Stop(); }

  absl::Status Start(const std::string& binary, const fs::path& dir, int web_port,
                     int target_port) {
    const fs::path config = dir / "prometheus.yml";
    std::ofstream(config) << "global:\n"
                          << "  scrape_interval: 1s\n"
                          << "  scrape_timeout: 1s\n"
                          << "  evaluation_interval: 1s\n"
                          << "scrape_configs:\n"
                          << "  - job_name: anchorserve\n"
                          << "    static_configs:\n"
                          << "      - targets: ['127.0.0.1:" << target_port << "']\n";
    log_ = dir / "prometheus.log";
    std::vector<std::string> args = {
        binary,
        absl::StrCat("--config.file=", config.string()),
        absl::StrCat("--storage.tsdb.path=", (dir / "tsdb").string()),
        absl::StrCat("--web.listen-address=127.0.0.1:", web_port),
        "--log.level=warn",
    };
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    const int rc = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat("posix_spawn ", binary, ": ", rc));
    }
    return absl::OkStatus();
  }

  bool Exited() {
    if (pid_ <= 0) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    return false;
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 100; ++i) {  // up to 5 s
      if (Exited()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  std::string LogTail() const {
    const std::string log = ReadFile(log_);
    return log.size() > 3000 ? log.substr(log.size() - 3000) : log;
  }

 private:
  pid_t pid_ = -1;
  fs::path log_;
};

TEST_F(MetricsEndpointTest, PrometheusServerScrapesTheEndpoint) {
  const std::string prometheus = FindExecutable("prometheus");
  if (prometheus.empty()) GTEST_SKIP() << "prometheus not found (Debian package prometheus)";
  Metrics* m = metrics_;

  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const int web_port = FreeLoopbackPort();
  ASSERT_GT(web_port, 0);
  PrometheusServer server;
  ASSERT_TRUE(server.Start(prometheus, dir.path(), web_port, m->port()).ok());

  // Up: the target's last scrape succeeded. Then the samples are queryable.
  const std::string scrape_url =
      absl::StrCat("\"scrapeUrl\":\"http://127.0.0.1:", m->port(), "/metrics\"");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::string last_targets;
  bool up = false;
  while (!up && std::chrono::steady_clock::now() < deadline && !server.Exited()) {
    absl::StatusOr<HttpResponse> targets = HttpGet(web_port, "/api/v1/targets?state=active");
    if (targets.ok() && targets->status == 200) {
      last_targets = targets->body;
      up = absl::StrContains(last_targets, scrape_url) &&
           absl::StrContains(last_targets, "\"health\":\"up\"") &&
           absl::StrContains(last_targets, "\"lastError\":\"\"");
    }
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_TRUE(up) << "targets: " << last_targets << "\nprometheus log:\n" << server.LogTail();

  bool queried = false;
  std::string last_query;
  while (!queried && std::chrono::steady_clock::now() < deadline) {
    absl::StatusOr<HttpResponse> query =
        HttpGet(web_port, "/api/v1/query?query=anchorserve_model_info");
    if (query.ok() && query->status == 200) {
      last_query = query->body;
      queried = absl::StrContains(last_query, "\"anchor_type\":\"ac\"");
    }
    if (!queried) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(queried) << last_query;
  server.Stop();
}

}  // namespace
}  // namespace anchorserve::server
