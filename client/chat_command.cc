// anchorctl chat: a multi-turn REPL on one session. Each stdin line is a turn; its reply streams
// to stdout as tokens arrive and a `[turn N] ...` line (output_format.h) follows on stderr.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>

#include "client/commands.h"
#include "client/generate_call.h"
#include "client/generation_flags.h"
#include "client/interrupts.h"
#include "client/output_format.h"

namespace anchorserve::client {
namespace {

constexpr char kCommand[] = "chat";
constexpr char kSynopsis[] =
    "chat [--session ID] [--max-tokens N] [--temperature T] [--mode anchor|full] [...]\n"
    "\n"
    "Reads one turn per line from stdin and streams each reply to stdout; after it, a line\n"
    "`[turn N] ttft=..ms tok/s=.. kept_kv=K/F C↓=..% ...` on stderr. Without --session a new\n"
    "session is created and its id printed on stderr. Ctrl-C cancels the reply being\n"
    "streamed (the chat goes on); Ctrl-D (end of input) exits. With stdin not a terminal the\n"
    "first failed turn ends the program with its status code.";

}  // namespace

int ChatCommand(const std::vector<std::string>& args) {
  FlagParser parser;
  ConnectionFlags connection_flags;
  AddConnectionFlags(parser, &connection_flags);
  GenerationFlags generation;
  generation.max_tokens = 128;
  AddGenerationFlags(parser, &generation);
  std::string session_id;
  parser.AddString("session", &session_id, "continue this session (default: create one)");
  if (std::optional<int> exit = ParseCommandLine(kCommand, kSynopsis, parser, args)) return *exit;
  if (!parser.positionals().empty()) {
    return UsageError(kCommand, "unexpected argument \"" + parser.positionals()[0] + "\"");
  }
  anchorserve::v1::GenerateRequest base;
  if (absl::Status status = ApplyGenerationFlags(generation, &base); !status.ok()) {
    return UsageError(kCommand, std::string(status.message()));
  }
  int exit_code = 0;
  std::unique_ptr<Connection> connection = ConnectOrReport(kCommand, connection_flags, &exit_code);
  if (connection == nullptr) return exit_code;

  int64_t turn = 0;
  if (session_id.empty()) {
    auto context = connection->NewContext(kDefaultUnaryTimeout);
    anchorserve::v1::CreateSessionResponse created;
    const absl::Status status = FromGrpc(connection->stub().CreateSession(
        context.get(), anchorserve::v1::CreateSessionRequest(), &created));
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", ErrorLine(kCommand, "CreateSession", status).c_str());
      return ExitCode(status);
    }
    session_id = created.session().session_id();
  } else {
    auto context = connection->NewContext(kDefaultUnaryTimeout);
    anchorserve::v1::GetSessionRequest request;
    request.set_session_id(session_id);
    anchorserve::v1::GetSessionResponse found;
    const absl::Status status =
        FromGrpc(connection->stub().GetSession(context.get(), request, &found));
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", ErrorLine(kCommand, "GetSession", status).c_str());
      return ExitCode(status);
    }
    turn = found.session().turns();
  }
  base.set_session_id(session_id);

  const bool interactive = isatty(STDIN_FILENO) == 1;
  std::fprintf(stderr, "anchorctl chat: session %s%s\n", session_id.c_str(),
               interactive ? " (Ctrl-C cancels a reply, Ctrl-D exits)" : "");
  Interrupts& interrupts = Interrupts::Install();
  // At the prompt, a first Ctrl-C reminds how to leave; a second one in a row leaves.
  std::atomic<int> idle_interrupts{0};
  Interrupts::Scope at_prompt(interrupts, [&idle_interrupts, interactive] {
    if (++idle_interrupts >= 2) {
      std::fputc('\n', stderr);
      std::fflush(stdout);
      std::_Exit(kExitInterrupted);
    }
    std::fprintf(stderr, "\n(Ctrl-D exits; Ctrl-C again quits)\n%s", interactive ? "> " : "");
  });

  std::string line;
  for (;;) {
    if (interactive) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    idle_interrupts = 0;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    ++turn;
    anchorserve::v1::GenerateRequest request = base;
    request.set_prompt(line);
    GenerateCall call(connection.get());
    bool printed = false;
    StreamResult result;
    {
      Interrupts::Scope while_streaming(interrupts, [&call] { call.Cancel(); });
      result = call.Run(request, [&printed](const anchorserve::v1::GenerateResponse& message) {
        if (message.text().empty()) return;
        std::fwrite(message.text().data(), 1, message.text().size(), stdout);
        std::fflush(stdout);
        printed = true;
      });
    }
    if (printed) std::fputc('\n', stdout);
    std::fflush(stdout);
    const std::string label = "turn " + std::to_string(turn);
    if (result.status.ok() || result.cancelled_by_client) {
      std::fprintf(stderr, "%s\n", TurnLine(label, result).c_str());
      continue;
    }
    std::fprintf(stderr, "%s\n", ErrorLine(kCommand, "Generate", result.status).c_str());
    if (!interactive) return ExitCode(result.status);
  }
  if (interactive) std::fputc('\n', stderr);
  return 0;
}

}  // namespace anchorserve::client
