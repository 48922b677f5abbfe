// PagedSequence::DecodeBatch: one decode token for each of n sequences in one forward. The
// dense work (projections, MLP, LM head) runs as [n, hidden] matrix products; attention reads
// each sequence's own kept entries. Two attention paths compute the same function:
//  - reference: gathers every sequence's entries from the block layout into a padded batch
//    (any device, any dtype; the CPU path and the yardstick for the kernel);
//  - kernel (CUDA, bf16): cache/cuda/paged_attention.cu reads the blocks in place, and the
//    whole step is captured once per batch-size bucket as a CUDA graph and replayed, so a
//    step costs one graph launch, one host-to-device copy of the step's indices and one
//    device-to-host copy of the logits (the step's only synchronization).
#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "cache/block_pool_impl.h"
#include "cache/paged_sequence.h"
#include "common/status_macros.h"
#include "model/ansan_mask.h"
#include "model/llama_impl.h"

#ifdef ANCHORSERVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>

#include "cache/cuda/fused_ops.h"
#include "cache/cuda/paged_attention.h"
#endif

namespace anchorserve::cache {

using at::indexing::Slice;

namespace {

// The reference path's layer loop (KernelForward is its fused twin): `attend(l, q, k, v)`
// returns the attention output [n, heads * head_dim] of layer l for rotated q [n, heads, d],
// k and v [n, kv, d].
template <typename Attend>
at::Tensor DecodeLayers(const model::LlamaImpl& impl, const at::Tensor& ids,
                        const at::Tensor& positions, Attend attend) {
  const model::ModelConfig& c = impl.config;
  const int64_t n = ids.size(0), heads = c.num_attention_heads, kv = c.num_key_value_heads;
  const int64_t d = c.head_dim;
  const at::ScalarType dtype = impl.options.dtype().toScalarType();
  const at::Tensor emb = model::RopeAngles(positions, impl.inv_freq);  // [n, d]
  const at::Tensor cos = emb.cos().to(dtype);
  const at::Tensor sin = emb.sin().to(dtype);
  at::Tensor x = at::embedding(impl.embed, ids);
  for (size_t l = 0; l < impl.layers.size(); ++l) {
    const model::LayerWeights& w = impl.layers[l];
    at::Tensor h = model::RmsNorm(x, w.input_norm, c.rms_norm_eps);
    at::Tensor qkv = at::linear(h, w.wqkv);
    at::Tensor q = model::ApplyRope(qkv.narrow(1, 0, heads * d).view({n, heads, d}), cos, sin);
    at::Tensor k = model::ApplyRope(qkv.narrow(1, heads * d, kv * d).view({n, kv, d}), cos, sin);
    at::Tensor v = qkv.narrow(1, (heads + kv) * d, kv * d).view({n, kv, d});
    x = x + at::linear(attend(static_cast<int64_t>(l), q, k, v), w.wo);
    h = model::RmsNorm(x, w.post_norm, c.rms_norm_eps);
    at::Tensor gate_up = at::linear(h, w.w_gate_up);
    const int64_t inter = c.intermediate_size;
    x = x + at::linear(at::silu(gate_up.narrow(1, 0, inter)) * gate_up.narrow(1, inter, inter),
                       w.w_down);
  }
  return impl.Logits(model::RmsNorm(x, impl.final_norm, c.rms_norm_eps));
}

#ifdef ANCHORSERVE_CUDA

// One step's integer inputs in one int32 buffer (one copy to the device):
//   ids [rows] | positions [rows] | seg_start [rows + 1] | query_anchor [rows] |
//   dst_block [rows] | dst_offset [rows] | seg_block [cap] | seg_info [cap]
struct KernelLayout {
  int64_t rows = 0, seg_capacity = 0;
  int64_t ids() const { return 0; }
  int64_t positions() const { return rows; }
  int64_t seg_start() const { return 2 * rows; }
  int64_t query_anchor() const { return 3 * rows + 1; }
  int64_t dst_block() const { return 4 * rows + 1; }
  int64_t dst_offset() const { return 5 * rows + 1; }
  int64_t seg_block() const { return 6 * rows + 1; }
  int64_t seg_info() const { return 6 * rows + 1 + seg_capacity; }
  int64_t size() const { return 6 * rows + 1 + 2 * seg_capacity; }
};

void Check(int error, const char* what) {
  TORCH_CHECK(error == 0, what, ": ", cudaGetErrorString(static_cast<cudaError_t>(error)));
}

// The kernel-path forward over a device buffer laid out as `layout`: per layer two GEMMs
// around attention, two around the MLP (GEMV kernels at small batch), and six fused launches (RoPE, the two attention
// kernels, residual add + RMSNorm twice, SiLU * up). Only device work: it can be captured in
// a CUDA graph. Rounds where DecodeLayers rounds (cache/cuda/fused_ops.h).
at::Tensor KernelForward(const model::LlamaImpl& impl, at::Tensor& storage, const at::Tensor& dev,
                         const KernelLayout& layout, int32_t splits) {
  const model::ModelConfig& c = impl.config;
  const int64_t n = layout.rows, heads = c.num_attention_heads, kv = c.num_key_value_heads;
  const int64_t d = c.head_dim, hidden = c.hidden_size, inter = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int32_t* base = dev.data_ptr<int32_t>();
  const at::ScalarType dtype = impl.options.dtype().toScalarType();
  at::Tensor ids = dev.narrow(0, layout.ids(), n).to(at::kLong);
  at::Tensor positions = dev.narrow(0, layout.positions(), n).to(at::kLong);
  const at::Tensor emb = model::RopeAngles(positions, impl.inv_freq);
  const at::Tensor cos = emb.cos().to(dtype).contiguous();
  const at::Tensor sin = emb.sin().to(dtype).contiguous();
  at::Tensor workspace = at::empty({n * heads * splits * (d + 2)},
                                   at::TensorOptions().dtype(at::kFloat).device(dev.device()));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  cuda::PagedDecodeArgs a;
  a.kv = storage.data_ptr();
  a.layers = static_cast<int32_t>(storage.size(1));
  a.block_tokens = static_cast<int32_t>(storage.size(4));
  a.seg_start = base + layout.seg_start();
  a.seg_block = base + layout.seg_block();
  a.seg_info = base + layout.seg_info();
  a.query_anchor = base + layout.query_anchor();
  a.dst_block = base + layout.dst_block();
  a.dst_offset = base + layout.dst_offset();
  a.workspace = workspace.data_ptr<float>();
  a.n = static_cast<int32_t>(n);
  a.heads = static_cast<int32_t>(heads);
  a.kv_heads = static_cast<int32_t>(kv);
  a.head_dim = static_cast<int32_t>(d);
  a.splits = splits;
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));

  // Decode-sized products (a bucket of <= kMaxGemvRows rows) go to the GEMV kernel, the rest to cuBLAS.
  auto linear = [&](const at::Tensor& in, const at::Tensor& weight) {
    if (n > cuda::kMaxGemvRows || in.size(1) % 8 != 0) return at::linear(in, weight);
    at::Tensor y = at::empty({n, weight.size(0)}, in.options());
    Check(cuda::Gemv(in.data_ptr(), weight.data_ptr(), y.data_ptr(), n, weight.size(0),
                     in.size(1), stream),
          "gemv");
    return y;
  };
  at::Tensor x = at::embedding(impl.embed, ids).contiguous();  // the residual stream
  at::Tensor h = at::empty_like(x);
  at::Tensor attn = at::empty({n, heads * d}, x.options());
  at::Tensor act = at::empty({n, inter}, x.options());
  Check(cuda::AddRmsNorm(x.data_ptr(), nullptr, impl.layers[0].input_norm.data_ptr(),
                         h.data_ptr(), n, hidden, eps, stream),
        "rmsnorm");
  for (size_t l = 0; l < impl.layers.size(); ++l) {
    const model::LayerWeights& w = impl.layers[l];
    at::Tensor qkv = linear(h, w.wqkv);
    Check(cuda::RopeQk(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), n, heads, kv, d, stream),
          "rope");
    at::BFloat16* q = qkv.data_ptr<at::BFloat16>();
    a.q = q;
    a.k_new = q + heads * d;
    a.v_new = q + (heads + kv) * d;
    a.q_row = a.k_row = a.v_row = qkv.stride(0);
    a.layer = static_cast<int32_t>(l);
    a.out = attn.data_ptr();
    Check(cuda::PagedDecodeAttention(a, stream), "paged decode attention");
    at::Tensor o = linear(attn, w.wo);
    Check(cuda::AddRmsNorm(x.data_ptr(), o.data_ptr(), w.post_norm.data_ptr(), h.data_ptr(), n,
                           hidden, eps, stream),
          "add + rmsnorm");
    at::Tensor gate_up = linear(h, w.w_gate_up);
    Check(cuda::SiluMul(gate_up.data_ptr(), act.data_ptr(), n, inter, stream), "silu * up");
    at::Tensor down = linear(act, w.w_down);
    const at::Tensor& next_norm =
        l + 1 < impl.layers.size() ? impl.layers[l + 1].input_norm : impl.final_norm;
    Check(cuda::AddRmsNorm(x.data_ptr(), down.data_ptr(), next_norm.data_ptr(), h.data_ptr(), n,
                           hidden, eps, stream),
          "add + rmsnorm");
  }
  return linear(h, impl.lm_head).to(at::kFloat);  // as LlamaImpl::Logits
}

// Splits per (sequence, head) so that a step fills the GPU about four CTAs per SM deep.
int32_t SplitsFor(int64_t rows, int64_t heads, int64_t max_segments) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (4 * sms + rows * heads - 1) / (rows * heads);
  return static_cast<int32_t>(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, max_segments)));
}

int64_t Bucket(int64_t n) {
  if (n <= 8) {
    int64_t b = 1;
    while (b < n) b *= 2;
    return b;
  }
  return (n + 15) / 16 * 16;
}

#endif  // ANCHORSERVE_CUDA

}  // namespace

#ifdef ANCHORSERVE_CUDA
// Captured decode steps of one pool, by batch-size bucket. Owned by the pool's storage, so it
// lives exactly as long as the KV tensor its graphs point into.
struct DecodeGraphs {
  struct Entry {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    KernelLayout layout;
    at::Tensor dev;     // the graph's input buffer
    at::Tensor logits;  // its output
  };
  std::map<int64_t, Entry> by_rows;
};
#else
struct DecodeGraphs {};
#endif

absl::StatusOr<std::vector<float>> PagedSequence::DecodeBatch(
    absl::Span<PagedSequence* const> seqs, absl::Span<const int32_t> tokens,
    const DecodeOptions& options, std::vector<int32_t>* greedy) {
  const int64_t n = static_cast<int64_t>(seqs.size());
  if (n == 0) return absl::InvalidArgumentError("DecodeBatch: no sequences");
  if (static_cast<int64_t>(tokens.size()) != n) {
    return absl::InvalidArgumentError("DecodeBatch: one token per sequence");
  }
  absl::flat_hash_set<const PagedSequence*> seen;
  for (const PagedSequence* seq : seqs) {
    if (seq == nullptr || !seen.insert(seq).second) {
      return absl::InvalidArgumentError("DecodeBatch: sequences must be distinct and non-null");
    }
    if (seq->model_ != seqs[0]->model_ || seq->pool_ != seqs[0]->pool_) {
      return absl::InvalidArgumentError("DecodeBatch: sequences of one model and pool only");
    }
  }
  const model::LlamaModel* llama = seqs[0]->model_;
  BlockPool* pool = seqs[0]->pool_;
  const model::LlamaImpl& impl = llama->impl();
  const model::ModelConfig& config = llama->config();
  for (int64_t i = 0; i < n; ++i) {
    const PagedSequence& seq = *seqs[i];
    const int64_t p = static_cast<int64_t>(seq.anchors_.entries.size() +
                                           seq.kept_full_.entries.size() +
                                           seq.sentence_.entries.size());
    RETURN_IF_ERROR(seq.CheckChunk({&tokens[i], 1}, {}, p));
  }

  // Which attention path. Pad tokens (anchor mode) have their own visibility rule, which only
  // the reference path implements.
  bool pads = false;
  for (int64_t i = 0; i < n && !pads; ++i) {
    const PagedSequence& seq = *seqs[i];
    const model::AnchorSpec& spec = seq.options_.anchors;
    if (seq.options_.mode != model::AttentionMode::kAnchor || spec.pad_id < 0) continue;
    pads = tokens[i] == spec.pad_id;
    for (const Region* r : {&seq.anchors_, &seq.kept_full_, &seq.sentence_}) {
      for (const SnapshotEntry& e : r->entries) pads = pads || e.token == spec.pad_id;
    }
  }
  bool kernel = false;
#ifdef ANCHORSERVE_CUDA
  kernel = impl.options.device().is_cuda() &&
           impl.options.dtype().toScalarType() == at::kBFloat16 &&
           cuda::PagedDecodeSupported(static_cast<int32_t>(config.head_dim),
                                      static_cast<int32_t>(pool->block_tokens())) &&
           !pads;
#endif
  if (options.attention == DecodeAttention::kReference) kernel = false;
  if (options.attention == DecodeAttention::kKernel && !kernel) {
    return absl::FailedPreconditionError(
        "DecodeBatch: the paged attention kernel needs a CUDA build, a bf16 model on CUDA, "
        "head_dim 64 or 128, block_tokens <= 32 and no pad tokens");
  }

  // Allocate every sequence's slot first, all or nothing.
  std::vector<Placement> placements;
  placements.reserve(static_cast<size_t>(n));
  auto abort_all = [&] {
    for (int64_t i = 0; i < static_cast<int64_t>(placements.size()); ++i) {
      seqs[i]->Abort(placements[i]);
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    auto placed = seqs[i]->Place({&tokens[i], 1}, {});
    if (!placed.ok()) {
      abort_all();
      return placed.status();
    }
    placements.push_back(*std::move(placed));
  }

  c10::InferenceMode guard;
  at::Tensor& storage = pool->storage().kv;
  const at::Device device = storage.device();
  std::vector<float> out;
  try {
    at::Tensor logits;
    if (kernel) {
#ifdef ANCHORSERVE_CUDA
      c10::cuda::CUDAGuard device_guard(device);
      std::vector<int32_t> seg_block, seg_info;
      std::vector<int32_t> seg_start{0};
      int64_t max_segments = 0;
      for (int64_t i = 0; i < n; ++i) {
        seqs[i]->AppendSegments(&seg_block, &seg_info);
        max_segments = std::max<int64_t>(max_segments,
                                         static_cast<int64_t>(seg_block.size()) - seg_start.back());
        seg_start.push_back(static_cast<int32_t>(seg_block.size()));
      }
      const int64_t segments = static_cast<int64_t>(seg_block.size());
      DecodeGraphs::Entry scratch;
      DecodeGraphs::Entry* entry = &scratch;
      KernelLayout layout;
      int32_t splits = 0;
      if (options.cuda_graphs) {
        auto& graphs = pool->storage().decode_graphs;
        if (!graphs) graphs = std::make_shared<DecodeGraphs>();
        const int64_t rows = Bucket(n);
        entry = &graphs->by_rows[rows];
        if (entry->graph && entry->layout.seg_capacity < segments) *entry = DecodeGraphs::Entry{};
        layout.rows = rows;
        layout.seg_capacity = entry->graph ? entry->layout.seg_capacity
                                           : std::max<int64_t>(1024, 2 * segments);
        splits = SplitsFor(rows, config.num_attention_heads, 64);
      } else {
        layout.rows = n;
        layout.seg_capacity = std::max<int64_t>(segments, 1);
        splits = SplitsFor(n, config.num_attention_heads, max_segments);
      }
      at::Tensor host = at::empty({layout.size()},
                                  at::TensorOptions().dtype(at::kInt).pinned_memory(true));
      int32_t* h = host.data_ptr<int32_t>();
      std::fill(h, h + layout.size(), 0);
      for (int64_t i = 0; i < layout.rows; ++i) {
        const bool real = i < n;
        h[layout.ids() + i] = real ? tokens[i] : 0;
        h[layout.positions() + i] = real ? static_cast<int32_t>(placements[i].positions[0]) : 0;
        h[layout.seg_start() + i] = real ? seg_start[i] : static_cast<int32_t>(segments);
        h[layout.query_anchor() + i] =
            real && seqs[i]->options_.mode == model::AttentionMode::kAnchor &&
            seqs[i]->options_.anchors.IsAnchor(tokens[i]);
        h[layout.dst_block() + i] = real ? static_cast<int32_t>(placements[i].dst_block[0]) : -1;
        h[layout.dst_offset() + i] = real ? static_cast<int32_t>(placements[i].dst_offset[0]) : 0;
      }
      h[layout.seg_start() + layout.rows] = static_cast<int32_t>(segments);
      std::copy(seg_block.begin(), seg_block.end(), h + layout.seg_block());
      std::copy(seg_info.begin(), seg_info.end(), h + layout.seg_info());
      if (!entry->dev.defined()) {
        entry->dev = at::empty({layout.size()}, at::TensorOptions().dtype(at::kInt).device(device));
      }
      entry->dev.copy_(host, /*non_blocking=*/true);
      if (!options.cuda_graphs) {
        logits = KernelForward(impl, storage, entry->dev, layout, splits);
      } else {
        if (!entry->graph) {
          // Capture on a side stream (CUDA forbids capturing the legacy default stream). The
          // captured step runs once for real, on inputs a padding-only buffer makes harmless:
          // every row writes nowhere.
          entry->layout = layout;
          at::Tensor dummy = at::zeros_like(host);
          int32_t* z = dummy.data_ptr<int32_t>();
          for (int64_t i = 0; i < layout.rows; ++i) z[layout.dst_block() + i] = -1;
          at::Tensor real_inputs = entry->dev.clone();
          entry->dev.copy_(dummy);
          const at::cuda::CUDAStream side = at::cuda::getStreamFromPool(false, device.index());
          side.synchronize();
          at::cuda::getCurrentCUDAStream().synchronize();
          {
            c10::cuda::CUDAStreamGuard stream_guard(side);
            (void)KernelForward(impl, storage, entry->dev, layout, splits);  // warm-up
            entry->graph = std::make_unique<at::cuda::CUDAGraph>();
            entry->graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
            entry->logits = KernelForward(impl, storage, entry->dev, layout, splits);
            entry->graph->capture_end();
            side.synchronize();
          }
          entry->dev.copy_(real_inputs);
        }
        entry->graph->replay();
        logits = entry->logits.narrow(0, 0, n);
      }
#endif
    } else {
      // Reference: gather each sequence's entries into [n, P, kv, d], padded, with a mask.
      std::vector<std::vector<int64_t>> slot_block(n), slot_offset(n);
      std::vector<std::vector<uint8_t>> visible(n);
      int64_t p_max = 0;
      for (int64_t i = 0; i < n; ++i) {
        const PagedSequence& seq = *seqs[i];
        const bool anchor_mode = seq.options_.mode == model::AttentionMode::kAnchor;
        const model::AnchorSpec& spec = seq.options_.anchors;
        auto is_pad = [&](int32_t id) {
          return anchor_mode && spec.pad_id >= 0 && id == spec.pad_id;
        };
        const bool row_anchor = anchor_mode && spec.IsAnchor(tokens[i]);
        const bool row_pad = is_pad(tokens[i]);
        const int64_t bt = pool->block_tokens();
        for (const Region* r : {&seq.anchors_, &seq.kept_full_, &seq.sentence_}) {
          for (size_t k = 0; k < r->entries.size(); ++k) {
            const SnapshotEntry& e = r->entries[k];
            slot_block[i].push_back(r->blocks[k / bt]);
            slot_offset[i].push_back(static_cast<int64_t>(k) % bt);
            const bool shown = !row_pad && !is_pad(e.token) &&
                               !(e.kind == EntryKind::kAnchor && row_anchor);
            visible[i].push_back(shown);
          }
        }
        // The token itself: as Feed's one-token chunk mask.
        const model::AttentionMask self = anchor_mode
                                              ? model::BuildAnsanMask({&tokens[i], 1}, spec)
                                              : model::BuildCausalMask(1);
        visible[i].push_back(self[0]);
        p_max = std::max<int64_t>(p_max, static_cast<int64_t>(slot_block[i].size()));
      }
      std::vector<int64_t> gb(static_cast<size_t>(n * p_max), 0), go(gb.size(), 0);
      std::vector<uint8_t> allowed(static_cast<size_t>(n * (p_max + 1)), 0);
      std::vector<uint8_t> padding(allowed.size(), 0);  // columns past a sequence's entries
      std::vector<int64_t> ids(n), positions(n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = static_cast<int64_t>(slot_block[i].size());
        std::copy(slot_block[i].begin(), slot_block[i].end(), gb.begin() + i * p_max);
        std::copy(slot_offset[i].begin(), slot_offset[i].end(), go.begin() + i * p_max);
        std::copy(visible[i].begin(), visible[i].begin() + p, allowed.begin() + i * (p_max + 1));
        allowed[i * (p_max + 1) + p_max] = visible[i][p];
        std::fill(padding.begin() + i * (p_max + 1) + p, padding.begin() + i * (p_max + 1) + p_max,
                  1);
        ids[i] = tokens[i];
        positions[i] = placements[i].positions[0];
      }
      at::Tensor gb_t = model::ToDevice(at::tensor(gb).view({n, p_max}), device);
      at::Tensor go_t = model::ToDevice(at::tensor(go).view({n, p_max}), device);
      const at::TensorOptions bytes = at::TensorOptions().dtype(at::kByte);
      at::Tensor blocked =
          model::ToDevice(at::from_blob(allowed.data(), {n, 1, 1, p_max + 1}, bytes), device)
              .to(at::kBool)
              .logical_not();
      // Masked entries score `lowest` (as Feed, so a row that sees nothing, a pad's, averages
      // its own entries uniformly); padding scores -inf and never counts.
      at::Tensor padded =
          model::ToDevice(at::from_blob(padding.data(), {n, 1, 1, p_max + 1}, bytes), device)
              .to(at::kBool);
      const int64_t kv = config.num_key_value_heads, d = config.head_dim;
      const int64_t group = config.num_attention_heads / kv;
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));
      const at::ScalarType dtype = impl.options.dtype().toScalarType();
      std::vector<at::Tensor> new_k, new_v;
      auto attend = [&](int64_t layer, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v) {
        new_k.push_back(k);
        new_v.push_back(v);
        const at::Tensor layer_kv = storage.select(1, layer);  // [B, 2, kv, bt, d]
        at::Tensor keys = at::cat(
            {layer_kv.select(1, 0).index({gb_t, Slice(), go_t}), k.unsqueeze(1)}, 1);
        at::Tensor values = at::cat(
            {layer_kv.select(1, 1).index({gb_t, Slice(), go_t}), v.unsqueeze(1)}, 1);
        at::Tensor qg = q.reshape({n, kv, group, d});
        at::Tensor scores = at::matmul(qg, keys.permute({0, 2, 3, 1})).mul_(scale).to(at::kFloat);
        scores.masked_fill_(blocked, std::numeric_limits<float>::lowest());
        scores.masked_fill_(padded, -std::numeric_limits<float>::infinity());
        at::Tensor probs = at::softmax(scores, -1).to(dtype);  // [n, kv, group, T]
        return at::matmul(probs, values.permute({0, 2, 1, 3}))
            .reshape({n, config.num_attention_heads * d});
      };
      logits = DecodeLayers(impl, model::ToDevice(at::tensor(ids), device), model::ToDevice(at::tensor(positions), device),
                            attend);
      // Each new token's K/V into its slot: [n, L, 2, kv, d].
      at::Tensor values = at::stack({at::stack(new_k, 1), at::stack(new_v, 1)}, 2);
      std::vector<int64_t> dst_block(n), dst_offset(n);
      for (int64_t i = 0; i < n; ++i) {
        dst_block[i] = placements[i].dst_block[0];
        dst_offset[i] = placements[i].dst_offset[0];
      }
      storage.index_put_({model::ToDevice(at::tensor(dst_block), device), Slice(), Slice(), Slice(),
                          model::ToDevice(at::tensor(dst_offset), device)},
                         values);
    }
    // The step's one wait, into pinned memory (full PCIe speed): the argmax ids alone when
    // sampling is greedy, else the logits.
    const at::TensorOptions host = at::TensorOptions().pinned_memory(device.is_cuda());
    if (greedy != nullptr) {
      at::Tensor ids = at::argmax(logits, 1).to(at::kInt);
      at::Tensor host_ids = at::empty(ids.sizes(), host.dtype(at::kInt));
      host_ids.copy_(ids);
      greedy->assign(host_ids.data_ptr<int32_t>(), host_ids.data_ptr<int32_t>() + n);
    } else {
      at::Tensor host_logits = at::empty(logits.sizes(), host.dtype(at::kFloat));
      host_logits.copy_(logits);
      out.assign(host_logits.data_ptr<float>(),
                 host_logits.data_ptr<float>() + host_logits.numel());
    }
  } catch (const std::exception& e) {
    abort_all();
    return model::TorchStatus(e, "batched decode");
  }
  for (int64_t i = 0; i < n; ++i) seqs[i]->Apply({&tokens[i], 1}, std::move(placements[i]));
  return out;
}

}  // namespace anchorserve::cache
