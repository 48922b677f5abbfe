// Teacher-forced scoring of one token sequence under the three attention paths the evaluator
// compares: plain causal, the AnSAN-masked full forward (what the paper's "+AnSAN" numbers are)
// and the incremental anchor-cached path with REDUCTION. Perplexity (ppl.h) and multiple-choice
// accuracy (mc.h) are both sums over these per-token scores. Torch-free: only the model's
// public API (ForwardFull, AnchorSequence::Feed, BuildCausalMask, BuildAnsanMask).
//
// Threads: every function here may run concurrently with others; the model is used only
// through its const methods and each call owns the AnchorSequence it creates.
#ifndef ANCHORSERVE_EVAL_SCORING_H_
#define ANCHORSERVE_EVAL_SCORING_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/anchor_sequence.h"
#include "model/anchors.h"
#include "model/llama.h"

namespace anchorserve::eval {

// kFull: one ForwardFull with the causal mask (the plain Llama).
// kMasked: one ForwardFull with the AnSAN mask over the whole sequence, absolute positions; no
//   cache, no reduction (anllm-reference.md §5.1, §5.5).
// kAnchor: AnchorSequence in anchor mode, fed in chunks; the cache is reduced to anchors as it
//   goes. Under the absolute position policy it equals kMasked up to float rounding.
enum class EvalMode { kFull, kMasked, kAnchor };

absl::StatusOr<EvalMode> ParseEvalMode(absl::string_view name);  // full | masked | anchor
absl::string_view EvalModeName(EvalMode mode);

// -log softmax(row)[target], accumulated in double. Precondition: 0 <= target < row.size().
double NextTokenNll(absl::Span<const float> row, int32_t target);

// Index of the largest entry (the first one on ties, as numpy's argmax). Precondition: non-empty.
int32_t ArgMax(absl::Span<const float> row);

// The number of KV entries an anchor-mode AnchorSequence keeps after consuming ids[0..t], for
// every t: the anchors so far plus the tokens after the last of them (the open sentence). It
// does not depend on how the tokens are chunked, and EvaluateSequence checks it against the
// sequence after every Feed.
std::vector<int64_t> KeptAfterEachToken(absl::Span<const int32_t> ids,
                                        const model::AnchorSpec& anchors);

// Number of ids in `ids` that are anchors of `anchors`.
int64_t CountAnchors(absl::Span<const int32_t> ids, const model::AnchorSpec& anchors);

struct ScoringOptions {
  EvalMode mode = EvalMode::kMasked;
  // Anchors (kMasked, kAnchor) and the position policy (kAnchor only; kFull and kMasked always
  // use absolute positions 0..L-1). `sequence.mode` is ignored: it follows `mode`.
  model::SequenceOptions sequence;
  // kAnchor: tokens per Feed call; 0 = each segment (see `breaks`) in a single Feed. Every
  // chunking gives the same logits (docs/DECISIONS.md, "Chunked prefill is exact").
  int64_t chunk = 0;
};

struct SequenceScores {
  // For every target index i in [first_target, L): -log p(ids[i] | ids[0..i)) and whether the
  // predicting row's argmax is ids[i]. Element k belongs to target first_target + k.
  std::vector<double> nll;
  std::vector<uint8_t> greedy;
  // kAnchor only (empty otherwise): KeptAfterEachToken(ids), checked against the live sequence
  // after every Feed; and the largest number of keys one Feed step attended to (kept cache +
  // the chunk), which depends on the chunking.
  std::vector<int64_t> kept_after;
  int64_t peak_step_kv = 0;
};

// Scores ids[first_target..] given everything before them, in `options.mode`. `breaks` are
// token indices where a Feed must end (kAnchor; ignored otherwise), e.g. the end of the
// few-shot demonstrations so that the state there is observable.
// Errors: InvalidArgument when first_target is not in [1, L) or ids fall outside the
// vocabulary; OutOfRange when L exceeds the model's max_position_embeddings; Internal when the
// live cache length disagrees with KeptAfterEachToken; whatever the model returns.
absl::StatusOr<SequenceScores> ScoreSequence(const model::LlamaModel& model,
                                             absl::Span<const int32_t> ids, int64_t first_target,
                                             const ScoringOptions& options,
                                             absl::Span<const int64_t> breaks = {});

// The incremental state after feeding a prefix, to score many continuations of it without
// recomputing it: ids[0, length) fed in `mode` (kAnchor: REDUCTION applied; kFull: a full
// cache) with `options`' anchors, policy and chunking.
struct PrefixState {
  std::unique_ptr<model::AnchorSequence> sequence;
  int64_t length = 0;
};
absl::StatusOr<PrefixState> FeedPrefix(const model::LlamaModel& model,
                                       absl::Span<const int32_t> prefix,
                                       const ScoringOptions& options, model::AttentionMode mode);

// As ScoreSequence in kAnchor mode with a break at prefix.length, but continuing from a fork
// of `prefix` (ids must start with the prefix's tokens; first_target > prefix.length). The
// scores are identical to ScoreSequence's; only the prefix is not recomputed. With a kFull
// prefix the continuation is fed with a full cache too (full caching, for timing).
absl::StatusOr<SequenceScores> ScoreAfterPrefix(const model::LlamaModel& model,
                                                const PrefixState& prefix,
                                                absl::Span<const int32_t> ids,
                                                int64_t first_target,
                                                const ScoringOptions& options);

}  // namespace anchorserve::eval

#endif  // ANCHORSERVE_EVAL_SCORING_H_
