#include "client/output_format.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace anchorserve::client {
namespace {

std::string ShortName(const std::string& full, absl::string_view prefix) {
  absl::string_view name = full;
  if (absl::StartsWith(name, prefix)) name.remove_prefix(prefix.size());
  return absl::AsciiStrToLower(name);
}

std::string Timestamp(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "";
  const absl::Time time = absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
}

}  // namespace

int ExitCode(const absl::Status& status) { return static_cast<int>(status.code()); }

std::string FinishReasonName(anchorserve::v1::FinishReason reason) {
  return ShortName(anchorserve::v1::FinishReason_Name(reason), "FINISH_REASON_");
}

std::string SessionTierName(anchorserve::v1::SessionTier tier) {
  return ShortName(anchorserve::v1::SessionTier_Name(tier), "SESSION_TIER_");
}

std::string PositionPolicyName(anchorserve::v1::PositionPolicy policy) {
  return ShortName(anchorserve::v1::PositionPolicy_Name(policy), "POSITION_POLICY_");
}

std::string TurnLine(const std::string& label, const StreamResult& result) {
  std::string line = absl::StrCat("[", label, "]");
  if (result.time_to_first_token.has_value()) {
    absl::StrAppend(
        &line,
        absl::StrFormat(" ttft=%.1fms", absl::ToDoubleMilliseconds(*result.time_to_first_token)));
  } else {
    absl::StrAppend(&line, " ttft=-");
  }
  absl::StrAppend(&line, absl::StrFormat(" tok/s=%.1f", result.TokensPerSecond()));
  if (result.usage.has_value()) {
    const anchorserve::v1::Usage& u = *result.usage;
    absl::StrAppend(&line, " kept_kv=", u.kept_kv_tokens(), "/", u.full_kv_tokens(),
                    absl::StrFormat(" C↓=%.1f%%", 100.0 * u.cache_reduction()),
                    " prompt=", u.prompt_tokens(), " cached=", u.cached_tokens(),
                    " completion=", u.completion_tokens());
  } else {
    absl::StrAppend(&line, " kept_kv=- C↓=- prompt=- cached=- completion=", result.tokens_received);
  }
  absl::StrAppend(&line, " finish=",
                  result.status.ok()
                      ? FinishReasonName(result.finish_reason)
                      : absl::AsciiStrToLower(absl::StatusCodeToString(result.status.code())));
  return line;
}

nlohmann::ordered_json UsageToJson(const anchorserve::v1::Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.completion_tokens()},
          {"cached_tokens", u.cached_tokens()},
          {"kept_kv_tokens", u.kept_kv_tokens()},
          {"full_kv_tokens", u.full_kv_tokens()},
          {"cache_reduction", u.cache_reduction()},
          {"kept_kv_bytes", u.kept_kv_bytes()},
          {"full_kv_bytes", u.full_kv_bytes()},
          {"anchors", u.anchors()},
          {"position_policy", PositionPolicyName(u.position_policy())}};
}

nlohmann::ordered_json ResponseToJson(const anchorserve::v1::GenerateResponse& response) {
  nlohmann::ordered_json out = {{"request_id", response.request_id()},
                                {"text", response.text()},
                                {"token_ids", nlohmann::ordered_json::array()},
                                {"finish_reason", nullptr},
                                {"usage", nullptr}};
  for (int32_t id : response.token_ids()) out["token_ids"].push_back(id);
  if (response.finish_reason() != anchorserve::v1::FINISH_REASON_UNSPECIFIED) {
    out["finish_reason"] = FinishReasonName(response.finish_reason());
  }
  if (response.has_usage()) out["usage"] = UsageToJson(response.usage());
  return out;
}

nlohmann::ordered_json SessionToJson(const anchorserve::v1::Session& s) {
  return {{"session_id", s.session_id()},
          {"tier", SessionTierName(s.tier())},
          {"turns", s.turns()},
          {"kept_kv_tokens", s.kept_kv_tokens()},
          {"full_kv_tokens", s.full_kv_tokens()},
          {"cache_reduction", s.cache_reduction()},
          {"kept_kv_bytes", s.kept_kv_bytes()},
          {"full_kv_bytes", s.full_kv_bytes()},
          {"anchors", s.anchors()},
          {"create_time", Timestamp(s.create_time())},
          {"last_used_time", Timestamp(s.last_used_time())}};
}

nlohmann::ordered_json ErrorToJson(const absl::Status& status) {
  return {{"error",
           {{"code", ExitCode(status)},
            {"status", absl::StatusCodeToString(status.code())},
            {"message", std::string(status.message())}}}};
}

std::string JsonLine(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string JsonPretty(const nlohmann::ordered_json& value) {
  return value.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string SessionToText(const anchorserve::v1::Session& s) {
  return absl::StrCat("session_id: ", s.session_id(), "\n", "tier: ", SessionTierName(s.tier()),
                      "\n", "turns: ", s.turns(), "\n", "kept_kv_tokens: ", s.kept_kv_tokens(),
                      "\n", "full_kv_tokens: ", s.full_kv_tokens(), "\n",
                      absl::StrFormat("cache_reduction: %.4f\n", s.cache_reduction()),
                      "kept_kv_bytes: ", s.kept_kv_bytes(), "\n",
                      "full_kv_bytes: ", s.full_kv_bytes(), "\n", "anchors: ", s.anchors(), "\n",
                      "create_time: ", Timestamp(s.create_time()), "\n",
                      "last_used_time: ", Timestamp(s.last_used_time()), "\n");
}

std::string ErrorLine(const std::string& command, const std::string& rpc,
                      const absl::Status& status) {
  return absl::StrCat("anchorctl ", command, ": ", rpc,
                      " failed: ", absl::StatusCodeToString(status.code()), ": ", status.message());
}

}  // namespace anchorserve::client
