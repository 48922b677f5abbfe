#include "server/request_validation.h"

#include <cctype>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/sentence_splitter.h"
#include "model/tokenizer.h"

namespace anchorserve::server {

namespace v1 = ::anchorserve::v1;

namespace {

model::AttentionMode ModeOf(v1::AttentionMode mode, v1::AttentionMode fallback) {
  if (mode == v1::ATTENTION_MODE_UNSPECIFIED) mode = fallback;
  return mode == v1::ATTENTION_MODE_FULL ? model::AttentionMode::kFull
                                         : model::AttentionMode::kAnchor;
}

model::PositionPolicy PolicyOf(v1::PositionPolicy policy, v1::PositionPolicy fallback) {
  if (policy == v1::POSITION_POLICY_UNSPECIFIED) policy = fallback;
  return policy == v1::POSITION_POLICY_COMPACT ? model::PositionPolicy::kCompact
                                               : model::PositionPolicy::kAbsolute;
}

}  // namespace

absl::Status ValidateSessionId(absl::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError("session_id: must not be empty");
  if (id.size() > 128) return absl::InvalidArgumentError("session_id: at most 128 characters");
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return absl::InvalidArgumentError(
          "session_id: only letters, digits, '-', '_' and '.' are allowed");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request) {
  // proto3 keeps unknown enum numbers: refuse them rather than guess.
  if (!v1::AttentionMode_IsValid(request.mode())) {
    return absl::InvalidArgumentError("mode: unknown value");
  }
  if (!v1::PositionPolicy_IsValid(request.position_policy())) {
    return absl::InvalidArgumentError("position_policy: unknown value");
  }
  if (!v1::AnchorInsertion_IsValid(request.anchor_insertion())) {
    return absl::InvalidArgumentError("anchor_insertion: unknown value");
  }
  const int inputs = (!request.prompt().empty()) + (request.prompt_token_ids_size() > 0) +
                     (request.messages_size() > 0);
  if (inputs != 1) {
    return absl::InvalidArgumentError(
        "prompt: give exactly one of prompt, prompt_token_ids and messages");
  }
  // The engine thread works through these per request (spans) or per generated token (stop
  // conditions), for every stream at once: bounded so that one request cannot stall the others
  // (docs/SECURITY.md).
  if (request.kept_full_spans_size() > kMaxKeptFullSpans) {
    return absl::InvalidArgumentError(
        absl::StrCat("kept_full_spans: at most ", kMaxKeptFullSpans, " spans"));
  }
  if (request.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stop: at most ", kMaxStopStrings, " strings"));
  }
  for (const std::string& stop : request.stop()) {
    if (stop.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop: strings of at most ", kMaxStopStringBytes, " bytes"));
    }
  }
  if (request.stop_token_ids_size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop_token_ids: at most ", kMaxStopTokenIds, " ids"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> PromptTokens(const v1::GenerateRequest& request,
                                                  const model::Tokenizer* tokenizer,
                                                  const model::AnchorSpec& anchors,
                                                  v1::AnchorInsertion default_insertion,
                                                  bool add_bos) {
  if (absl::Status s = ValidateGenerateRequest(request); !s.ok()) return s;
  if (request.prompt_token_ids_size() > 0) {
    return std::vector<int32_t>(request.prompt_token_ids().begin(),
                                request.prompt_token_ids().end());
  }
  if (tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "prompt: the model has no tokenizer.model; send prompt_token_ids");
  }
  v1::AnchorInsertion insertion = request.anchor_insertion();
  if (insertion == v1::ANCHOR_INSERTION_UNSPECIFIED) insertion = default_insertion;
  const bool ac = anchors.kind == model::AnchorKind::kAc;
  std::string text;
  if (request.messages_size() > 0) {
    for (const std::string& m : request.messages()) {
      if (!text.empty()) text += "\n";
      text += m;
      if (ac && insertion != v1::ANCHOR_INSERTION_NONE &&
          insertion != v1::ANCHOR_INSERTION_CLIENT) {
        text += " " + anchors.anchor_token;
      }
    }
  } else {
    text = request.prompt();
    if (ac && insertion == v1::ANCHOR_INSERTION_SENTENCES) {
      text = model::InsertAnchorsAtSentenceEnds(text, anchors.anchor_token, false);
    } else if (ac && insertion == v1::ANCHOR_INSERTION_MESSAGES) {
      text += " " + anchors.anchor_token;  // the whole prompt is one message
    }
  }
  return tokenizer->Encode(text, add_bos);
}

absl::StatusOr<v1::GenerateRequest> TokenizeRequestAsPrompt(const v1::TokenizeRequest& request) {
  if (request.text().empty()) return absl::InvalidArgumentError("text: must not be empty");
  v1::GenerateRequest as_prompt;
  as_prompt.set_prompt(request.text());
  as_prompt.set_anchor_insertion(request.anchor_insertion());
  return as_prompt;
}

scheduler::GenerationRequest ToGenerationRequest(const v1::GenerateRequest& request,
                                                 std::vector<int32_t> prompt_token_ids,
                                                 v1::AttentionMode default_mode,
                                                 v1::PositionPolicy default_policy,
                                                 uint64_t default_seed) {
  scheduler::GenerationRequest r;
  r.session_id = request.session_id();
  r.prompt_token_ids = std::move(prompt_token_ids);
  r.max_tokens = request.max_tokens();
  if (request.has_temperature()) r.sampling.temperature = request.temperature();
  if (request.has_top_k()) r.sampling.top_k = request.top_k();
  if (request.has_top_p()) r.sampling.top_p = request.top_p();
  if (request.has_min_p()) r.sampling.min_p = request.min_p();
  if (request.has_repetition_penalty()) {
    r.sampling.repetition_penalty = request.repetition_penalty();
  }
  r.sampling.seed = request.has_seed() ? request.seed() : default_seed;
  r.stop_strings.assign(request.stop().begin(), request.stop().end());
  r.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  r.mode = ModeOf(request.mode(), default_mode);
  r.position_policy = PolicyOf(request.position_policy(), default_policy);
  for (const auto& span : request.kept_full_spans()) {
    r.kept_full_spans.push_back({span.begin(), span.end()});
  }
  r.include_anchor_tokens = request.include_anchor_tokens();
  r.ignore_eos = request.ignore_eos();
  r.priority = request.priority();
  return r;
}

absl::StatusOr<int32_t> ListSessionsPageSize(const v1::ListSessionsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > 1000) {
    return absl::InvalidArgumentError("page_size: must be in [0, 1000]");
  }
  return request.page_size() == 0 ? 100 : request.page_size();
}

absl::Status ValidateImportSessionRequest(const v1::ImportSessionRequest& request) {
  if (absl::Status s = ValidateSessionId(request.session_id()); !s.ok()) return s;
  if (request.state().empty()) return absl::InvalidArgumentError("state: must not be empty");
  return absl::OkStatus();
}

}  // namespace anchorserve::server
