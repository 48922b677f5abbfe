// anchorctl bench: flags -> LoadOptions, then the report: a human summary on stderr (unless
// --json) and the JSON summary on stdout, always, at the end.
#include <cstdio>

#include "client/bench_report.h"
#include "client/bench_text.h"
#include "client/commands.h"
#include "client/interrupts.h"
#include "client/load_generator.h"
#include "client/output_format.h"

namespace anchorserve::client {
namespace {

constexpr char kCommand[] = "bench";
constexpr char kSynopsis[] =
    "bench [--concurrency C] [--rate R] [--requests N] [--duration S] [--turns T]\n"
    "      [--max-tokens N] [--text FILE] [sampling flags] [--json] [--no-progress]\n"
    "\n"
    "C simulated users each run sessions of T turns (2-4 sentences of real text per turn:\n"
    "FILE, else ../shared/data/heldout/gutenberg_valid.txt, else a built-in paragraph).\n"
    "Closed loop unless --rate R > 0 (Poisson arrivals, R requests/s, at most C in flight).\n"
    "Stops after N Generate calls (default 64) or S seconds, whichever comes first. Reports\n"
    "TTFT, inter-token and end-to-end latency (p50/p99), throughput, KV per session and\n"
    "errors by status; the JSON summary goes to stdout. Exit 0 when no request failed, else\n"
    "the most frequent error's status code; 130 after Ctrl-C.";

constexpr int64_t kDefaultRequests = 64;

}  // namespace

int BenchCommand(const std::vector<std::string>& args) {
  FlagParser parser;
  ConnectionFlags connection_flags;
  AddConnectionFlags(parser, &connection_flags);
  LoadOptions options;
  options.generation.max_tokens = 32;
  AddGenerationFlags(parser, &options.generation);
  std::optional<int64_t> requests;
  int64_t text_seed = 1;
  std::string text_file;
  bool json = false;
  bool no_progress = false;
  parser.AddInt("concurrency", &options.concurrency, 1, 4096,
                "simulated users, the most requests in flight (default 4)");
  parser.AddDouble("rate", &options.rate, 0, 1e6,
                   "requests per second, Poisson arrivals; 0 = closed loop (default)");
  parser.AddOptionalInt("requests", &requests, 1, int64_t{1} << 40,
                        "Generate calls in all (default 64, or unbounded with --duration)");
  parser.AddDouble("duration", &options.duration_s, 0, 1e7,
                   "stop starting requests after this many seconds (default: no limit)");
  parser.AddInt("turns", &options.turns, 1, 100000, "turns per session (default 4)");
  parser.AddString("text", &text_file, "text file for the prompts");
  parser.AddInt("text-seed", &text_seed, 0, int64_t{1} << 62,
                "seed of text positions, turn lengths and arrivals (default 1)");
  parser.AddBool("json", &json, "only the JSON summary (no human summary on stderr)");
  parser.AddBool("no-progress", &no_progress, "no progress bar on stderr");
  if (std::optional<int> exit = ParseCommandLine(kCommand, kSynopsis, parser, args)) return *exit;
  if (!parser.positionals().empty()) {
    return UsageError(kCommand, "unexpected argument \"" + parser.positionals()[0] + "\"");
  }
  options.requests = requests;
  if (!requests.has_value() && options.duration_s <= 0) options.requests = kDefaultRequests;
  options.seed = static_cast<uint64_t>(text_seed);
  options.progress = !no_progress;

  absl::StatusOr<BenchText> text = BenchText::Load(text_file);
  if (!text.ok()) return UsageError(kCommand, std::string(text.status().message()));
  int exit_code = 0;
  std::unique_ptr<Connection> connection = ConnectOrReport(kCommand, connection_flags, &exit_code);
  if (connection == nullptr) return exit_code;

  absl::StatusOr<LoadResult> result = RunLoad(*connection, *text, options);
  if (!result.ok()) return UsageError(kCommand, std::string(result.status().message()));
  if (!json) std::fputs(BenchSummaryText(result->summary).c_str(), stderr);
  std::printf("%s\n", (json ? JsonLine(result->summary) : JsonPretty(result->summary)).c_str());
  std::fflush(stdout);
  if (result->interrupted) return kExitInterrupted;
  return ExitCode(result->dominant_error);
}

}  // namespace anchorserve::client
