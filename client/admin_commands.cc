// anchorctl session ... and anchorctl health: the unary administration calls.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "client/commands.h"
#include "client/output_format.h"

namespace anchorserve::client {
namespace {

constexpr char kSessionCommand[] = "session";
constexpr char kSessionSynopsis[] =
    "session list | get ID | create [ID] | delete ID | export ID --out FILE |\n"
    "        import ID --in FILE   [--json]\n"
    "\n"
    "export writes the session's opaque state to FILE (replaced atomically); import creates\n"
    "session ID on this server from such a file (same model). --json prints sessions as JSON.";

constexpr char kHealthCommand[] = "health";
constexpr char kHealthSynopsis[] =
    "health [--service NAME]\n"
    "\n"
    "grpc.health.v1 Check of the server (or of NAME, e.g. anchorserve.v1.AnchorServe). Prints\n"
    "SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN. Exit 0 only when SERVING; 14\n"
    "(UNAVAILABLE) when not serving, 5 (NOT_FOUND) for an unknown service, else the status of\n"
    "the failed call.";

// Prints the failure of `rpc` and returns its exit code; 0 for OK.
int Report(const char* rpc, const grpc::Status& grpc_status) {
  const absl::Status status = FromGrpc(grpc_status);
  if (status.ok()) return 0;
  std::fprintf(stderr, "%s\n", ErrorLine(kSessionCommand, rpc, status).c_str());
  return ExitCode(status);
}

void PrintSession(const anchorserve::v1::Session& session, bool json) {
  if (json) {
    std::printf("%s\n", JsonLine(SessionToJson(session)).c_str());
  } else {
    std::fputs(SessionToText(session).c_str(), stdout);
  }
}

int ListSessions(Connection& connection, bool json) {
  std::vector<anchorserve::v1::Session> sessions;
  anchorserve::v1::ListSessionsRequest request;
  request.set_page_size(1000);
  do {
    auto context = connection.NewContext(kDefaultUnaryTimeout);
    anchorserve::v1::ListSessionsResponse page;
    if (int code =
            Report("ListSessions", connection.stub().ListSessions(context.get(), request, &page))) {
      return code;
    }
    sessions.insert(sessions.end(), page.sessions().begin(), page.sessions().end());
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  if (json) {
    nlohmann::ordered_json out = {{"sessions", nlohmann::ordered_json::array()}};
    for (const auto& session : sessions) out["sessions"].push_back(SessionToJson(session));
    std::printf("%s\n", JsonLine(out).c_str());
    return 0;
  }
  std::printf("%-36s %-9s %6s %21s %7s\n", "SESSION_ID", "TIER", "TURNS", "KEPT/FULL_KV_TOKENS",
              "C↓");
  for (const auto& s : sessions) {
    const std::string kv = absl::StrFormat("%d/%d", s.kept_kv_tokens(), s.full_kv_tokens());
    std::printf("%-36s %-9s %6lld %21s %6.1f%%\n", s.session_id().c_str(),
                SessionTierName(s.tier()).c_str(), static_cast<long long>(s.turns()), kv.c_str(),
                100.0 * s.cache_reduction());
  }
  return 0;
}

}  // namespace

int SessionCommand(const std::vector<std::string>& args) {
  FlagParser parser;
  ConnectionFlags connection_flags;
  AddConnectionFlags(parser, &connection_flags);
  bool json = false;
  std::string out_file;
  std::string in_file;
  parser.AddBool("json", &json, "print sessions as JSON");
  parser.AddString("out", &out_file, "export: the file to write");
  parser.AddString("in", &in_file, "import: the file to read");
  if (std::optional<int> exit = ParseCommandLine(kSessionCommand, kSessionSynopsis, parser, args)) {
    return *exit;
  }
  const std::vector<std::string>& words = parser.positionals();
  if (words.empty())
    return UsageError(kSessionCommand, "which one: list, get, create, delete, export or import?");
  const std::string& verb = words[0];
  const size_t max_words = verb == "list" ? 1 : 2;
  const bool id_required = verb != "list" && verb != "create";
  if (verb != "list" && verb != "get" && verb != "create" && verb != "delete" && verb != "export" &&
      verb != "import") {
    return UsageError(kSessionCommand, "unknown subcommand \"" + verb + "\"");
  }
  if (words.size() > max_words) {
    return UsageError(kSessionCommand, "unexpected argument \"" + words[max_words] + "\"");
  }
  if (id_required && words.size() < 2) {
    return UsageError(kSessionCommand, "session " + verb + " needs a session ID");
  }
  const std::string id = words.size() > 1 ? words[1] : "";
  if (parser.Seen("out") != (verb == "export")) {
    return UsageError(kSessionCommand, verb == "export" ? "export needs --out FILE"
                                                        : "--out belongs to session export");
  }
  if (parser.Seen("in") != (verb == "import")) {
    return UsageError(kSessionCommand, verb == "import" ? "import needs --in FILE"
                                                        : "--in belongs to session import");
  }
  std::string state;
  if (verb == "import") {
    std::ifstream in(in_file, std::ios::binary);
    if (!in) return UsageError(kSessionCommand, "--in: cannot read " + in_file);
    std::stringstream contents;
    contents << in.rdbuf();
    state = contents.str();
  }
  const std::string temp_file = out_file + ".part";
  std::ofstream out;
  if (verb == "export") {
    // Opened before the call, so a bad path is a usage error and costs the server nothing.
    out.open(temp_file, std::ios::binary | std::ios::trunc);
    if (!out) return UsageError(kSessionCommand, "--out: cannot write " + out_file);
  }

  int exit_code = 0;
  std::unique_ptr<Connection> connection =
      ConnectOrReport(kSessionCommand, connection_flags, &exit_code);
  if (connection == nullptr) return exit_code;
  auto context = connection->NewContext(kDefaultUnaryTimeout);
  auto& stub = connection->stub();

  if (verb == "list") return ListSessions(*connection, json);
  if (verb == "get") {
    anchorserve::v1::GetSessionRequest request;
    request.set_session_id(id);
    anchorserve::v1::GetSessionResponse response;
    if (int code = Report("GetSession", stub.GetSession(context.get(), request, &response))) {
      return code;
    }
    PrintSession(response.session(), json);
    return 0;
  }
  if (verb == "create") {
    anchorserve::v1::CreateSessionRequest request;
    request.set_session_id(id);
    anchorserve::v1::CreateSessionResponse response;
    if (int code = Report("CreateSession", stub.CreateSession(context.get(), request, &response))) {
      return code;
    }
    if (json) {
      PrintSession(response.session(), true);
    } else {
      std::printf("%s\n", response.session().session_id().c_str());
    }
    return 0;
  }
  if (verb == "delete") {
    anchorserve::v1::DeleteSessionRequest request;
    request.set_session_id(id);
    anchorserve::v1::DeleteSessionResponse response;
    if (int code = Report("DeleteSession", stub.DeleteSession(context.get(), request, &response))) {
      return code;
    }
    if (json) {
      std::printf("%s\n", JsonLine({{"session_id", id}, {"deleted", true}}).c_str());
    } else {
      std::printf("deleted %s\n", id.c_str());
    }
    return 0;
  }
  if (verb == "export") {
    anchorserve::v1::ExportSessionRequest request;
    request.set_session_id(id);
    anchorserve::v1::ExportSessionResponse response;
    if (int code = Report("ExportSession", stub.ExportSession(context.get(), request, &response))) {
      out.close();
      std::remove(temp_file.c_str());
      return code;
    }
    out.write(response.state().data(), static_cast<std::streamsize>(response.state().size()));
    out.close();
    if (!out || std::rename(temp_file.c_str(), out_file.c_str()) != 0) {
      std::remove(temp_file.c_str());
      std::fprintf(stderr, "anchorctl session: cannot write %s\n", out_file.c_str());
      return 1;
    }
    if (json) {
      std::printf(
          "%s\n",
          JsonLine({{"session_id", id}, {"bytes", response.state().size()}, {"file", out_file}})
              .c_str());
    } else {
      std::printf("exported %s: %zu bytes to %s\n", id.c_str(), response.state().size(),
                  out_file.c_str());
    }
    return 0;
  }
  // import
  anchorserve::v1::ImportSessionRequest request;
  request.set_session_id(id);
  request.set_state(std::move(state));
  anchorserve::v1::ImportSessionResponse response;
  if (int code = Report("ImportSession", stub.ImportSession(context.get(), request, &response))) {
    return code;
  }
  PrintSession(response.session(), json);
  return 0;
}

int HealthCommand(const std::vector<std::string>& args) {
  FlagParser parser;
  ConnectionFlags connection_flags;
  AddConnectionFlags(parser, &connection_flags);
  std::string service;
  parser.AddString("service", &service, "the service to check (default: the whole server)");
  if (std::optional<int> exit = ParseCommandLine(kHealthCommand, kHealthSynopsis, parser, args)) {
    return *exit;
  }
  if (!parser.positionals().empty()) {
    return UsageError(kHealthCommand, "unexpected argument \"" + parser.positionals()[0] + "\"");
  }
  int exit_code = 0;
  std::unique_ptr<Connection> connection =
      ConnectOrReport(kHealthCommand, connection_flags, &exit_code);
  if (connection == nullptr) return exit_code;
  auto context = connection->NewContext(kDefaultUnaryTimeout);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const absl::Status status =
      FromGrpc(connection->health().Check(context.get(), request, &response));
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", ErrorLine(kHealthCommand, "Check", status).c_str());
    return ExitCode(status);
  }
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return 0;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return ExitCode(absl::NotFoundError(""));
    default:
      return ExitCode(absl::UnavailableError(""));
  }
}

}  // namespace anchorserve::client
