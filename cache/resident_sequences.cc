#include "cache/resident_sequences.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace anchorserve::cache {

ResidentSequences::ResidentSequences(const model::LlamaModel* model, BlockPool* pool,
                                     model::AnchorSpec anchors, std::string fingerprint)
    : model_(model), pool_(pool), anchors_(std::move(anchors)), fingerprint_(std::move(fingerprint)) {}

ResidentSequences::~ResidentSequences() = default;

uint64_t ResidentSequences::Insert(std::unique_ptr<PagedSequence> sequence) {
  const uint64_t handle = next_handle_++;
  sequences_[handle] = std::move(sequence);
  return handle;
}

PagedSequence* ResidentSequences::Get(uint64_t handle) const {
  auto it = sequences_.find(handle);
  return it == sequences_.end() ? nullptr : it->second.get();
}

absl::StatusOr<uint64_t> ResidentSequences::Fork(uint64_t handle) {
  PagedSequence* sequence = Get(handle);
  if (sequence == nullptr) {
    return absl::NotFoundError(absl::StrCat("no resident sequence with handle ", handle));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<PagedSequence> copy, sequence->Clone());
  return Insert(std::move(copy));
}

absl::StatusOr<SessionSnapshot> ResidentSequences::Snapshot(uint64_t handle) {
  PagedSequence* sequence = Get(handle);
  if (sequence == nullptr) {
    return absl::NotFoundError(absl::StrCat("no resident sequence with handle ", handle));
  }
  return sequence->Snapshot();
}

void ResidentSequences::Release(uint64_t handle) { sequences_.erase(handle); }

absl::StatusOr<uint64_t> ResidentSequences::Restore(const SessionSnapshot& snapshot) {
  PagedSequenceOptions options;
  ASSIGN_OR_RETURN(options.mode, model::ParseAttentionMode(snapshot.mode));
  ASSIGN_OR_RETURN(options.policy, model::ParsePositionPolicy(snapshot.position_policy));
  options.anchors = anchors_;
  options.model_fingerprint = fingerprint_;
  ASSIGN_OR_RETURN(std::unique_ptr<PagedSequence> sequence,
                   PagedSequence::Restore(model_, pool_, options, snapshot));
  return Insert(std::move(sequence));
}

int64_t ResidentSequences::ResidentBytes(uint64_t handle) const {
  PagedSequence* sequence = Get(handle);
  return sequence == nullptr ? 0 : sequence->blocks_held() * pool_->block_bytes();
}

}  // namespace anchorserve::cache
