// Flash-decoding over the paged anchor layout: a split kernel, one CTA per (split, query
// head, sequence), each warp streaming whole blocks (K rows read 16 bytes per lane, fully
// coalesced) with an online softmax; then a combine kernel that folds the splits together
// with the query's own key/value and stores that key/value into its slot.
#include "cache/cuda/paged_attention.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

namespace anchorserve::cache::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxBlockTokens = 32;

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    SplitKernel(PagedDecodeArgs a) {
  constexpr int kChunks = D / 8;          // 16-byte chunks per K row
  constexpr int kRowsPerPass = 32 / kChunks;
  constexpr int kPerLane = D / 32;         // V elements a lane accumulates
  const int split = blockIdx.x, h = blockIdx.y, n = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kh = h / (a.heads / a.kv_heads);
  const int begin = a.seg_start[n], end = a.seg_start[n + 1];
  const int per = (end - begin + a.splits - 1) / a.splits;
  const int lo = begin + split * per;
  const int hi = min(end, lo + per);
  const bool query_anchor = a.query_anchor[n] != 0;

  // This lane's 8 query values (scaled), for K chunk `col`.
  const int col = lane % kChunks;
  float qf[8];
  {
    const __nv_bfloat16* q =
        static_cast<const __nv_bfloat16*>(a.q) + n * a.q_row + h * D + col * 8;
    const uint4 raw = *reinterpret_cast<const uint4*>(q);
    const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(pairs[i]);
      qf[2 * i] = f.x * a.scale;
      qf[2 * i + 1] = f.y * a.scale;
    }
  }

  const int64_t head_stride = static_cast<int64_t>(a.block_tokens) * D;
  const int64_t kv_stride = a.kv_heads * head_stride;
  const int64_t layer_stride = 2 * kv_stride;
  const int64_t block_stride = a.layers * layer_stride;
  const __nv_bfloat16* pool = static_cast<const __nv_bfloat16*>(a.kv);

  __shared__ float scores[kWarps][kMaxBlockTokens];
  float m = -INFINITY, l = 0.f;
  float acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.f;

  for (int seg = lo + warp; seg < hi; seg += kWarps) {
    const int info = a.seg_info[seg];
    if (query_anchor && (info & kSegmentAnchorFlag)) continue;
    const int len = info & kSegmentLengthMask;
    const __nv_bfloat16* kbase = pool + a.seg_block[seg] * block_stride +
                                 a.layer * layer_stride + kh * head_stride;
    const __nv_bfloat16* vbase = kbase + kv_stride;
    for (int pass = 0; pass * kRowsPerPass < len; ++pass) {
      const int t = pass * kRowsPerPass + lane / kChunks;
      float part = 0.f;
      if (t < len) {
        const uint4 raw = *reinterpret_cast<const uint4*>(kbase + t * D + col * 8);
        const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = __bfloat1622float2(pairs[i]);
          part += f.x * qf[2 * i] + f.y * qf[2 * i + 1];
        }
      }
#pragma unroll
      for (int o = kChunks / 2; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
      if (col == 0 && t < len) scores[warp][t] = part;
    }
    __syncwarp();
    const float s = lane < len ? scores[warp][lane] : -INFINITY;
    const float m_new = fmaxf(m, WarpMax(s));
    const float correction = m == -INFINITY ? 0.f : __expf(m - m_new);
    const float p = lane < len ? __expf(s - m_new) : 0.f;
    l = l * correction + WarpSum(p);
    m = m_new;
    __syncwarp();
    scores[warp][lane] = p;
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) acc[i] *= correction;
    for (int t = 0; t < len; ++t) {
      const float pt = scores[warp][t];
      const __nv_bfloat16* v = vbase + t * D + lane * kPerLane;
#pragma unroll
      for (int i = 0; i < kPerLane; i += 2) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(v + i));
        acc[i] += pt * f.x;
        acc[i + 1] += pt * f.y;
      }
    }
    __syncwarp();
  }

  // Fold the warps together and write this split's partial result.
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  __shared__ float warp_acc[kWarps][D];
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) warp_acc[warp][lane * kPerLane + i] = acc[i];
  __syncthreads();
  float* ws = a.workspace + ((static_cast<int64_t>(n) * a.heads + h) * a.splits + split) * (D + 2);
  float big = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) big = fmaxf(big, warp_m[w]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (warp_m[w] != -INFINITY) sum += warp_acc[w][d] * __expf(warp_m[w] - big);
    }
    ws[d] = sum;
  }
  if (threadIdx.x == 0) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (warp_m[w] != -INFINITY) total += warp_l[w] * __expf(warp_m[w] - big);
    }
    ws[D] = big;
    ws[D + 1] = total;
  }
}

// One CTA of D threads per (query head, sequence).
template <int D>
__global__ void __launch_bounds__(D) CombineKernel(PagedDecodeArgs a) {
  const int h = blockIdx.x, n = blockIdx.y, d = threadIdx.x;
  const int kh = h / (a.heads / a.kv_heads);
  const __nv_bfloat16* q = static_cast<const __nv_bfloat16*>(a.q) + n * a.q_row + h * D;
  const __nv_bfloat16* k = static_cast<const __nv_bfloat16*>(a.k_new) + n * a.k_row + kh * D;
  const __nv_bfloat16* v = static_cast<const __nv_bfloat16*>(a.v_new) + n * a.v_row + kh * D;
  const float kd = __bfloat162float(k[d]);
  const float vd = __bfloat162float(v[d]);

  __shared__ float partial[D / 32];
  float self = WarpSum(__bfloat162float(q[d]) * a.scale * kd);
  if (d % 32 == 0) partial[d / 32] = self;
  __syncthreads();
  self = 0.f;
#pragma unroll
  for (int w = 0; w < D / 32; ++w) self += partial[w];

  const float* ws = a.workspace + (static_cast<int64_t>(n) * a.heads + h) * a.splits * (D + 2);
  float big = self;
  for (int s = 0; s < a.splits; ++s) big = fmaxf(big, ws[s * (D + 2) + D]);
  float weight = __expf(self - big);
  float total = weight, acc = weight * vd;
  for (int s = 0; s < a.splits; ++s) {
    const float* part = ws + s * (D + 2);
    if (part[D] == -INFINITY) continue;
    const float w = __expf(part[D] - big);
    total += part[D + 1] * w;
    acc += part[d] * w;
  }
  static_cast<__nv_bfloat16*>(a.out)[(static_cast<int64_t>(n) * a.heads + h) * D + d] =
      __float2bfloat16(acc / total);

  // The query's key/value go to their slot: one query head per kv head does it.
  const int block = a.dst_block[n];
  if (h % (a.heads / a.kv_heads) == 0 && block >= 0) {
    const int64_t head_stride = static_cast<int64_t>(a.block_tokens) * D;
    const int64_t kv_stride = a.kv_heads * head_stride;
    __nv_bfloat16* slot = static_cast<__nv_bfloat16*>(a.kv) +
                          block * (a.layers * 2 * kv_stride) + a.layer * 2 * kv_stride +
                          kh * head_stride + a.dst_offset[n] * D + d;
    slot[0] = k[d];
    slot[kv_stride] = v[d];
  }
}

template <int D>
int Launch(const PagedDecodeArgs& a, cudaStream_t stream) {
  SplitKernel<D><<<dim3(a.splits, a.heads, a.n), kWarps * 32, 0, stream>>>(a);
  CombineKernel<D><<<dim3(a.heads, a.n), D, 0, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

bool PagedDecodeSupported(int32_t head_dim, int32_t block_tokens) {
  return (head_dim == 64 || head_dim == 128) && block_tokens > 0 &&
         block_tokens <= kMaxBlockTokens;
}

int PagedDecodeAttention(const PagedDecodeArgs& args, void* stream) {
  if (!PagedDecodeSupported(args.head_dim, args.block_tokens) || args.n <= 0 ||
      args.splits <= 0 || args.kv_heads <= 0 || args.heads % args.kv_heads != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return args.head_dim == 64 ? Launch<64>(args, s) : Launch<128>(args, s);
}

}  // namespace anchorserve::cache::cuda
