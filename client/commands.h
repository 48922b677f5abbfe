// The anchorctl subcommands. Each takes the arguments after its name (global flags included),
// prints its own output and messages, and returns the process exit code: 0 on success, the gRPC
// status code number of the failing call otherwise, kExitUsage (2) for bad arguments, and
// kExitInterrupted (130) when Ctrl-C ended a program with nothing left to cancel. All expect
// Interrupts::Install() to have run first (AnchorctlMain does it). docs/ANCHORCTL.md is the
// user's manual.
#ifndef ANCHORSERVE_CLIENT_COMMANDS_H_
#define ANCHORSERVE_CLIENT_COMMANDS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/connection.h"
#include "client/flag_parser.h"

namespace anchorserve::client {

int ChatCommand(const std::vector<std::string>& args);
int GenerateCommand(const std::vector<std::string>& args);
int SessionCommand(const std::vector<std::string>& args);
int HealthCommand(const std::vector<std::string>& args);
int BenchCommand(const std::vector<std::string>& args);

// The whole program: dispatches argv[1] (the first word that is not a global flag or its
// value) to its subcommand.
int AnchorctlMain(int argc, char** argv);

// Shared by the subcommands. ParseCommandLine handles --help (usage on stdout, exit 0) and
// parse errors (one line on stderr, exit 2): it returns the exit code when the command must end
// now, nullopt to go on. UsageError prints "anchorctl <command>: <message>" and returns 2.
std::optional<int> ParseCommandLine(const std::string& command, const std::string& synopsis,
                                    FlagParser& parser, const std::vector<std::string>& args);
int UsageError(const std::string& command, const std::string& message);
// Connection::Create, or a usage error line; null then, with *exit_code = 2.
std::unique_ptr<Connection> ConnectOrReport(const std::string& command,
                                            const ConnectionFlags& flags, int* exit_code);

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_COMMANDS_H_
