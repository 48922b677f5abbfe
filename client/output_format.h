// What anchorctl prints: the per-turn line, NDJSON of stream messages, sessions as JSON and as
// text, error lines and exit codes. One place, so chat, generate, session and bench agree and
// docs/ANCHORCTL.md can describe each format once.
#ifndef ANCHORSERVE_CLIENT_OUTPUT_FORMAT_H_
#define ANCHORSERVE_CLIENT_OUTPUT_FORMAT_H_

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/status.h"
#include "anchorserve/v1/anchorserve.pb.h"
#include "client/generate_call.h"

namespace anchorserve::client {

inline constexpr int kExitUsage = 2;  // bad arguments (one line on stderr)

// 0 for OK, else the gRPC status code number (NOT_FOUND = 5, UNAVAILABLE = 14, ...).
int ExitCode(const absl::Status& status);

// Lower-case enum names without the prefix: "length", "resident", "absolute", "anchor".
std::string FinishReasonName(anchorserve::v1::FinishReason reason);
std::string SessionTierName(anchorserve::v1::SessionTier tier);
std::string PositionPolicyName(anchorserve::v1::PositionPolicy policy);

// `[<label>] ttft=12.3ms tok/s=85.2 kept_kv=K/F C↓=93.1% prompt=P cached=C completion=N
// finish=length`: kept_kv is kept/full-equivalent KV tokens after the turn, C↓ the cache
// reduction 1 - kept/full. Fields the stream did not report print as "-".
std::string TurnLine(const std::string& label, const StreamResult& result);

// One NDJSON object per stream message; every key is always present (null when unset) so that
// consumers need not guess: {"request_id","text","token_ids","finish_reason","usage"}.
nlohmann::ordered_json ResponseToJson(const anchorserve::v1::GenerateResponse& response);
nlohmann::ordered_json UsageToJson(const anchorserve::v1::Usage& usage);
nlohmann::ordered_json SessionToJson(const anchorserve::v1::Session& session);
// {"error": {"code": 5, "status": "NOT_FOUND", "message": "..."}}
nlohmann::ordered_json ErrorToJson(const absl::Status& status);

// One line of JSON (no trailing newline). Invalid UTF-8 (a text delta may end inside a
// multi-byte character) becomes U+FFFD instead of throwing.
std::string JsonLine(const nlohmann::ordered_json& value);
// Indented JSON for a human, same UTF-8 handling.
std::string JsonPretty(const nlohmann::ordered_json& value);

// "key: value" lines for a human.
std::string SessionToText(const anchorserve::v1::Session& session);

// "anchorctl <command>: <RPC> failed: NOT_FOUND: <message>"
std::string ErrorLine(const std::string& command, const std::string& rpc,
                      const absl::Status& status);

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_OUTPUT_FORMAT_H_
