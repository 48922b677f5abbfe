// Torch-side internals of LlamaModel. Only model/, cache/ and scheduler/ translation units
// include this (never server/ or client/: BUILD.md rule 1).
#ifndef ANCHORSERVE_MODEL_LLAMA_IMPL_H_
#define ANCHORSERVE_MODEL_LLAMA_IMPL_H_

#include <ATen/ATen.h>

#include <exception>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "model/model_config.h"

namespace anchorserve::model {

struct LayerWeights {
  at::Tensor input_norm;  // [hidden]
  at::Tensor wqkv;        // [(heads + 2 * kv_heads) * head_dim, hidden]: q, k, v stacked
  at::Tensor wo;          // [hidden, heads * head_dim]
  at::Tensor post_norm;   // [hidden]
  at::Tensor w_gate_up;   // [2 * intermediate, hidden]: gate, up stacked
  at::Tensor w_down;      // [hidden, intermediate]
};

// Keys (already rotated) and values of one layer: [kv_heads, tokens, head_dim].
struct LayerKV {
  at::Tensor k;
  at::Tensor v;
};

struct LlamaImpl {
  ModelConfig config;
  at::TensorOptions options;  // dtype + device of weights and activations
  at::Tensor embed;           // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;  // [hidden]
  at::Tensor lm_head;     // [vocab, hidden]; the embedding itself when tied
  at::Tensor inv_freq;    // [head_dim / 2] fp32, on device

  // One forward step over S new tokens attending to `past` (per layer, P tokens each; empty
  // tensors for none) and to themselves. `positions`: int64 [S]. `allowed`: bool [S, P + S]
  // on the device. Fills `present` with each layer's new K/V ([kv_heads, S, head_dim]).
  // Returns the final hidden states [S, hidden] (before the LM head).
  at::Tensor ForwardHidden(const at::Tensor& ids, const at::Tensor& positions,
                           const std::vector<LayerKV>& past, const at::Tensor& allowed,
                           std::vector<LayerKV>* present) const;

  // lm_head over hidden states: fp32 logits [rows, vocab].
  at::Tensor Logits(const at::Tensor& hidden) const;
};

// A host tensor on `device` without waiting for the device: on CUDA it goes through pinned
// memory with an asynchronous copy (the caching host allocator keeps the staging buffer until
// the copy ran); a plain pageable copy would synchronize the stream.
at::Tensor ToDevice(const at::Tensor& host, const at::Device& device);

// A libtorch exception as a Status naming `what`, with the message's first line:
// ResourceExhausted for a device out-of-memory (callers free and retry or report), else
// Internal. Shared by every torch translation unit.
absl::Status TorchStatus(const std::exception& e, absl::string_view what);

// Shared by the serving forward and the training forward (train/), so both compute the same
// function. HF LlamaRMSNorm: statistics in fp32, the scale applied after casting back.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// HF rotary embedding over the last dim: x [..., T, heads, d], cos/sin [..., T, d].
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// HF rotary inverse frequencies: base ** -(arange(0, d, 2) / d) in fp32, on `device`.
at::Tensor InvFreq(const ModelConfig& config, const at::Device& device);
// cat(freqs, freqs) with freqs = positions * inv_freq in fp32: [..., d] for positions [...].
at::Tensor RopeAngles(const at::Tensor& positions, const at::Tensor& inv_freq);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_LLAMA_IMPL_H_
