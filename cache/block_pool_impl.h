// Torch side of BlockPool: the single KV tensor. Included only by cache/ translation units.
#ifndef ANCHORSERVE_CACHE_BLOCK_POOL_IMPL_H_
#define ANCHORSERVE_CACHE_BLOCK_POOL_IMPL_H_

#include <ATen/ATen.h>

#include "cache/block_pool.h"

namespace anchorserve::cache {

struct BlockStorage {
  // [blocks, layers, 2 (K, V), kv_heads, block_tokens, head_dim]
  at::Tensor kv;
};

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_BLOCK_POOL_IMPL_H_
