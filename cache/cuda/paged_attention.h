// Decode attention over the anchor-native paged KV layout (cache/block_pool_impl.h), one new
// query token per sequence, bf16, sm_90. Torch-free: the caller passes raw device pointers and
// the stream, so this header and its .cu compile without libtorch.
//
// Each sequence's kept entries are a list of segments: a block id plus how many of its slots
// are filled, flagged when the block belongs to the anchor region. A query flagged as an
// anchor skips anchor-region segments (Eq. 4 of the paper: anchors do not attend to earlier
// anchors); every query also attends to its own new key/value, which is passed separately and
// written into its destination slot by the same launch.
#ifndef ANCHORSERVE_CACHE_CUDA_PAGED_ATTENTION_H_
#define ANCHORSERVE_CACHE_CUDA_PAGED_ATTENTION_H_

#include <cstdint>

namespace anchorserve::cache::cuda {

inline constexpr int32_t kSegmentAnchorFlag = 1 << 16;  // in a segment's info word
inline constexpr int32_t kSegmentLengthMask = 0xffff;

struct PagedDecodeArgs {
  // Queries (RoPE applied) [n, heads, head_dim]; new keys (RoPE applied) and values
  // [n, kv_heads, head_dim]; row strides in elements between consecutive tokens.
  const void* q = nullptr;
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  int64_t q_row = 0, k_row = 0, v_row = 0;
  // The pool: [blocks, layers, 2, kv_heads, block_tokens, head_dim], contiguous.
  void* kv = nullptr;
  int32_t layers = 0, layer = 0, block_tokens = 0;
  // CSR over sequences: segments of sequence i are [seg_start[i], seg_start[i + 1]).
  const int32_t* seg_start = nullptr;  // [n + 1]
  const int32_t* seg_block = nullptr;  // [segments]
  const int32_t* seg_info = nullptr;   // [segments]: filled slots | kSegmentAnchorFlag
  const int32_t* query_anchor = nullptr;  // [n]: 1 when the query token is an anchor
  // Where the new key/value goes in `kv`; dst_block < 0: nowhere (padding rows).
  const int32_t* dst_block = nullptr;  // [n]
  const int32_t* dst_offset = nullptr;  // [n]
  // Scratch: [n, heads, splits, head_dim + 2] floats.
  float* workspace = nullptr;
  void* out = nullptr;  // [n, heads, head_dim] bf16, contiguous
  int32_t n = 0, heads = 0, kv_heads = 0, head_dim = 0, splits = 1;
  float scale = 1.0f;
};

// True when the kernel handles this shape (head_dim 64 or 128, block_tokens <= 32).
bool PagedDecodeSupported(int32_t head_dim, int32_t block_tokens);

// Enqueues the attention on `stream` (a cudaStream_t). Returns 0 or a cudaError_t code.
int PagedDecodeAttention(const PagedDecodeArgs& args, void* stream);

}  // namespace anchorserve::cache::cuda

#endif  // ANCHORSERVE_CACHE_CUDA_PAGED_ATTENTION_H_
