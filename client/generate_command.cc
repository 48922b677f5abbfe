// anchorctl generate: one request, streamed as text (a summary line on stderr at the end) or, with
// --json, as NDJSON: one object per response message.
#include <cstdio>
#include <iostream>
#include <iterator>

#include "client/commands.h"
#include "client/generate_call.h"
#include "client/generation_flags.h"
#include "client/interrupts.h"
#include "client/output_format.h"

namespace anchorserve::client {
namespace {

constexpr char kCommand[] = "generate";
constexpr char kSynopsis[] =
    "generate --prompt TEXT [--session ID] [--max-tokens N] [sampling flags] [--json]\n"
    "\n"
    "Streams the reply to stdout, then `[done] ttft=.. tok/s=.. kept_kv=K/F C↓=..% ...` on\n"
    "stderr. --prompt - reads the prompt from stdin. --json prints NDJSON instead: one object\n"
    "per response message {request_id, text, token_ids, finish_reason, usage}, and on failure\n"
    "a last {\"error\": {code, status, message}}. Ctrl-C cancels (exit 1, CANCELLED).";

}  // namespace

int GenerateCommand(const std::vector<std::string>& args) {
  FlagParser parser;
  ConnectionFlags connection_flags;
  AddConnectionFlags(parser, &connection_flags);
  GenerationFlags generation;
  generation.max_tokens = 128;
  AddGenerationFlags(parser, &generation);
  std::optional<std::string> prompt;
  std::string session_id;
  bool json = false;
  parser.AddOptionalString("prompt", &prompt, "the prompt text; - reads it from stdin");
  parser.AddString("session", &session_id, "a turn of this session (default: one-shot)");
  parser.AddBool("json", &json, "NDJSON, one object per response message");
  if (std::optional<int> exit = ParseCommandLine(kCommand, kSynopsis, parser, args)) return *exit;
  if (!parser.positionals().empty()) {
    return UsageError(kCommand, "unexpected argument \"" + parser.positionals()[0] + "\"");
  }
  if (!prompt.has_value()) return UsageError(kCommand, "--prompt is required");
  if (*prompt == "-") {
    prompt =
        std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  if (prompt->empty()) return UsageError(kCommand, "--prompt is empty");

  anchorserve::v1::GenerateRequest request;
  if (absl::Status status = ApplyGenerationFlags(generation, &request); !status.ok()) {
    return UsageError(kCommand, std::string(status.message()));
  }
  request.set_session_id(session_id);
  request.set_prompt(*prompt);
  int exit_code = 0;
  std::unique_ptr<Connection> connection = ConnectOrReport(kCommand, connection_flags, &exit_code);
  if (connection == nullptr) return exit_code;

  GenerateCall call(connection.get());
  bool printed = false;
  StreamResult result;
  {
    Interrupts::Scope on_interrupt(Interrupts::Install(), [&call] { call.Cancel(); });
    result = call.Run(request, [&](const anchorserve::v1::GenerateResponse& message) {
      if (json) {
        std::printf("%s\n", JsonLine(ResponseToJson(message)).c_str());
      } else if (!message.text().empty()) {
        std::fwrite(message.text().data(), 1, message.text().size(), stdout);
        printed = true;
      }
      std::fflush(stdout);
    });
  }
  if (printed) std::fputc('\n', stdout);
  if (!result.status.ok() && json)
    std::printf("%s\n", JsonLine(ErrorToJson(result.status)).c_str());
  std::fflush(stdout);
  if (result.cancelled_by_client) {
    std::fprintf(stderr, "anchorctl generate: cancelled (Ctrl-C)\n");
  } else if (!result.status.ok()) {
    std::fprintf(stderr, "%s\n", ErrorLine(kCommand, "Generate", result.status).c_str());
  }
  if (!result.status.ok()) return ExitCode(result.status);
  if (!json) std::fprintf(stderr, "%s\n", TurnLine("done", result).c_str());
  return 0;
}

}  // namespace anchorserve::client
