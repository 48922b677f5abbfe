// The load generator behind `anchorctl bench`: `concurrency` simulated users, each running
// multi-turn sessions (CreateSession, `turns` Generate calls of real text, DeleteSession) until
// the request budget or the duration is spent. Closed loop by default (a user sends its next
// turn when the previous one finished); with `rate` > 0 turns start on a Poisson schedule of
// that many requests per second, at most `concurrency` in flight, and a start that had to
// wait for a free user is reported as schedule lag.
#ifndef ANCHORSERVE_CLIENT_LOAD_GENERATOR_H_
#define ANCHORSERVE_CLIENT_LOAD_GENERATOR_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "client/bench_text.h"
#include "client/connection.h"
#include "client/generation_flags.h"

namespace anchorserve::client {

struct LoadOptions {
  int64_t concurrency = 4;          // simulated users = most requests in flight
  double rate = 0;                  // requests/s; 0 = closed loop
  std::optional<int64_t> requests;  // Generate calls in all; unset = until duration_s
  double duration_s = 0;            // 0 = no time bound (requests must then be set)
  int64_t turns = 4;                // turns per session
  GenerationFlags generation;       // per request; max_tokens defaults to 32 for bench
  uint64_t seed = 1;                // text positions and turn lengths
  bool progress = true;             // progress bar on stderr
};

struct LoadResult {
  nlohmann::ordered_json summary;  // BuildBenchSummary
  bool interrupted = false;
  // The most frequent error status of the run (ties: the lowest code); OK when none failed.
  absl::Status dominant_error;
};

// Runs the load on the calling thread plus `concurrency` workers and returns when every
// worker is done. Ctrl-C (through Interrupts) stops new requests and cancels those in flight;
// the summary then covers what ran. InvalidArgument for options that bound nothing; failures
// of individual calls are counted in the summary, never returned.
absl::StatusOr<LoadResult> RunLoad(const Connection& connection, const BenchText& text,
                                   const LoadOptions& options);

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_LOAD_GENERATOR_H_
