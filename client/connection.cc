#include "client/connection.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace anchorserve::client {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, ": cannot read ", path));
  std::stringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace

void AddConnectionFlags(FlagParser& parser, ConnectionFlags* flags) {
  parser.AddString("server", &flags->server, "HOST:PORT of anchorserve (default 127.0.0.1:50051)");
  parser.AddBool("tls", &flags->tls, "connect with TLS (system roots unless --ca)");
  parser.AddString("ca", &flags->ca_file,
                   "PEM file of the CA that signed the server (implies --tls)");
  parser.AddDouble("timeout", &flags->timeout_s, 0, 1e6,
                   "deadline of each call in seconds (default: none for streams, 30 s otherwise)");
  parser.AddString("token-file", &flags->token_file,
                   "file holding the bearer token (default: $ANCHORCTL_TOKEN)");
  parser.Forbid("token",
                "a token on the command line leaks into shell history and `ps`; put it in a file "
                "(--token-file FILE) or in ANCHORCTL_TOKEN");
}

absl::StatusOr<std::string> LoadBearerToken(const std::string& token_file, const char* env_value) {
  std::string token;
  std::string source;
  if (!token_file.empty()) {
    absl::StatusOr<std::string> contents = ReadWholeFile(token_file, "--token-file");
    if (!contents.ok()) return contents.status();
    token = std::move(*contents);
    source = absl::StrCat("--token-file ", token_file);
  } else if (env_value != nullptr) {
    token = env_value;
    source = kTokenEnvVar;
  } else {
    return std::string();
  }
  absl::StripAsciiWhitespace(&token);
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat(source, ": the token is empty"));
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": the token must be one word of printable ASCII (no spaces inside)"));
    }
  }
  return token;
}

absl::StatusOr<std::unique_ptr<Connection>> Connection::Create(const ConnectionFlags& flags) {
  if (flags.server.empty() || flags.server.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--server: expected HOST:PORT, got \"", flags.server, "\""));
  }
  absl::StatusOr<std::string> token = LoadBearerToken(flags.token_file, std::getenv(kTokenEnvVar));
  if (!token.ok()) return token.status();

  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (flags.tls || !flags.ca_file.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!flags.ca_file.empty()) {
      absl::StatusOr<std::string> ca = ReadWholeFile(flags.ca_file, "--ca");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = std::move(*ca);
    }
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  // Session export/import moves whole KV states: let the server's limit be the only one.
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);

  auto connection = std::unique_ptr<Connection>(new Connection());
  connection->server_ = flags.server;
  connection->token_ = std::move(*token);
  if (flags.timeout_s > 0) connection->timeout_ = absl::Seconds(flags.timeout_s);
  connection->channel_ = grpc::CreateCustomChannel(flags.server, credentials, args);
  connection->stub_ = anchorserve::v1::AnchorServe::NewStub(connection->channel_);
  connection->health_ = grpc::health::v1::Health::NewStub(connection->channel_);
  return connection;
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext(absl::Duration default_timeout) const {
  auto context = std::make_unique<grpc::ClientContext>();
  const absl::Duration timeout = timeout_.value_or(default_timeout);
  if (timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  if (!token_.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token_));
  return context;
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace anchorserve::client
