// How anchorctl reaches a server: address, TLS, deadline and the bearer token, and the channel
// and stubs built from them. The token comes from a file (--token-file) or the environment
// (ANCHORCTL_TOKEN), never from a flag value, so it stays out of shell history and `ps`.
#ifndef ANCHORSERVE_CLIENT_CONNECTION_H_
#define ANCHORSERVE_CLIENT_CONNECTION_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "anchorserve/v1/anchorserve.grpc.pb.h"
#include "client/flag_parser.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace anchorserve::client {

inline constexpr char kDefaultServer[] = "127.0.0.1:50051";
inline constexpr char kTokenEnvVar[] = "ANCHORCTL_TOKEN";
// Unary calls get this deadline unless --timeout is given; streams get none by default.
inline constexpr absl::Duration kDefaultUnaryTimeout = absl::Seconds(30);

// The global flags, shared by every subcommand.
struct ConnectionFlags {
  std::string server = kDefaultServer;
  bool tls = false;
  std::string ca_file;     // PEM roots; implies TLS
  double timeout_s = 0;    // 0: none for streams, kDefaultUnaryTimeout for unary calls
  std::string token_file;  // empty: ANCHORCTL_TOKEN, else no token
};

// Declares --server, --tls, --ca, --timeout and --token-file on `parser`, and forbids --token.
void AddConnectionFlags(FlagParser& parser, ConnectionFlags* flags);

// The bearer token: the trimmed contents of `token_file` when given, else the trimmed value of
// `env_value` (ANCHORCTL_TOKEN; null when unset), else empty (no authorization sent).
// InvalidArgument: the file cannot be read, or the token is empty or holds whitespace or
// non-printable bytes. The message never repeats the token.
absl::StatusOr<std::string> LoadBearerToken(const std::string& token_file, const char* env_value);

// A channel and the stubs on it. Thread-safe: stubs and NewContext may be used from any thread.
class Connection {
 public:
  // Validates the flags (reads the token and the CA file); InvalidArgument with a one-line
  // message otherwise. Does not contact the server: a server that is down shows as
  // UNAVAILABLE on the first call.
  static absl::StatusOr<std::unique_ptr<Connection>> Create(const ConnectionFlags& flags);

  // Stubs are thread-safe; the references live as long as the Connection.
  anchorserve::v1::AnchorServe::Stub& stub() const { return *stub_; }
  grpc::health::v1::Health::Stub& health() const { return *health_; }
  const std::string& server() const { return server_; }

  // Sets the deadline (`--timeout`, else `default_timeout`; InfiniteDuration = none) and the
  // authorization metadata on a fresh context. The caller owns it; one context per call.
  std::unique_ptr<grpc::ClientContext> NewContext(absl::Duration default_timeout) const;

 private:
  Connection() = default;

  std::string server_;
  std::string token_;
  std::optional<absl::Duration> timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<anchorserve::v1::AnchorServe::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// grpc::Status -> absl::Status with the same code and message.
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_CONNECTION_H_
