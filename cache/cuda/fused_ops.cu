#include "cache/cuda/fused_ops.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace anchorserve::cache::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float Round(float v) { return __bfloat162float(__float2bfloat16(v)); }

// One CTA per row.
__global__ void AddRmsNormKernel(bf16* x, const bf16* delta, const bf16* weight, bf16* out,
                                 int hidden, float eps) {
  const int64_t row = blockIdx.x;
  bf16* xr = x + row * hidden;
  const bf16* dr = delta ? delta + row * hidden : nullptr;
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = __bfloat162float(xr[i]);
    if (dr) {
      v = Round(v + __bfloat162float(dr[i]));
      xr[i] = __float2bfloat16(v);
    }
    sum += v * v;
  }
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) partial[0] = s;
  }
  __syncthreads();
  const float scale = rsqrtf(partial[0] / hidden + eps);
  bf16* orow = out + row * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float normed = Round(__bfloat162float(xr[i]) * scale);
    orow[i] = __float2bfloat16(__bfloat162float(weight[i]) * normed);
  }
}

// One thread per (row, head, pair i < d/2): x1 = x[i], x2 = x[i + d/2];
// out[i] = x1*cos[i] - x2*sin[i], out[i + d/2] = x2*cos[i + d/2] + x1*sin[i + d/2], each
// product and the sum rounded to bf16 as the unfused ops do.
__global__ void RopeKernel(bf16* qkv, const bf16* cos, const bf16* sin, int64_t rows,
                           int heads_qk, int row_stride, int d) {
  const int half = d / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t total = rows * heads_qk * half;
  if (idx >= total) return;
  const int i = idx % half;
  const int64_t head = (idx / half) % heads_qk;
  const int64_t row = idx / (static_cast<int64_t>(half) * heads_qk);
  bf16* x = qkv + row * row_stride + head * d;
  const bf16* c = cos + row * d;
  const bf16* s = sin + row * d;
  const float x1 = __bfloat162float(x[i]), x2 = __bfloat162float(x[i + half]);
  const float lo = Round(Round(x1 * __bfloat162float(c[i])) +
                         Round(Round(-x2) * __bfloat162float(s[i])));
  const float hi = Round(Round(x2 * __bfloat162float(c[i + half])) +
                         Round(x1 * __bfloat162float(s[i + half])));
  x[i] = __float2bfloat16(lo);
  x[i + half] = __float2bfloat16(hi);
}

__global__ void SiluMulKernel(const bf16* gate_up, bf16* out, int64_t rows, int inter) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * inter) return;
  const int64_t row = idx / inter;
  const int col = idx % inter;
  const float g = __bfloat162float(gate_up[row * 2 * inter + col]);
  const float u = __bfloat162float(gate_up[row * 2 * inter + inter + col]);
  const float act = Round(g / (1.f + __expf(-g)));
  out[idx] = __float2bfloat16(act * u);
}

template <int M>
__global__ void __launch_bounds__(256) GemvKernel(const bf16* __restrict__ x,
                                                  const bf16* __restrict__ w,
                                                  bf16* __restrict__ y, int n, int k) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= n) return;
  const bf16* wr = w + static_cast<int64_t>(row) * k;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
#pragma unroll 4
  for (int k0 = lane * 8; k0 < k; k0 += 256) {
    const uint4 wv = __ldcs(reinterpret_cast<const uint4*>(wr + k0));  // read once: stream it
    const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&wv);
    float2 wf[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) wf[i] = __bfloat1622float2(wp[i]);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const uint4 xv = *reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * k + k0);
      const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&xv);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 xf = __bfloat1622float2(xp[i]);
        acc[m] += wf[i].x * xf.x + wf[i].y * xf.y;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float v = acc[m];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[static_cast<int64_t>(m) * n + row] = __float2bfloat16(v);
  }
}

template <int M>
void LaunchGemv(const bf16* x, const bf16* w, bf16* y, int64_t n, int64_t k, cudaStream_t s) {
  GemvKernel<M><<<static_cast<unsigned>((n + 7) / 8), 256, 0, s>>>(x, w, y, static_cast<int>(n),
                                                                     static_cast<int>(k));
}

}  // namespace

int Gemv(const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k, void* stream) {
  if (m <= 0 || m > kMaxGemvRows || k % 8 != 0 || n <= 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const bf16* xb = static_cast<const bf16*>(x);
  const bf16* wb = static_cast<const bf16*>(w);
  bf16* yb = static_cast<bf16*>(y);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (m) {
    case 1: LaunchGemv<1>(xb, wb, yb, n, k, s); break;
    case 2: LaunchGemv<2>(xb, wb, yb, n, k, s); break;
    case 3: LaunchGemv<3>(xb, wb, yb, n, k, s); break;
    default: LaunchGemv<4>(xb, wb, yb, n, k, s); break;
  }
  return static_cast<int>(cudaGetLastError());
}

int AddRmsNorm(void* x, const void* delta, const void* weight, void* out, int64_t rows,
               int64_t hidden, float eps, void* stream) {
  if (rows <= 0) return 0;
  AddRmsNormKernel<<<static_cast<unsigned>(rows), 512, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<bf16*>(x), static_cast<const bf16*>(delta), static_cast<const bf16*>(weight),
      static_cast<bf16*>(out), static_cast<int>(hidden), eps);
  return static_cast<int>(cudaGetLastError());
}

int RopeQk(void* qkv, const void* cos, const void* sin, int64_t rows, int64_t heads,
           int64_t kv_heads, int64_t head_dim, void* stream) {
  const int64_t total = rows * (heads + kv_heads) * (head_dim / 2);
  if (total <= 0) return 0;
  RopeKernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0,
               static_cast<cudaStream_t>(stream)>>>(
      static_cast<bf16*>(qkv), static_cast<const bf16*>(cos), static_cast<const bf16*>(sin), rows,
      static_cast<int>(heads + kv_heads), static_cast<int>((heads + 2 * kv_heads) * head_dim),
      static_cast<int>(head_dim));
  return static_cast<int>(cudaGetLastError());
}

int SiluMul(const void* gate_up, void* out, int64_t rows, int64_t inter, void* stream) {
  const int64_t total = rows * inter;
  if (total <= 0) return 0;
  SiluMulKernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0,
                  static_cast<cudaStream_t>(stream)>>>(static_cast<const bf16*>(gate_up),
                                                       static_cast<bf16*>(out), rows,
                                                       static_cast<int>(inter));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace anchorserve::cache::cuda
