// Torch side of BlockPool: the single KV tensor. Included only by cache/ translation units.
#ifndef ANCHORSERVE_CACHE_BLOCK_POOL_IMPL_H_
#define ANCHORSERVE_CACHE_BLOCK_POOL_IMPL_H_

#include <ATen/ATen.h>

#include <memory>

#include "cache/block_pool.h"

namespace anchorserve::cache {

struct DecodeGraphs;  // cache/batch_decode.cc: captured decode steps (CUDA)

struct BlockStorage {
  // [blocks, layers, 2 (K, V), kv_heads, block_tokens, head_dim]
  at::Tensor kv;
  // Declared after `kv`: graphs that point into it go first.
  std::shared_ptr<DecodeGraphs> decode_graphs;
};

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_BLOCK_POOL_IMPL_H_
