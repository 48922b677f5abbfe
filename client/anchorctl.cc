#include <cstdio>
#include <set>

#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/interrupts.h"
#include "client/output_format.h"

namespace anchorserve::client {
namespace {

constexpr char kUsage[] =
    "usage: anchorctl [global flags] COMMAND [flags]\n"
    "\n"
    "commands:\n"
    "  chat      interactive multi-turn chat on one session (stdin lines; Ctrl-C cancels a\n"
    "            reply, Ctrl-D exits)\n"
    "  generate  one request: --prompt TEXT, streamed (--json: NDJSON)\n"
    "  session   list | get ID | create [ID] | delete ID | export ID --out FILE |\n"
    "            import ID --in FILE\n"
    "  health    grpc.health.v1 Check; exit 0 only when SERVING\n"
    "  bench     load generator: multi-turn sessions of real text, latency and KV report\n"
    "\n"
    "global flags (any position):\n"
    "  --server HOST:PORT   default 127.0.0.1:50051\n"
    "  --tls, --ca FILE     TLS (system roots, or the CA in FILE)\n"
    "  --timeout SECONDS    deadline of each call (default: none for streams, 30 s otherwise)\n"
    "  --token-file FILE    bearer token; else $ANCHORCTL_TOKEN. Never a flag value.\n"
    "\n"
    "`anchorctl COMMAND --help` lists a command's flags. Exit status: 0, or the gRPC status\n"
    "code of the failing call (5 NOT_FOUND, 14 UNAVAILABLE, ...), 2 for bad arguments.\n";

}  // namespace

std::optional<int> ParseCommandLine(const std::string& command, const std::string& synopsis,
                                    FlagParser& parser, const std::vector<std::string>& args) {
  bool help = false;
  parser.AddBool("help", &help, "show this help");
  if (absl::Status status = parser.Parse(args); !status.ok()) {
    return UsageError(command, std::string(status.message()));
  }
  if (help) {
    std::printf("usage: anchorctl %s\n\nflags:\n%s", synopsis.c_str(), parser.Usage().c_str());
    return 0;
  }
  return std::nullopt;
}

int UsageError(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "anchorctl %s: %s (see anchorctl %s --help)\n", command.c_str(),
               message.c_str(), command.c_str());
  return kExitUsage;
}

std::unique_ptr<Connection> ConnectOrReport(const std::string& command,
                                            const ConnectionFlags& flags, int* exit_code) {
  absl::StatusOr<std::unique_ptr<Connection>> connection = Connection::Create(flags);
  if (!connection.ok()) {
    *exit_code = UsageError(command, std::string(connection.status().message()));
    return nullptr;
  }
  return std::move(*connection);
}

int AnchorctlMain(int argc, char** argv) {
  Interrupts::Install();  // before gRPC starts any thread
  std::vector<std::string> args(argv + 1, argv + argc);
  // Global flags may come before the command: skip them (and their values) to find it.
  static const std::set<std::string> kValueFlags = {"--server", "--ca", "--timeout", "--token-file",
                                                    "--token"};
  std::string command;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].rfind("-", 0) == 0) {
      if (kValueFlags.count(args[i]) != 0) ++i;
      continue;
    }
    command = args[i];
    args.erase(args.begin() + static_cast<std::ptrdiff_t>(i));
    break;
  }
  if (command.empty()) {
    for (const std::string& arg : args) {
      if (arg == "--help" || arg == "-h") {
        std::fputs(kUsage, stdout);
        return 0;
      }
    }
    std::fputs(kUsage, stderr);
    return kExitUsage;
  }
  if (command == "chat") return ChatCommand(args);
  if (command == "generate") return GenerateCommand(args);
  if (command == "session") return SessionCommand(args);
  if (command == "health") return HealthCommand(args);
  if (command == "bench") return BenchCommand(args);
  if (command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::fprintf(stderr, "anchorctl: unknown command \"%s\" (see anchorctl --help)\n",
               command.c_str());
  return kExitUsage;
}

}  // namespace anchorserve::client
