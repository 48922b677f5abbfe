#include "cache/block_pool.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cache/block_pool_impl.h"

#ifdef ANCHORSERVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace anchorserve::cache {

KvGeometry GeometryOf(const model::ModelConfig& config, model::Precision precision) {
  KvGeometry g;
  g.num_layers = config.num_hidden_layers;
  g.num_kv_heads = config.num_key_value_heads;
  g.head_dim = config.head_dim;
  g.dtype_bytes = precision == model::Precision::kBFloat16 ? 2 : 4;
  return g;
}

BlockPool::BlockPool(const BlockPoolOptions& options, int64_t blocks,
                     std::unique_ptr<BlockStorage> storage)
    : options_(options),
      total_blocks_(blocks),
      storage_(std::move(storage)),
      allocated_(static_cast<size_t>(blocks), 0) {
  free_.reserve(static_cast<size_t>(blocks));
  // Lowest ids on top of the stack: allocation order is deterministic.
  for (int64_t b = blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

BlockPool::~BlockPool() = default;

absl::StatusOr<std::unique_ptr<BlockPool>> BlockPool::Create(const BlockPoolOptions& options) {
  const KvGeometry& g = options.geometry;
  if (g.num_layers <= 0 || g.num_kv_heads <= 0 || g.head_dim <= 0 || options.block_tokens <= 0 ||
      (g.dtype_bytes != 2 && g.dtype_bytes != 4)) {
    return absl::InvalidArgumentError("KV pool: geometry and block_tokens must be positive");
  }
  const int64_t block_bytes = options.block_tokens * g.bytes_per_token();
  int64_t budget = options.budget_bytes;
  if (options.free_memory_fraction > 0) {
    if (options.device != model::Device::kCuda) {
      return absl::InvalidArgumentError(
          "KV pool: free_memory_fraction applies to the CUDA device only; set budget_bytes");
    }
    if (options.free_memory_fraction >= 1.0) {
      return absl::InvalidArgumentError("KV pool: free_memory_fraction must be in (0, 1)");
    }
#ifdef ANCHORSERVE_CUDA
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      return absl::FailedPreconditionError("KV pool: cannot query free CUDA memory");
    }
    budget = std::max(budget, static_cast<int64_t>(options.free_memory_fraction *
                                                   static_cast<double>(free_bytes)));
#else
    return absl::FailedPreconditionError("KV pool: this build has no CUDA");
#endif
  }
  const int64_t blocks = budget / block_bytes;
  if (blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV pool: budget of ", budget,
                                                   " bytes is below one block (", block_bytes,
                                                   " bytes)"));
  }
  if (blocks > INT32_MAX) return absl::InvalidArgumentError("KV pool: too many blocks");
  c10::InferenceMode guard;
  auto storage = std::make_unique<BlockStorage>();
  try {
    const at::ScalarType type =
        options.precision == model::Precision::kBFloat16 ? at::kBFloat16 : at::kFloat;
    // cuda: the calling thread's current device, which model::LlamaModel::Load set to the
    // weights' LoadOptions::device_index (a worker per GPU; scheduler/worker_pool.h). The
    // free-memory query above reads the same device.
    const at::Device device = options.device == model::Device::kCuda
                                  ? c10::impl::getDeviceGuardImpl(at::kCUDA)->getDevice()
                                  : at::Device(at::kCPU);
    storage->kv = at::empty({blocks, g.num_layers, 2, g.num_kv_heads, options.block_tokens,
                             g.head_dim},
                            at::TensorOptions().dtype(type).device(device));
  } catch (const std::exception& e) {
    const std::string message = e.what();
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV pool: cannot allocate ", blocks * block_bytes, " bytes: ",
        message.substr(0, message.find('\n'))));
  }
  return std::unique_ptr<BlockPool>(new BlockPool(options, blocks, std::move(storage)));
}

absl::StatusOr<int32_t> BlockPool::Allocate() {
  if (fail_countdown_ > 0 && --fail_countdown_ == 0) {
    return absl::ResourceExhaustedError("KV pool exhausted (injected allocation failure)");
  }
  if (free_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV pool exhausted: all ", total_blocks_, " blocks of ",
                     options_.block_tokens, " tokens are in use"));
  }
  const int32_t block = free_.back();
  free_.pop_back();
  allocated_[block] = 1;
  return block;
}

void BlockPool::Free(int32_t block) {
  if (block < 0 || block >= total_blocks_ || !allocated_[block]) return;  // guarded no-op
  allocated_[block] = 0;
  free_.push_back(block);
}

}  // namespace anchorserve::cache
