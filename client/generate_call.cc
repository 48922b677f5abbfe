#include "client/generate_call.h"

namespace anchorserve::client {

double StreamResult::TokensPerSecond() const {
  if (tokens_received == 0) return 0;
  const int64_t after_first = static_cast<int64_t>(inter_token_gaps.size());
  if (after_first > 0 && streaming_time > absl::ZeroDuration()) {
    return static_cast<double>(after_first) / absl::ToDoubleSeconds(streaming_time);
  }
  if (end_to_end <= absl::ZeroDuration()) return 0;
  return static_cast<double>(tokens_received) / absl::ToDoubleSeconds(end_to_end);
}

StreamResult GenerateCall::Run(
    const anchorserve::v1::GenerateRequest& request,
    const std::function<void(const anchorserve::v1::GenerateResponse&)>& on_message) {
  StreamResult result;
  std::unique_ptr<grpc::ClientContext> context =
      connection_->NewContext(/*default_timeout=*/absl::InfiniteDuration());
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) {
      result.status = absl::CancelledError("cancelled by the client");
      result.cancelled_by_client = true;
      return result;
    }
    active_ = context.get();
  }
  const absl::Time start = absl::Now();
  std::optional<absl::Time> first_token;
  absl::Time last_token;
  std::unique_ptr<grpc::ClientReader<anchorserve::v1::GenerateResponse>> reader =
      connection_->stub().Generate(context.get(), request);
  anchorserve::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    const absl::Time now = absl::Now();
    const int n = response.token_ids_size();
    if (n > 0) {
      if (!first_token.has_value()) {
        first_token = now;
        result.time_to_first_token = now - start;
      } else {
        const absl::Duration gap = (now - last_token) / n;
        for (int i = 0; i < n; ++i) result.inter_token_gaps.push_back(gap);
      }
      last_token = now;
    }
    result.tokens_received += n;
    result.text += response.text();
    if (result.request_id.empty()) result.request_id = response.request_id();
    if (response.finish_reason() != anchorserve::v1::FINISH_REASON_UNSPECIFIED) {
      result.finish_reason = response.finish_reason();
      if (response.has_usage()) result.usage = response.usage();
    }
    if (on_message) on_message(response);
  }
  const grpc::Status status = reader->Finish();
  result.end_to_end = absl::Now() - start;
  if (first_token.has_value()) result.streaming_time = last_token - *first_token;
  {
    absl::MutexLock lock(&mu_);
    active_ = nullptr;
    result.cancelled_by_client = cancelled_ && status.error_code() == grpc::StatusCode::CANCELLED;
  }
  result.status = FromGrpc(status);
  if (result.status.ok() && result.finish_reason == anchorserve::v1::FINISH_REASON_UNSPECIFIED) {
    result.status = absl::InternalError("the stream ended without a finish_reason");
  }
  return result;
}

void GenerateCall::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (active_ != nullptr) active_->TryCancel();
}

bool GenerateCall::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

}  // namespace anchorserve::client
