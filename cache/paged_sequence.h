// One sequence's KV in the anchor-native paged layout (docs/ARCHITECTURE.md): densely packed
// anchor slots (append-only), kept-full spans, and the current sentence's blocks, all in
// BlockPool blocks. REDUCTION writes the anchor's keys/values into its slot and frees the
// sentence blocks wholesale: one token copied, never a compaction. `full` mode keeps every
// token as kept-full, so anchor and full attention run on the same code.
#ifndef ANCHORSERVE_CACHE_PAGED_SEQUENCE_H_
#define ANCHORSERVE_CACHE_PAGED_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/block_pool.h"
#include "cache/session_snapshot.h"
#include "model/anchor_sequence.h"
#include "model/llama.h"

namespace anchorserve::cache {

// How DecodeBatch computes attention. kAuto: the CUDA kernel where it applies (CUDA build,
// bf16, head_dim 64/128, block_tokens <= 32), else the gathering reference.
enum class DecodeAttention { kAuto, kReference, kKernel };

struct DecodeOptions {
  DecodeAttention attention = DecodeAttention::kAuto;
  bool cuda_graphs = true;  // kernel path: replay a captured graph per batch-size bucket
};

struct PagedSequenceOptions {
  model::AttentionMode mode = model::AttentionMode::kAnchor;
  model::PositionPolicy policy = model::PositionPolicy::kAbsolute;
  model::AnchorSpec anchors;
  std::string model_fingerprint;  // stamped into snapshots; checked on restore
};

// Not thread-safe: used by the engine thread that owns the pool. The model and the pool must
// outlive the sequence; the destructor returns every block to the pool.
class PagedSequence {
 public:
  static absl::StatusOr<std::unique_ptr<PagedSequence>> Create(const model::LlamaModel* model,
                                                               BlockPool* pool,
                                                               PagedSequenceOptions options);
  // A sequence holding `snapshot`'s state (a session resumed from the host or disk tier or
  // imported). Errors: InvalidArgument when the snapshot belongs to another model or shape,
  // ResourceExhausted when the pool lacks blocks (nothing is allocated then).
  static absl::StatusOr<std::unique_ptr<PagedSequence>> Restore(const model::LlamaModel* model,
                                                                BlockPool* pool,
                                                                PagedSequenceOptions options,
                                                                const SessionSnapshot& snapshot);
  ~PagedSequence();
  PagedSequence(const PagedSequence&) = delete;
  PagedSequence& operator=(const PagedSequence&) = delete;

  // Feeds a chunk (prefill or one decoded token) and returns S x V logits (`all_logits`) or
  // the last row. `kept_full`: empty, or one flag per token of `ids` marking tokens of a
  // kept-full span (docs/KV_CACHE.md: kept forever and visible to every later token).
  // Attention is exactly the AnSAN mask (plus the spans) over the history, for any chunking.
  // Errors: InvalidArgument, OutOfRange (position limit), ResourceExhausted (pool full or
  // device OOM). On error nothing changed: no block leaked, the state is as before.
  absl::StatusOr<std::vector<float>> Feed(absl::Span<const int32_t> ids, bool all_logits,
                                          absl::Span<const uint8_t> kept_full = {});
  // Feed without logits: the chunk's keys/values are computed and stored, nothing is copied
  // back, so on CUDA the call does not wait for the device (prefill chunks before the last).
  absl::Status Prefill(absl::Span<const int32_t> ids, absl::Span<const uint8_t> kept_full = {});

  // Kept entries in attention order: anchors, kept-full, then the current sentence.
  std::vector<SnapshotEntry> entries() const;
  KvAccounting accounting() const;
  int64_t blocks_held() const;
  // New blocks feeding `token` next (alone, not in a kept-full span) would allocate: 0 or 1.
  int64_t BlocksForNext(int32_t token) const;
  int64_t next_position() const { return next_position_; }
  const PagedSequenceOptions& options() const { return options_; }

  // A copy in fresh blocks of the same pool, copied device to device (a session's next turn
  // runs on a clone, so the committed state survives a failed turn). ResourceExhausted when
  // the pool cannot hold the copy; nothing is allocated then.
  absl::StatusOr<std::unique_ptr<PagedSequence>> Clone() const;

  // Copies the state out (keys/values to host memory). The sequence is unchanged.
  absl::StatusOr<SessionSnapshot> Snapshot() const;

  // One decode step for several sequences in one batched forward: feeds tokens[i] to
  // seqs[i] (distinct sequences of one model and pool) and returns their last-token logits,
  // row-major [n, vocab]. The result equals n separate Feed() calls. On CUDA with bf16 the
  // attention is the paged kernel (cache/cuda/), launched through a CUDA graph per batch-size
  // bucket, with one device synchronization (the logits); elsewhere it gathers the layout.
  // Errors as Feed(); ResourceExhausted when the pool lacks a block for some sequence. On
  // error no sequence changed.
  // `greedy` non-null: only each row's argmax is wanted (greedy sampling); it is computed on
  // the device and stored there, the returned logits are empty and only n ids cross to the
  // host.
  static absl::StatusOr<std::vector<float>> DecodeBatch(absl::Span<PagedSequence* const> seqs,
                                                        absl::Span<const int32_t> tokens,
                                                        const DecodeOptions& options = {},
                                                        std::vector<int32_t>* greedy = nullptr);

 private:
  struct Region {
    std::vector<SnapshotEntry> entries;
    std::vector<int32_t> blocks;
  };
  // Where a chunk's tokens go after this step's REDUCTION, with the blocks it needs already
  // allocated (cache/paged_sequence.cc).
  struct Placement {
    std::vector<int64_t> to_anchor, to_kept, to_sentence;
    std::vector<int64_t> positions;
    bool clear_sentence = false;
    int64_t chunk_anchors = 0;
    int64_t sentence_base = 0;
    std::vector<int32_t> fresh;  // allocated for this chunk; freed on abort
    std::vector<int32_t> anchor_blocks, kept_blocks, sentence_blocks;  // after the chunk
    std::vector<int64_t> src, dst_block, dst_offset;  // chunk index -> slot, written tokens
  };
  enum class Logits { kNone, kLast, kAll };
  absl::StatusOr<std::vector<float>> Forward(absl::Span<const int32_t> ids, Logits logits,
                                             absl::Span<const uint8_t> kept_full);
  absl::Status CheckChunk(absl::Span<const int32_t> ids, absl::Span<const uint8_t> kept_full,
                          int64_t kept_entries) const;
  absl::StatusOr<Placement> Place(absl::Span<const int32_t> ids,
                                  absl::Span<const uint8_t> kept_full);
  void Abort(const Placement& placement);
  void Apply(absl::Span<const int32_t> ids, Placement placement);
  // Kept entries as (block, filled slots | anchor flag) segments in attention order.
  void AppendSegments(std::vector<int32_t>* block, std::vector<int32_t>* info) const;

  PagedSequence(const model::LlamaModel* model, BlockPool* pool, PagedSequenceOptions options);
  void FreeRegion(Region& region);

  const model::LlamaModel* model_;
  BlockPool* pool_;
  PagedSequenceOptions options_;
  Region anchors_, kept_full_, sentence_;
  int64_t next_position_ = 0;  // tokens seen (the absolute position counter)
  int64_t anchors_seen_ = 0;
  int64_t peak_kept_ = 0;
};

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_PAGED_SEQUENCE_H_
