#include "client/load_generator.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/bench_report.h"
#include "client/generate_call.h"
#include "client/interrupts.h"

namespace anchorserve::client {
namespace {

constexpr absl::Duration kSleepSlice = absl::Milliseconds(20);
constexpr absl::Duration kErrorBackoff = absl::Milliseconds(50);

RequestSample ToSample(const StreamResult& result, double schedule_lag_ms) {
  RequestSample sample;
  sample.code = result.status.code();
  sample.cancelled_by_client = result.cancelled_by_client;
  if (result.time_to_first_token) {
    sample.ttft_ms = absl::ToDoubleMilliseconds(*result.time_to_first_token);
  }
  sample.itl_ms.reserve(result.inter_token_gaps.size());
  for (absl::Duration gap : result.inter_token_gaps) {
    sample.itl_ms.push_back(absl::ToDoubleMilliseconds(gap));
  }
  sample.e2e_ms = absl::ToDoubleMilliseconds(result.end_to_end);
  sample.schedule_lag_ms = schedule_lag_ms;
  if (result.usage) {
    sample.prompt_tokens = result.usage->prompt_tokens();
    sample.completion_tokens = result.usage->completion_tokens();
    sample.cached_tokens = result.usage->cached_tokens();
  } else {
    sample.completion_tokens = result.tokens_received;
  }
  return sample;
}

// One bench run: the workers, the shared budget and the samples.
class LoadRun {
 public:
  LoadRun(const Connection& connection, const BenchText& text, const LoadOptions& options)
      : connection_(connection), text_(text), options_(options) {}

  LoadResult Run() {
    start_ = absl::Now();
    end_by_ = options_.duration_s > 0 ? start_ + absl::Seconds(options_.duration_s)
                                      : absl::InfiniteFuture();
    {
      absl::MutexLock lock(&schedule_mu_);
      next_arrival_ = start_;
      arrival_rng_.seed(options_.seed);
    }
    for (int64_t i = 0; i < options_.concurrency; ++i) {
      calls_.push_back(std::make_unique<GenerateCall>(&connection_));
    }
    std::vector<std::thread> workers;
    {
      Interrupts::Scope on_interrupt(Interrupts::Install(), [this] { Stop(/*interrupted=*/true); });
      running_workers_ = options_.concurrency;
      for (int64_t i = 0; i < options_.concurrency; ++i) {
        workers.emplace_back([this, i] {
          Worker(i);
          --running_workers_;
        });
      }
      ShowProgressUntilDone();
      for (std::thread& worker : workers) worker.join();
    }
    const double elapsed_s = absl::ToDoubleSeconds(absl::Now() - start_);

    LoadResult result;
    result.interrupted = interrupted_;
    absl::MutexLock lock(&samples_mu_);
    BenchEcho echo;
    echo.server = connection_.server();
    echo.concurrency = options_.concurrency;
    echo.rate = options_.rate;
    echo.requests = options_.requests;
    echo.duration_s = options_.duration_s;
    echo.turns = options_.turns;
    echo.max_tokens = options_.generation.max_tokens;
    echo.mode = options_.generation.mode;
    echo.text_source = text_.source();
    result.summary = BuildBenchSummary(echo, requests_, sessions_, elapsed_s, interrupted_);
    std::map<absl::StatusCode, int64_t> errors;
    for (const RequestSample& r : requests_) {
      if (r.code != absl::StatusCode::kOk && !r.cancelled_by_client) ++errors[r.code];
    }
    int64_t most = 0;
    for (const auto& [code, count] : errors) {
      if (count > most) {
        most = count;
        result.dominant_error = absl::Status(code, "bench requests failed");
      }
    }
    return result;
  }

 private:
  void Stop(bool interrupted) {
    if (interrupted) interrupted_ = true;
    stop_ = true;
    for (const auto& call : calls_) call->Cancel();
  }

  // Takes up to `wanted` requests from the budget (a session reserves all its turns, so that N
  // requests make N / turns whole sessions); 0 when the run is over.
  int64_t ClaimRequests(int64_t wanted) {
    if (stop_ || absl::Now() >= end_by_) return 0;
    if (!options_.requests) return wanted;
    int64_t claimed = claimed_.load();
    for (;;) {
      const int64_t granted = std::clamp<int64_t>(*options_.requests - claimed, 0, wanted);
      if (granted == 0) return 0;
      if (claimed_.compare_exchange_weak(claimed, claimed + granted)) return granted;
    }
  }

  // Returns requests a session reserved but did not send (it failed early), so that another
  // session sends them and a run without a time bound makes exactly N requests.
  void ReleaseRequests(int64_t unused) {
    if (options_.requests && unused > 0) claimed_ -= unused;
  }

  bool TimeLeft() const { return !stop_ && absl::Now() < end_by_; }

  absl::Time NextArrival() {
    absl::MutexLock lock(&schedule_mu_);
    const absl::Time at = next_arrival_;
    std::exponential_distribution<double> gap(options_.rate);
    next_arrival_ += absl::Seconds(gap(arrival_rng_));
    return at;
  }

  // Sleeps in slices so that a stop is noticed; false when stopped first.
  bool SleepUntil(absl::Time at) {
    for (;;) {
      if (stop_) return false;
      const absl::Duration left = at - absl::Now();
      if (left <= absl::ZeroDuration()) return true;
      absl::SleepFor(std::min(left, kSleepSlice));
    }
  }

  void Record(const RequestSample& sample) {
    absl::MutexLock lock(&samples_mu_);
    requests_.push_back(sample);
    ++done_;
    if (sample.code != absl::StatusCode::kOk && !sample.cancelled_by_client) ++failed_;
  }

  void Record(const SessionSample& sample) {
    absl::MutexLock lock(&samples_mu_);
    sessions_.push_back(sample);
  }

  void Worker(int64_t index) {
    std::mt19937_64 rng(options_.seed * 1000003u + static_cast<uint64_t>(index));
    GenerateCall& call = *calls_[index];
    anchorserve::v1::GenerateRequest base;
    // Validated by the caller (bench flags), so the status is OK here.
    ApplyGenerationFlags(options_.generation, &base).IgnoreError();
    for (;;) {
      const int64_t turns = ClaimRequests(options_.turns);
      if (turns == 0) break;
      anchorserve::v1::CreateSessionResponse created;
      {
        auto context = connection_.NewContext(kDefaultUnaryTimeout);
        const grpc::Status status = connection_.stub().CreateSession(
            context.get(), anchorserve::v1::CreateSessionRequest(), &created);
        if (!status.ok()) {
          RequestSample failed;
          failed.code = static_cast<absl::StatusCode>(status.error_code());
          Record(failed);  // counts as one of the session's requests
          ReleaseRequests(turns - 1);
          absl::SleepFor(kErrorBackoff);
          continue;
        }
      }
      const std::string& session_id = created.session().session_id();
      size_t cursor = text_.RandomStart(rng);
      std::optional<SessionSample> session;
      int64_t sent = 0;
      for (int64_t turn = 0; turn < turns; ++turn) {
        if (turn > 0 && !TimeLeft()) break;
        double lag_ms = 0;
        if (options_.rate > 0) {
          const absl::Time at = NextArrival();
          if (!SleepUntil(at)) break;
          lag_ms = std::max(0.0, absl::ToDoubleMilliseconds(absl::Now() - at));
        }
        anchorserve::v1::GenerateRequest request = base;
        request.set_session_id(session_id);
        request.set_prompt(text_.NextTurn(&cursor, rng));
        const StreamResult result = call.Run(request, nullptr);
        ++sent;
        Record(ToSample(result, lag_ms));
        if (!result.status.ok()) break;
        if (result.usage) {
          const anchorserve::v1::Usage& u = *result.usage;
          session = SessionSample{turn + 1,          u.kept_kv_tokens(), u.full_kv_tokens(),
                                  u.kept_kv_bytes(), u.full_kv_bytes(),  u.cache_reduction()};
        }
      }
      if (session) Record(*session);
      ReleaseRequests(turns - sent);
      // Leave the server as we found it; best effort, also after Ctrl-C.
      auto context = connection_.NewContext(kDefaultUnaryTimeout);
      anchorserve::v1::DeleteSessionRequest remove;
      remove.set_session_id(session_id);
      anchorserve::v1::DeleteSessionResponse removed;
      connection_.stub().DeleteSession(context.get(), remove, &removed);
    }
  }

  void ShowProgressUntilDone() {
    const bool tty = isatty(STDERR_FILENO) == 1;
    const absl::Duration every = tty ? absl::Milliseconds(200) : absl::Seconds(2);
    absl::Time next_draw = absl::Now() + every;
    bool drew = false;
    while (running_workers_ > 0) {
      absl::SleepFor(kSleepSlice);
      if (!options_.progress || absl::Now() < next_draw) continue;
      next_draw = absl::Now() + every;
      DrawProgress(tty);
      drew = true;
    }
    if (options_.progress && drew) {
      DrawProgress(tty);
      if (tty) std::fputc('\n', stderr);
    }
  }

  void DrawProgress(bool tty) {
    int64_t done = 0, failed = 0;
    {
      absl::MutexLock lock(&samples_mu_);
      done = done_;
      failed = failed_;
    }
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start_);
    double fraction = 0;
    std::string count;
    if (options_.requests) {
      fraction =
          static_cast<double>(done) / static_cast<double>(std::max<int64_t>(1, *options_.requests));
      count = absl::StrFormat("%d/%d req", done, *options_.requests);
    } else {
      count = absl::StrFormat("%d req", done);
    }
    if (options_.duration_s > 0) fraction = std::max(fraction, elapsed / options_.duration_s);
    fraction = std::clamp(fraction, 0.0, 1.0);
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(fraction * kWidth);
    const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '-');
    const std::string line =
        absl::StrFormat("bench [%s] %s  errors %d  %.1f req/s  %.1f s", bar, count, failed,
                        elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0, elapsed);
    std::fprintf(stderr, tty ? "\r%-78s" : "%s\n", line.c_str());
    std::fflush(stderr);
  }

  const Connection& connection_;
  const BenchText& text_;
  const LoadOptions options_;
  absl::Time start_;
  absl::Time end_by_;
  std::vector<std::unique_ptr<GenerateCall>> calls_;  // one per worker; fixed before they start
  std::atomic<int64_t> claimed_{0};
  std::atomic<int64_t> running_workers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> interrupted_{false};

  absl::Mutex schedule_mu_;
  absl::Time next_arrival_ ABSL_GUARDED_BY(schedule_mu_);
  std::mt19937_64 arrival_rng_ ABSL_GUARDED_BY(schedule_mu_);

  absl::Mutex samples_mu_;
  std::vector<RequestSample> requests_ ABSL_GUARDED_BY(samples_mu_);
  std::vector<SessionSample> sessions_ ABSL_GUARDED_BY(samples_mu_);
  int64_t done_ ABSL_GUARDED_BY(samples_mu_) = 0;
  int64_t failed_ ABSL_GUARDED_BY(samples_mu_) = 0;
};

}  // namespace

absl::StatusOr<LoadResult> RunLoad(const Connection& connection, const BenchText& text,
                                   const LoadOptions& options) {
  if (!options.requests && options.duration_s <= 0) {
    return absl::InvalidArgumentError("bench needs --requests N or --duration SECONDS");
  }
  if (options.concurrency < 1) return absl::InvalidArgumentError("--concurrency must be >= 1");
  if (options.turns < 1) return absl::InvalidArgumentError("--turns must be >= 1");
  if (options.rate < 0) return absl::InvalidArgumentError("--rate must be >= 0");
  anchorserve::v1::GenerateRequest probe;
  if (absl::Status status = ApplyGenerationFlags(options.generation, &probe); !status.ok()) {
    return status;
  }
  LoadRun run(connection, text, options);
  return run.Run();
}

}  // namespace anchorserve::client
