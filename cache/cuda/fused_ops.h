// Fused elementwise kernels of the decode step (bf16), each replacing several framework ops
// with one launch while rounding exactly where the unfused ops round (model/llama.cc):
// HF's RMSNorm (fp32 statistics, scale applied after casting back), RoPE on q and k, and
// SiLU(gate) * up. Torch-free, like paged_attention.h.
#ifndef ANCHORSERVE_CACHE_CUDA_FUSED_OPS_H_
#define ANCHORSERVE_CACHE_CUDA_FUSED_OPS_H_

#include <cstdint>

namespace anchorserve::cache::cuda {

// x [rows, hidden] (+= delta [rows, hidden] first when delta is non-null, x updated in place,
// rounded to bf16 as `x + delta` is); out [rows, hidden] = weight * bf16(rmsnorm(x)).
int AddRmsNorm(void* x, const void* delta, const void* weight, void* out, int64_t rows,
               int64_t hidden, float eps, void* stream);

// In place on qkv [rows, (heads + 2 * kv_heads) * head_dim]: rotates the q and k parts with
// cos/sin [rows, head_dim] (bf16, cat(freqs, freqs) layout).
int RopeQk(void* qkv, const void* cos, const void* sin, int64_t rows, int64_t heads,
           int64_t kv_heads, int64_t head_dim, void* stream);

// out [rows, inter] = bf16(silu(gate)) * up for gate_up [rows, 2 * inter].
int SiluMul(const void* gate_up, void* out, int64_t rows, int64_t inter, void* stream);

// y [m, n] = x [m, k] @ w [n, k]^T for m <= kMaxGemvRows, fp32 accumulation rounded to bf16
// as cuBLAS rounds. One warp per output row streams that row of `w` in 16-byte loads: at
// decode batch sizes the product is a pass over the weights, and this reaches a larger share
// of the memory bandwidth than cuBLAS's small-m kernels. k must be a multiple of 8.
inline constexpr int64_t kMaxGemvRows = 4;  // at 8 rows cuBLAS was faster (measured)
int Gemv(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k, void* stream);

}  // namespace anchorserve::cache::cuda

#endif  // ANCHORSERVE_CACHE_CUDA_FUSED_OPS_H_
