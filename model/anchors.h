// Which tokens are anchors for a model, and how that is decided.
#ifndef ANCHORSERVE_MODEL_ANCHORS_H_
#define ANCHORSERVE_MODEL_ANCHORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace anchorserve::model {

class Tokenizer;
struct ModelConfig;

// AnLLM-AC compresses into an added `<AC>` token, AnLLM-EP into the bare "." piece; a
// model without anchors runs full attention only.
enum class AnchorKind { kNone, kAc, kEp, kCustom };

absl::string_view AnchorKindName(AnchorKind kind);  // "none", "ac", "ep", "custom"

// The anchor token set of one model. Membership is exact token-id equality, as in the
// authors' code: for EP only the bare "." piece counts, never fused pieces like ")." or "...".
struct AnchorSpec {
  AnchorKind kind = AnchorKind::kNone;
  std::vector<int32_t> token_ids;  // sorted, unique
  int32_t pad_id = -1;             // -1: no pad token; pads are masked out wherever they occur
  std::string anchor_token;        // "<AC>" or "." when known; for prompt insertion and docs

  bool IsAnchor(int32_t id) const;
  bool has_anchors() const { return !token_ids.empty(); }
};

// The file the trainer and the model generator write beside config.json.
inline constexpr char kAnchorConfigFile[] = "anchor_config.json";

// Decides a model directory's anchors, first match wins:
//  1. <dir>/anchor_config.json ({"anchor_type":"ac","anchor_token_ids":[...],"pad_token_id":N});
//  2. the released AC layout: the tokenizer knows "<AC>" (added token or piece) -> AC;
//  3. the released EP layout: an added "[PAD]" and vocab_size == SentencePiece size + 1
//     (pangjh3/AnLLM-EP-*) -> EP on the bare "." piece;
//  4. otherwise kNone (a plain Llama: full attention).
// `tokenizer` may be null (a directory without tokenizer.model): then only rule 1 applies.
// Errors: a malformed anchor_config.json (InvalidArgument naming the file and field).
absl::StatusOr<AnchorSpec> DetectAnchors(const std::string& model_dir, const ModelConfig& config,
                                         const Tokenizer* tokenizer);

// An explicit anchor set (e.g. the `--anchor-ids 13,29889` flag). Empty ids -> kNone.
AnchorSpec CustomAnchors(std::vector<int32_t> ids, int32_t pad_id);

// Parses "13,29889" into ids; InvalidArgument naming `field` on junk or negatives.
absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view text, absl::string_view field);

// Serialises `spec` as anchor_config.json text.
std::string AnchorSpecToJson(const AnchorSpec& spec);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_ANCHORS_H_
