// The checks and conversions of anchorserve.v1 requests that need no engine and no running
// server: enum values, exclusive fields, session ids, page sizes, the text a prompt becomes and
// the engine request a GenerateRequest becomes. The engine checks the rest when a request is
// submitted (token ids against the vocabulary, limits, sampling values; Engine::Submit).
//
// Pure functions of their arguments, callable from any thread. Separate from service.cc so that
// the fuzzer (fuzz/request_validation_fuzzer.cc) can drive them with arbitrary messages without
// a model or gRPC.
#ifndef ANCHORSERVE_SERVER_REQUEST_VALIDATION_H_
#define ANCHORSERVE_SERVER_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "anchorserve/v1/anchorserve.pb.h"
#include "model/anchors.h"
#include "scheduler/engine.h"

namespace anchorserve::model {
class Tokenizer;
}

namespace anchorserve::server {

// Session ids: 1-128 characters of [A-Za-z0-9._-]. InvalidArgument naming session_id otherwise.
absl::Status ValidateSessionId(absl::string_view id);

// Bounds on what one request may make the engine thread do for it (docs/SECURITY.md).
inline constexpr int kMaxKeptFullSpans = 256;
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr int kMaxStopTokenIds = 256;

// The enum fields hold known values (proto3 keeps unknown numbers), exactly one of prompt,
// prompt_token_ids and messages is given, and kept_full_spans, stop and stop_token_ids are
// within the bounds above. InvalidArgument naming the field otherwise.
absl::Status ValidateGenerateRequest(const anchorserve::v1::GenerateRequest& request);

// The prompt tokens of `request`: prompt_token_ids as given (the engine checks them against the
// vocabulary), or the prompt / messages text with `anchors.anchor_token` inserted per the
// request's anchor_insertion (`default_insertion` when UNSPECIFIED; only for AnLLM-AC models),
// encoded by `tokenizer` with a BOS when `add_bos`. Errors: those of ValidateGenerateRequest;
// FailedPrecondition for text when `tokenizer` is null (the model has no tokenizer.model).
absl::StatusOr<std::vector<int32_t>> PromptTokens(
    const anchorserve::v1::GenerateRequest& request, const model::Tokenizer* tokenizer,
    const model::AnchorSpec& anchors, anchorserve::v1::AnchorInsertion default_insertion,
    bool add_bos);

// The prompt a Tokenize call encodes (its text, anchor_insertion), for PromptTokens.
// InvalidArgument when the text is empty.
absl::StatusOr<anchorserve::v1::GenerateRequest> TokenizeRequestAsPrompt(
    const anchorserve::v1::TokenizeRequest& request);

// The engine request for `request` with `prompt_token_ids` (from PromptTokens): the sampling
// fields the client set (unset ones keep model::SamplingParams' defaults; the seed is
// `default_seed` when unset), the stop conditions, kept-full spans, priority and flags; an
// UNSPECIFIED mode or position policy takes the given default. Tenant and deadline are the
// caller's. Never fails: Engine::Submit validates the values.
scheduler::GenerationRequest ToGenerationRequest(const anchorserve::v1::GenerateRequest& request,
                                                 std::vector<int32_t> prompt_token_ids,
                                                 anchorserve::v1::AttentionMode default_mode,
                                                 anchorserve::v1::PositionPolicy default_policy,
                                                 uint64_t default_seed);

// The number of sessions one ListSessions page holds: page_size, or 100 when 0.
// InvalidArgument when page_size is outside [0, 1000].
absl::StatusOr<int32_t> ListSessionsPageSize(const anchorserve::v1::ListSessionsRequest& request);

// A valid session id and a non-empty state (the engine decodes the state itself).
absl::Status ValidateImportSessionRequest(const anchorserve::v1::ImportSessionRequest& request);

}  // namespace anchorserve::server

#endif  // ANCHORSERVE_SERVER_REQUEST_VALIDATION_H_
