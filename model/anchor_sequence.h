// Incremental inference for one sequence over a reference KV cache, with REDUCTION to anchors
// exactly as anllm-reference.md §4 describes. This is the single-sequence reference that the
// paged cache (cache/) and the batched engine (scheduler/) are checked against.
#ifndef ANCHORSERVE_MODEL_ANCHOR_SEQUENCE_H_
#define ANCHORSERVE_MODEL_ANCHOR_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/anchors.h"
#include "model/llama.h"

namespace anchorserve::model {

// kFull keeps every token and attends causally; kAnchor applies the AnSAN mask and keeps only
// anchors plus the current sentence.
enum class AttentionMode { kFull, kAnchor };

// RoPE position of a new token: kAbsolute = the number of tokens the sequence has seen (what
// training saw); kCompact = the current kept-cache length (the released code's behaviour,
// positions go backwards after each reduction).
enum class PositionPolicy { kAbsolute, kCompact };

absl::StatusOr<AttentionMode> ParseAttentionMode(absl::string_view name);    // full | anchor
absl::StatusOr<PositionPolicy> ParsePositionPolicy(absl::string_view name);  // absolute | compact
absl::string_view AttentionModeName(AttentionMode mode);
absl::string_view PositionPolicyName(PositionPolicy policy);

struct SequenceOptions {
  AttentionMode mode = AttentionMode::kAnchor;
  PositionPolicy policy = PositionPolicy::kAbsolute;
  AnchorSpec anchors;
};

// One kept KV entry (the same for every layer).
struct KvEntry {
  int32_t token;
  int64_t position;  // RoPE position its key was rotated with
  bool anchor;
};

struct LayerKV;

// Not thread-safe; owned by one caller. The model must outlive the sequence.
class AnchorSequence {
 public:
  static absl::StatusOr<std::unique_ptr<AnchorSequence>> Create(const LlamaModel* model,
                                                                SequenceOptions options);
  ~AnchorSequence();

  // Feeds `ids` (a prefill chunk, or one sampled token fed back) and returns logits: S x V
  // (row-major fp32) when `all_logits`, else the last row only (V). In anchor mode a chunk
  // that contains anchors reduces the cache in this same step, after computing their keys:
  // kept = old anchors + the chunk's anchors + the chunk's tokens after its last anchor.
  // Attention follows Eq. 4 exactly also for multi-token chunks after a non-empty cache (the
  // released code lets tokens after an in-chunk anchor see the old tail; we do not).
  // Errors: InvalidArgument (empty chunk, id outside the vocabulary), OutOfRange (a position
  // would reach max_position_embeddings), ResourceExhausted (device out of memory). On error
  // the sequence is unchanged.
  absl::StatusOr<std::vector<float>> Feed(absl::Span<const int32_t> ids, bool all_logits);

  // An independent sequence in this one's exact state. The KV tensors are shared, not copied:
  // Feed never writes them in place (it builds new ones), so a fork costs no device memory
  // until one side feeds more. For reusing a prompt prefix, e.g. few-shot demonstrations.
  std::unique_ptr<AnchorSequence> Fork() const;

  const std::vector<KvEntry>& entries() const { return entries_; }
  int64_t kv_tokens() const { return static_cast<int64_t>(entries_.size()); }
  int64_t peak_kv_tokens() const { return peak_kv_tokens_; }
  int64_t tokens_seen() const { return tokens_seen_; }  // full-equivalent cache length
  int64_t anchors() const { return anchors_; }
  const SequenceOptions& options() const { return options_; }

 private:
  AnchorSequence(const LlamaModel* model, SequenceOptions options);

  const LlamaModel* model_;
  SequenceOptions options_;
  std::vector<KvEntry> entries_;
  std::vector<LayerKV> kv_;  // per layer [kv_heads, entries, head_dim]
  int64_t tokens_seen_ = 0;
  int64_t anchors_ = 0;
  int64_t peak_kv_tokens_ = 0;
};

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_ANCHOR_SEQUENCE_H_
