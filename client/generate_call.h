// One streaming Generate call as a client sees it: the messages as they arrive, when they
// arrived (time to first token, the gaps between tokens, end to end) and how it ended. Chat,
// generate and bench all run their streams through it, so they measure the same way.
#ifndef ANCHORSERVE_CLIENT_GENERATE_CALL_H_
#define ANCHORSERVE_CLIENT_GENERATE_CALL_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "anchorserve/v1/anchorserve.pb.h"
#include "client/connection.h"

namespace anchorserve::client {

struct StreamResult {
  // The RPC status: OK only when the last message (finish_reason set) arrived.
  absl::Status status;
  // True when Cancel() ended the call (status is then CANCELLED).
  bool cancelled_by_client = false;
  std::string request_id;
  std::string text;             // all deltas joined
  int64_t tokens_received = 0;  // token ids across messages
  anchorserve::v1::FinishReason finish_reason = anchorserve::v1::FINISH_REASON_UNSPECIFIED;
  std::optional<anchorserve::v1::Usage> usage;  // from the last message
  // Send -> first message carrying a token; unset when none arrived.
  std::optional<absl::Duration> time_to_first_token;
  // First token -> last token, and the per-token gaps after the first: a message of n tokens
  // that arrives d after the previous one contributes n gaps of d/n.
  absl::Duration streaming_time = absl::ZeroDuration();
  std::vector<absl::Duration> inter_token_gaps;
  absl::Duration end_to_end = absl::ZeroDuration();

  // Tokens per second while streaming: tokens after the first message over streaming_time;
  // tokens over end_to_end when everything came in one message. 0 when nothing arrived.
  double TokensPerSecond() const;
};

// Runs Generate calls one at a time on the calling thread; Cancel() may come from any thread
// (a Ctrl-C handler, a bench that stops). Cancelling is sticky: the running call and every later
// Run end CANCELLED, so a stop request can never slip between two calls.
class GenerateCall {
 public:
  // `connection` must outlive the object.
  explicit GenerateCall(const Connection* connection) : connection_(connection) {}

  // Sends `request` and blocks until the stream ends, calling `on_message` (may be null) on
  // this thread for every message as it arrives. Never throws; the outcome is in the result.
  StreamResult Run(const anchorserve::v1::GenerateRequest& request,
                   const std::function<void(const anchorserve::v1::GenerateResponse&)>& on_message);

  void Cancel();
  bool cancelled() const;

 private:
  const Connection* connection_;
  mutable absl::Mutex mu_;
  grpc::ClientContext* active_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_GENERATE_CALL_H_
