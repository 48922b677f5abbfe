// Fuzzes what every anchorserve.v1 request goes through before it reaches the engine
// (server/request_validation.h), with protobuf messages parsed from the input as gRPC would:
// the first byte picks the request type and the server's default anchor insertion, the rest
// is the serialized message. A GenerateRequest goes on to its prompt text with anchors
// inserted by the sentence splitter and encoded by the default model's tokenizer (AnLLM-AC,
// <AC>), then to the engine request, whose sampling values ValidateSamplingParams checks;
// an ImportSessionRequest's state goes to DecodeSnapshot as the engine's import would.
//
// Properties besides no crash: validation errors are InvalidArgument; PromptTokens agrees with
// ValidateGenerateRequest and returns only in-vocabulary ids for text; the engine request
// carries the prompt and the fields through unchanged; accepted session ids, page sizes and
// imported states are within their documented bounds.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "anchorserve/v1/anchorserve.pb.h"
#include "cache/session_snapshot.h"
#include "fuzz/fuzz_check.h"
#include "google/protobuf/stubs/logging.h"
#include "model/anchors.h"
#include "model/model_config.h"
#include "model/sampling.h"
#include "model/tokenizer.h"
#include "server/request_validation.h"

namespace anchorserve::server {
namespace {

namespace v1 = ::anchorserve::v1;

// What the engine would hold for the default model.
struct DefaultModel {
  std::unique_ptr<model::Tokenizer> tokenizer;
  model::AnchorSpec anchors;
};

const DefaultModel& TheModel() {
  static const DefaultModel* const loaded = [] {
    // gRPC refuses unparsable messages quietly; so do we, instead of logging each one.
    google::protobuf::SetLogHandler(nullptr);
    const std::string dir = fuzz::DataDir() + "/default_model";
    auto* m = new DefaultModel;
    absl::StatusOr<std::unique_ptr<model::Tokenizer>> tokenizer = model::Tokenizer::Load(dir);
    absl::StatusOr<model::ModelConfig> config = model::LoadModelConfig(dir);
    if (!tokenizer.ok() || !config.ok()) {
      std::fprintf(stderr, "cannot load the fuzz model from %s\n", dir.c_str());
      std::abort();
    }
    m->tokenizer = *std::move(tokenizer);
    absl::StatusOr<model::AnchorSpec> anchors =
        model::DetectAnchors(dir, *config, m->tokenizer.get());
    if (!anchors.ok() || anchors->kind != model::AnchorKind::kAc) std::abort();
    m->anchors = *std::move(anchors);
    return m;
  }();
  return *loaded;
}

void CheckInvalidArgument(const absl::Status& status) {
  FUZZ_CHECK(status.ok() || absl::IsInvalidArgument(status));
}

void CheckPromptTokens(const v1::GenerateRequest& request, v1::AnchorInsertion default_insertion,
                       bool add_bos) {
  const DefaultModel& m = TheModel();
  const absl::Status valid = ValidateGenerateRequest(request);
  CheckInvalidArgument(valid);
  absl::StatusOr<std::vector<int32_t>> tokens =
      PromptTokens(request, m.tokenizer.get(), m.anchors, default_insertion, add_bos);
  FUZZ_CHECK(tokens.status() == valid);
  if (!tokens.ok()) return;
  if (request.prompt_token_ids_size() > 0) {
    FUZZ_CHECK(tokens->size() == static_cast<size_t>(request.prompt_token_ids_size()));
  } else {
    for (int32_t id : *tokens) FUZZ_CHECK(id >= 0 && id < m.tokenizer->vocab_size());
    // The Tokenize RPC answers with each id's piece.
    for (int32_t id : *tokens) (void)m.tokenizer->IdToPiece(id);
  }
  // A model without a tokenizer takes token ids only.
  absl::StatusOr<std::vector<int32_t>> without =
      PromptTokens(request, nullptr, m.anchors, default_insertion, add_bos);
  FUZZ_CHECK(without.ok() == (request.prompt_token_ids_size() > 0));

  const std::vector<int32_t> prompt = *tokens;
  const scheduler::GenerationRequest r =
      ToGenerationRequest(request, *std::move(tokens), v1::ATTENTION_MODE_ANCHOR,
                          v1::POSITION_POLICY_ABSOLUTE, /*default_seed=*/7);
  FUZZ_CHECK(r.prompt_token_ids == prompt);
  FUZZ_CHECK(r.max_tokens == request.max_tokens());
  FUZZ_CHECK(r.kept_full_spans.size() == static_cast<size_t>(request.kept_full_spans_size()));
  FUZZ_CHECK(r.stop_strings.size() == static_cast<size_t>(request.stop_size()));
  FUZZ_CHECK(r.sampling.seed == (request.has_seed() ? request.seed() : 7));
  CheckInvalidArgument(model::ValidateSamplingParams(r.sampling));
}

void FuzzGenerate(const std::string& bytes, v1::AnchorInsertion default_insertion) {
  v1::GenerateRequest request;
  if (!request.ParseFromString(bytes)) return;
  CheckPromptTokens(request, default_insertion, /*add_bos=*/true);
  CheckPromptTokens(request, default_insertion, request.add_bos());
}

void FuzzTokenize(const std::string& bytes, v1::AnchorInsertion default_insertion) {
  v1::TokenizeRequest request;
  if (!request.ParseFromString(bytes)) return;
  absl::StatusOr<v1::GenerateRequest> as_prompt = TokenizeRequestAsPrompt(request);
  CheckInvalidArgument(as_prompt.status());
  FUZZ_CHECK(as_prompt.ok() == !request.text().empty());
  if (as_prompt.ok()) CheckPromptTokens(*as_prompt, default_insertion, request.add_bos());
}

void CheckSessionId(const std::string& id) {
  const absl::Status status = ValidateSessionId(id);
  CheckInvalidArgument(status);
  if (!status.ok()) return;
  FUZZ_CHECK(!id.empty() && id.size() <= 128);
  for (char c : id) {
    FUZZ_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.');
  }
}

void FuzzCreateSession(const std::string& bytes) {
  v1::CreateSessionRequest request;
  if (!request.ParseFromString(bytes)) return;
  if (!request.session_id().empty()) CheckSessionId(request.session_id());
}

void FuzzListSessions(const std::string& bytes) {
  v1::ListSessionsRequest request;
  if (!request.ParseFromString(bytes)) return;
  absl::StatusOr<int32_t> page = ListSessionsPageSize(request);
  CheckInvalidArgument(page.status());
  if (page.ok()) FUZZ_CHECK(*page >= 1 && *page <= 1000);
}

void FuzzImportSession(const std::string& bytes) {
  v1::ImportSessionRequest request;
  if (!request.ParseFromString(bytes)) return;
  const absl::Status status = ValidateImportSessionRequest(request);
  CheckInvalidArgument(status);
  CheckSessionId(request.session_id());
  if (!status.ok()) return;
  FUZZ_CHECK(!request.state().empty());
  absl::StatusOr<cache::SessionSnapshot> snapshot =
      cache::DecodeSnapshot(request.state(), "imported session state");
  FUZZ_CHECK(snapshot.ok() || absl::IsDataLoss(snapshot.status()));
  if (snapshot.ok()) FUZZ_CHECK(cache::EncodeSnapshot(*snapshot) == request.state());
}

}  // namespace
}  // namespace anchorserve::server

// Input: one byte (request type in the low 3 bits, the server's default anchor insertion in
// the next 2), then the serialized request.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace anchorserve::server;  // NOLINT(build/namespaces): a fuzz entry point
  namespace v1 = ::anchorserve::v1;
  if (size == 0) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto insertion = static_cast<v1::AnchorInsertion>(1 + ((data[0] >> 3) & 3));
  switch (data[0] & 7) {
    case 0:
    case 1:
    case 2:
      FuzzGenerate(bytes, insertion);
      break;
    case 3:
      FuzzTokenize(bytes, insertion);
      break;
    case 4:
      FuzzCreateSession(bytes);
      break;
    case 5:
      FuzzListSessions(bytes);
      break;
    default:
      FuzzImportSession(bytes);
      break;
  }
  return 0;
}
