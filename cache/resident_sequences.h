// The resident tier of the session store: sessions whose KV lives in the block pool, each a
// PagedSequence, addressed by handle. Owned by the engine thread together with the pool.
#ifndef ANCHORSERVE_CACHE_RESIDENT_SEQUENCES_H_
#define ANCHORSERVE_CACHE_RESIDENT_SEQUENCES_H_

#include <cstdint>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "cache/paged_sequence.h"
#include "cache/session_store.h"

namespace anchorserve::cache {

class ResidentSequences : public ResidentSessions {
 public:
  // `model` and `pool` must outlive this object. `anchors` and `fingerprint` are those of the
  // served model; restored sequences take mode and policy from their snapshot.
  ResidentSequences(const model::LlamaModel* model, BlockPool* pool, model::AnchorSpec anchors,
                    std::string fingerprint);
  ~ResidentSequences() override;

  // Takes ownership of a sequence (e.g. after its first turn) and returns its handle.
  uint64_t Insert(std::unique_ptr<PagedSequence> sequence);
  // The sequence behind `handle`, or null.
  PagedSequence* Get(uint64_t handle) const;
  // A copy of the sequence behind `handle` for the next turn, so the session's committed
  // state stays intact until the turn commits (SessionStore's handle contract).
  // ResourceExhausted when the pool cannot hold the copy.
  absl::StatusOr<uint64_t> Fork(uint64_t handle);
  int64_t size() const { return static_cast<int64_t>(sequences_.size()); }

  // ResidentSessions:
  absl::StatusOr<SessionSnapshot> Snapshot(uint64_t handle) override;
  void Release(uint64_t handle) override;
  absl::StatusOr<uint64_t> Restore(const SessionSnapshot& snapshot) override;
  int64_t ResidentBytes(uint64_t handle) const override;

 private:
  const model::LlamaModel* model_;
  BlockPool* pool_;
  model::AnchorSpec anchors_;
  std::string fingerprint_;
  uint64_t next_handle_ = 1;
  absl::flat_hash_map<uint64_t, std::unique_ptr<PagedSequence>> sequences_;
};

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_RESIDENT_SEQUENCES_H_
