// The arithmetic and text of anchorctl bench and the per-turn line, without a server:
// percentiles, the JSON summary's counts and KV figures, the load text, and TurnLine.
#include "client/bench_report.h"

#include <random>

#include "client/bench_text.h"
#include "client/output_format.h"
#include "gtest/gtest.h"

namespace anchorserve::client {
namespace {

TEST(PercentileTest, NearestRank) {
  const std::vector<double> v = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(Percentile(v, 50), 5);
  EXPECT_EQ(Percentile(v, 99), 10);
  EXPECT_EQ(Percentile(v, 10), 1);
  EXPECT_EQ(Percentile({42}, 50), 42);
  EXPECT_EQ(Percentile({42}, 99), 42);
}

TEST(SummarizeTest, EmptyIsZeroAndOrderDoesNotMatter) {
  const Distribution empty = Summarize({});
  EXPECT_EQ(empty.count, 0);
  EXPECT_EQ(empty.p99, 0);
  const Distribution d = Summarize({3, 1, 2});
  EXPECT_EQ(d.count, 3);
  EXPECT_DOUBLE_EQ(d.mean, 2);
  EXPECT_EQ(d.p50, 2);
  EXPECT_EQ(d.max, 3);
}

TEST(BenchSummaryTest, CountsErrorsCancellationsAndKv) {
  BenchEcho echo;
  echo.server = "127.0.0.1:1";
  echo.concurrency = 2;
  echo.requests = 4;
  echo.turns = 2;
  RequestSample ok1;
  ok1.ttft_ms = 10;
  ok1.itl_ms = {1, 2};
  ok1.e2e_ms = 13;
  ok1.prompt_tokens = 20;
  ok1.completion_tokens = 3;
  RequestSample ok2 = ok1;
  ok2.ttft_ms = 30;
  ok2.cached_tokens = 23;
  RequestSample failed;
  failed.code = absl::StatusCode::kResourceExhausted;
  RequestSample cancelled;
  cancelled.code = absl::StatusCode::kCancelled;
  cancelled.cancelled_by_client = true;
  const std::vector<SessionSample> sessions = {{2, 10, 100, 1000, 10000, 0.9},
                                               {1, 30, 100, 3000, 10000, 0.7}};
  const nlohmann::ordered_json s =
      BuildBenchSummary(echo, {ok1, ok2, failed, cancelled}, sessions, 2.0, false);
  EXPECT_EQ(s["requests"]["total"], 4);
  EXPECT_EQ(s["requests"]["ok"], 2);
  EXPECT_EQ(s["requests"]["errors"], 1);
  EXPECT_EQ(s["requests"]["cancelled"], 1);
  EXPECT_EQ(s["requests"]["errors_by_status"]["RESOURCE_EXHAUSTED"], 1);
  EXPECT_DOUBLE_EQ(s["throughput"]["requests_per_s"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(s["throughput"]["output_tokens_per_s"].get<double>(), 3.0);
  EXPECT_EQ(s["tokens"]["cached"], 23);
  EXPECT_EQ(s["latency_ms"]["ttft"]["count"], 2);
  EXPECT_EQ(s["latency_ms"]["ttft"]["p50"], 10);
  EXPECT_EQ(s["latency_ms"]["ttft"]["p99"], 30);
  EXPECT_EQ(s["latency_ms"]["itl"]["count"], 4);
  EXPECT_FALSE(s["latency_ms"].contains("schedule_lag")) << "closed loop has no schedule";
  EXPECT_EQ(s["kv_per_session"]["sessions"], 2);
  EXPECT_DOUBLE_EQ(s["kv_per_session"]["kept_bytes"]["mean"].get<double>(), 2000);
  EXPECT_DOUBLE_EQ(s["kv_per_session"]["cache_reduction"]["mean"].get<double>(), 0.8);
  EXPECT_DOUBLE_EQ(s["kv_per_session"]["cache_reduction_overall"].get<double>(), 0.8);
  EXPECT_EQ(s["config"]["requests"], 4);
  EXPECT_TRUE(s["config"]["duration_s"].is_null());
  const std::string text = BenchSummaryText(s);
  EXPECT_NE(text.find("RESOURCE_EXHAUSTED: 1"), std::string::npos) << text;
  EXPECT_NE(text.find("C↓ 80.0% mean"), std::string::npos) << text;
}

TEST(BenchTextTest, SplitsSentencesAndParagraphs) {
  const std::vector<std::string> s = SplitSentencesForLoad(
      "CHAPTER I\n\nThe ship sailed at dawn.  \"Where to?\" asked Tom. She said\nnothing at "
      "all. Version 3.14 is out. Ok.\n");
  ASSERT_EQ(s.size(), 5u) << ::testing::PrintToString(s);
  EXPECT_EQ(s[0], "CHAPTER I");
  EXPECT_EQ(s[1], "The ship sailed at dawn.");
  EXPECT_EQ(s[2], "\"Where to?\" asked Tom.");
  EXPECT_EQ(s[3], "She said nothing at all.");
  EXPECT_EQ(s[4], "Version 3.14 is out. Ok.") << "short pieces stay with their neighbour";
}

TEST(BenchTextTest, TurnsAreTwoToFourConsecutiveSentences) {
  const absl::StatusOr<BenchText> text = BenchText::FromString(
      "One is here. Two is here. Three is here. Four is here. Five is here.", "test");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->size(), 5u);
  std::mt19937_64 rng(7);
  size_t cursor = 3;
  for (int i = 0; i < 20; ++i) {
    const size_t before = cursor;
    const std::string turn = text->NextTurn(&cursor, rng);
    const size_t taken = (cursor + text->size() - before) % text->size();
    EXPECT_GE(taken, 2u);
    EXPECT_LE(taken, 4u);
    EXPECT_FALSE(turn.empty());
  }
  EXPECT_FALSE(BenchText::FromString("Too short.", "test").ok());
}

TEST(BenchTextTest, MissingNamedFileIsAnErrorButTheDefaultFallsBack) {
  EXPECT_EQ(BenchText::Load("/nonexistent/text.txt").status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::StatusOr<BenchText> fallback = BenchText::Load("");
  ASSERT_TRUE(fallback.ok());
  EXPECT_GE(fallback->size(), BenchText::kMinSentences);
}

TEST(TurnLineTest, CarriesTheDocumentedFields) {
  StreamResult result;
  result.time_to_first_token = absl::Milliseconds(12.5);
  result.tokens_received = 5;
  result.inter_token_gaps = {absl::Milliseconds(10), absl::Milliseconds(10), absl::Milliseconds(10),
                             absl::Milliseconds(10)};
  result.streaming_time = absl::Milliseconds(40);
  result.finish_reason = anchorserve::v1::FINISH_REASON_LENGTH;
  anchorserve::v1::Usage usage;
  usage.set_prompt_tokens(7);
  usage.set_cached_tokens(30);
  usage.set_completion_tokens(5);
  usage.set_kept_kv_tokens(6);
  usage.set_full_kv_tokens(42);
  usage.set_cache_reduction(1.0 - 6.0 / 42.0);
  result.usage = usage;
  EXPECT_EQ(TurnLine("turn 2", result),
            "[turn 2] ttft=12.5ms tok/s=100.0 kept_kv=6/42 C↓=85.7% prompt=7 cached=30 "
            "completion=5 finish=length");
  result.status = absl::CancelledError("");
  result.usage.reset();
  EXPECT_EQ(TurnLine("turn 3", result),
            "[turn 3] ttft=12.5ms tok/s=100.0 kept_kv=- C↓=- prompt=- cached=- completion=5 "
            "finish=cancelled");
}

TEST(ResponseToJsonTest, EveryKeyAlwaysPresentAndBadUtf8Survives) {
  anchorserve::v1::GenerateResponse message;
  message.set_request_id("r-1");
  message.set_text("\xe2\x82");  // a character cut in two by a token boundary
  message.add_token_ids(5);
  const std::string line = JsonLine(ResponseToJson(message));
  EXPECT_EQ(line,
            "{\"request_id\":\"r-1\",\"text\":\"\xef\xbf\xbd\",\"token_ids\":[5],"
            "\"finish_reason\":null,\"usage\":null}");
}

}  // namespace
}  // namespace anchorserve::client
