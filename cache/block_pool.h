// Device memory for keys and values: one allocation at start-up, cut into fixed-size blocks
// of `block_tokens` token slots each (all layers, K and V). Allocation and release are O(1)
// free-list operations that never touch the framework allocator.
#ifndef ANCHORSERVE_CACHE_BLOCK_POOL_H_
#define ANCHORSERVE_CACHE_BLOCK_POOL_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama.h"

namespace anchorserve::cache {

// The shape of one token's KV over the whole model.
struct KvGeometry {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t dtype_bytes = 4;
  int64_t bytes_per_token() const { return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes; }
};

KvGeometry GeometryOf(const model::ModelConfig& config, model::Precision precision);

struct BlockPoolOptions {
  KvGeometry geometry;
  model::Device device = model::Device::kCpu;
  model::Precision precision = model::Precision::kFloat32;
  int64_t block_tokens = 16;
  // Budget: bytes, or (CUDA) a fraction of the free device memory; the larger wins when both
  // are set. At least one block.
  int64_t budget_bytes = 0;
  double free_memory_fraction = 0.0;
};

struct BlockStorage;  // torch side: cache/block_pool_impl.h

// Not thread-safe: owned by one engine thread, like the model and the scheduler state.
class BlockPool {
 public:
  // Errors: InvalidArgument (bad geometry, budget smaller than one block), ResourceExhausted
  // (the device refuses the allocation).
  static absl::StatusOr<std::unique_ptr<BlockPool>> Create(const BlockPoolOptions& options);
  ~BlockPool();

  // A free block, or ResourceExhausted naming the pool size when none is left.
  absl::StatusOr<int32_t> Allocate();
  // Returns `block` to the free list. Precondition: allocated and not yet freed.
  void Free(int32_t block);

  int64_t total_blocks() const { return total_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_blocks() const { return total_blocks_ - free_blocks(); }
  double usage() const { return static_cast<double>(used_blocks()) / total_blocks_; }
  int64_t block_tokens() const { return options_.block_tokens; }
  int64_t block_bytes() const { return options_.block_tokens * options_.geometry.bytes_per_token(); }
  const BlockPoolOptions& options() const { return options_; }
  BlockStorage& storage() { return *storage_; }

  // Fault injection: the `n`-th Allocate() from now (1 = the next) fails with
  // ResourceExhausted, as if the pool were empty. 0 disarms.
  void TEST_FailAllocation(int64_t n) { fail_countdown_ = n; }

 private:
  BlockPool(const BlockPoolOptions& options, int64_t blocks, std::unique_ptr<BlockStorage> storage);

  BlockPoolOptions options_;
  int64_t total_blocks_;
  std::unique_ptr<BlockStorage> storage_;
  std::vector<int32_t> free_;
  std::vector<uint8_t> allocated_;  // double-free / foreign-block guard
  int64_t fail_countdown_ = 0;
};

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_BLOCK_POOL_H_
