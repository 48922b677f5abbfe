#include "train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/api/include/torch/version.h>
#ifdef ANCHORSERVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/splitmix.h"
#include "common/status_macros.h"
#include "model/anchors.h"
#include "model/llama_impl.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "train/token_dataset.h"

namespace anchorserve::train {
namespace fs = std::filesystem;
using model::LayerWeights;
using model::ModelConfig;

namespace {

constexpr bool kHasFusedAttention = TORCH_VERSION_MAJOR >= 2;

// The trainable weights, laid out as model::LlamaImpl holds them (q/k/v and gate/up
// stacked), fp32 master copies on the training device.
struct Params {
  ModelConfig config;
  at::Tensor embed;
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;
  at::Tensor lm_head;  // undefined when tied to embed

  // Every parameter once, with a stable name (checkpoints) and whether it is decayed.
  std::vector<std::pair<std::string, at::Tensor*>> Named() {
    std::vector<std::pair<std::string, at::Tensor*>> out;
    out.emplace_back("embed", &embed);
    for (size_t l = 0; l < layers.size(); ++l) {
      LayerWeights& w = layers[l];
      const std::string p = absl::StrCat("layers.", l, ".");
      out.emplace_back(p + "input_norm", &w.input_norm);
      out.emplace_back(p + "wqkv", &w.wqkv);
      out.emplace_back(p + "wo", &w.wo);
      out.emplace_back(p + "post_norm", &w.post_norm);
      out.emplace_back(p + "w_gate_up", &w.w_gate_up);
      out.emplace_back(p + "w_down", &w.w_down);
    }
    out.emplace_back("final_norm", &final_norm);
    if (lm_head.defined()) out.emplace_back("lm_head", &lm_head);
    return out;
  }
  const at::Tensor& head() const { return lm_head.defined() ? lm_head : embed; }
};

at::Device DeviceOf(model::Device device) {
  return device == model::Device::kCuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
}

Params RandomParams(const ModelConfig& c, double init_std, uint64_t seed, at::Device device) {
  // Drawn on the CPU generator so that a seed gives the same model on every device.
  at::manual_seed(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto normal = [&](int64_t rows, int64_t cols, double std) {
    return at::empty({rows, cols}, f32).normal_(0.0, std).to(device);
  };
  // Residual-branch outputs scaled by 1/sqrt(2 * layers) (GPT-2), so the residual stream's
  // variance does not grow with depth at initialisation.
  const double out_std = init_std / std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers));
  const int64_t q_rows = c.num_attention_heads * c.head_dim;
  const int64_t kv_rows = c.num_key_value_heads * c.head_dim;
  Params p;
  p.config = c;
  p.embed = normal(c.vocab_size, c.hidden_size, init_std);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights w;
    w.input_norm = at::ones({c.hidden_size}, f32).to(device);
    w.post_norm = at::ones({c.hidden_size}, f32).to(device);
    w.wqkv = normal(q_rows + 2 * kv_rows, c.hidden_size, init_std);
    w.wo = normal(c.hidden_size, q_rows, out_std);
    w.w_gate_up = normal(2 * c.intermediate_size, c.hidden_size, init_std);
    w.w_down = normal(c.hidden_size, c.intermediate_size, out_std);
    p.layers.push_back(std::move(w));
  }
  p.final_norm = at::ones({c.hidden_size}, f32).to(device);
  if (!c.tie_word_embeddings) p.lm_head = normal(c.vocab_size, c.hidden_size, init_std);
  return p;
}

// An HF-layout model's weights as fp32 master parameters on `device`.
absl::StatusOr<Params> LoadParams(const std::string& dir, at::Device device) {
  model::LoadOptions options;  // fp32 on the CPU: exact copies of the stored values
  ASSIGN_OR_RETURN(std::unique_ptr<model::LlamaModel> loaded, model::LlamaModel::Load(dir, options));
  const model::LlamaImpl& impl = loaded->impl();
  // clone() outside inference mode turns the loaded inference tensors into ordinary ones
  // that autograd can track.
  auto own = [&](const at::Tensor& t) { return t.clone().to(device); };
  Params p;
  p.config = impl.config;
  p.embed = own(impl.embed);
  for (const LayerWeights& w : impl.layers) {
    p.layers.push_back(LayerWeights{own(w.input_norm), own(w.wqkv), own(w.wo), own(w.post_norm),
                                    own(w.w_gate_up), own(w.w_down)});
  }
  p.final_norm = own(impl.final_norm);
  if (!impl.config.tie_word_embeddings) p.lm_head = own(impl.lm_head);
  return p;
}

// Per-batch attention mask inputs, computed on the device from the ids alone.
struct BatchMask {
  bool causal_only = true;  // no anchors: plain causal (right padding needs no mask)
  at::Tensor allowed;       // bool [B, 1, L, L] when !causal_only
};

// The AnSAN mask (anllm-reference.md §2.2/2.3) as comparisons of O(L) per-token data, never an
// L-long Python-style loop: with s(i) = anchors strictly before i,
//   allowed(i, j) = j <= i && (s(j) == s(i) || (anchor(j) && !anchor(i)))
// minus pad rows and columns; a pad row keeps its diagonal so that no row is empty (pad
// outputs are never scored or attended to, so this does not change any other row).
BatchMask BuildMask(const at::Tensor& ids, const std::vector<int32_t>& anchor_ids,
                    int32_t pad_id) {
  BatchMask mask;
  if (anchor_ids.empty()) return mask;
  mask.causal_only = false;
  const int64_t len = ids.size(1);
  at::Tensor is_anchor = at::zeros_like(ids, at::kBool);
  for (int32_t a : anchor_ids) is_anchor = is_anchor.logical_or(ids.eq(a));
  const at::Tensor a_long = is_anchor.to(at::kLong);
  const at::Tensor sentence = a_long.cumsum(1) - a_long;  // [B, L]
  const at::Tensor same = sentence.unsqueeze(2).eq(sentence.unsqueeze(1));
  const at::Tensor anchor_key = is_anchor.unsqueeze(1).logical_and(is_anchor.unsqueeze(2).logical_not());
  const at::Tensor causal =
      at::ones({len, len}, ids.options().dtype(at::kBool)).tril().unsqueeze(0);
  at::Tensor allowed = causal.logical_and(same.logical_or(anchor_key));
  if (pad_id >= 0) {
    const at::Tensor pad = ids.eq(pad_id);
    const at::Tensor keep = pad.logical_not();
    allowed = allowed.logical_and(keep.unsqueeze(2)).logical_and(keep.unsqueeze(1));
    const at::Tensor eye = at::eye(len, ids.options().dtype(at::kBool)).unsqueeze(0);
    allowed = allowed.logical_or(eye.logical_and(pad.unsqueeze(2)));
  }
  mask.allowed = allowed.unsqueeze(1);
  return mask;
}

at::Tensor Attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const BatchMask& mask, AttentionImpl impl, double scale) {
  // q [B, H, L, d]; k, v [B, KV, L, d].
  const int64_t group = q.size(1) / k.size(1);
  at::Tensor keys = group > 1 ? k.repeat_interleave(group, 1) : k;
  at::Tensor values = group > 1 ? v.repeat_interleave(group, 1) : v;
#if TORCH_VERSION_MAJOR >= 2
  if (impl == AttentionImpl::kFused) {
    if (mask.causal_only) {
      return at::scaled_dot_product_attention(q, keys, values, {}, 0.0, /*is_causal=*/true, scale);
    }
    return at::scaled_dot_product_attention(q, keys, values, mask.allowed, 0.0, false, scale);
  }
#endif
  // Eager, as the authors' forward: scores in the compute dtype plus an additive mask of the
  // dtype's lowest value, softmax in fp32.
  const int64_t len = q.size(2);
  at::Tensor scores = at::matmul(q, keys.transpose(-2, -1)).mul_(scale);
  at::Tensor allowed =
      mask.causal_only
          ? at::ones({len, len}, q.options().dtype(at::kBool)).tril().view({1, 1, len, len})
          : mask.allowed;
  at::Tensor additive = at::zeros(allowed.sizes(), q.options())
                            .masked_fill_(allowed.logical_not(),
                                          q.scalar_type() == at::kBFloat16
                                              ? -3.3895313892515355e38
                                              : static_cast<double>(std::numeric_limits<float>::lowest()));
  at::Tensor probs = at::softmax((scores + additive).to(at::kFloat), -1).to(q.scalar_type());
  return at::matmul(probs, values);
}

// Final hidden states [B, L, hidden] of the training forward.
at::Tensor ForwardHidden(const Params& p, const at::Tensor& ids, const BatchMask& mask,
                         at::ScalarType dtype, AttentionImpl impl, const at::Tensor& inv_freq) {
  const ModelConfig& c = p.config;
  const int64_t b = ids.size(0), len = ids.size(1);
  const int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads, d = c.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto cast = [&](const at::Tensor& w) { return w.scalar_type() == dtype ? w : w.to(dtype); };
  const at::Tensor positions = at::arange(len, ids.options());
  const at::Tensor angles = model::RopeAngles(positions, inv_freq);  // [L, d]
  const at::Tensor cos = angles.cos().to(dtype), sin = angles.sin().to(dtype);

  at::Tensor x = at::embedding(cast(p.embed), ids);  // [B, L, hidden]
  for (const LayerWeights& w : p.layers) {
    at::Tensor h = model::RmsNorm(x, cast(w.input_norm), c.rms_norm_eps);
    at::Tensor qkv = at::linear(h, cast(w.wqkv));
    at::Tensor q = qkv.narrow(2, 0, heads * d).view({b, len, heads, d});
    at::Tensor k = qkv.narrow(2, heads * d, kv_heads * d).view({b, len, kv_heads, d});
    at::Tensor v = qkv.narrow(2, (heads + kv_heads) * d, kv_heads * d).view({b, len, kv_heads, d});
    q = model::ApplyRope(q, cos, sin).transpose(1, 2);
    k = model::ApplyRope(k, cos, sin).transpose(1, 2);
    v = v.transpose(1, 2);
    at::Tensor out = Attention(q, k, v, mask, impl, scale).transpose(1, 2).reshape({b, len, heads * d});
    x = x + at::linear(out, cast(w.wo));
    h = model::RmsNorm(x, cast(w.post_norm), c.rms_norm_eps);
    at::Tensor gate_up = at::linear(h, cast(w.w_gate_up));
    const int64_t inter = c.intermediate_size;
    at::Tensor act = at::silu(gate_up.narrow(2, 0, inter)) * gate_up.narrow(2, inter, inter);
    x = x + at::linear(act, cast(w.w_down));
  }
  return model::RmsNorm(x, cast(p.final_norm), c.rms_norm_eps);
}


// A micro-batch: ids on the device and next-token labels (-100 where nothing is scored).
struct Batch {
  at::Tensor ids;     // int64 [B, L]
  at::Tensor labels;  // int64 [B, L]
  int64_t scored = 0; // labels != -100
};

Batch MakeBatch(const std::vector<std::vector<int32_t>>& rows, int32_t pad_id, at::Device device) {
  const int64_t b = static_cast<int64_t>(rows.size());
  const int64_t len = static_cast<int64_t>(rows[0].size());
  std::vector<int64_t> ids(static_cast<size_t>(b * len)), labels(ids.size(), -100);
  Batch batch;
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t i = 0; i < len; ++i) {
      ids[static_cast<size_t>(r * len + i)] = rows[static_cast<size_t>(r)][static_cast<size_t>(i)];
      if (i + 1 < len) {
        const int32_t next = rows[static_cast<size_t>(r)][static_cast<size_t>(i + 1)];
        const int32_t now = rows[static_cast<size_t>(r)][static_cast<size_t>(i)];
        if (next != pad_id && now != pad_id) {
          labels[static_cast<size_t>(r * len + i)] = next;
          ++batch.scored;
        }
      }
    }
  }
  const auto opts = at::TensorOptions().dtype(at::kLong);
  batch.ids = at::from_blob(ids.data(), {b, len}, opts).to(device, false, /*copy=*/true);
  batch.labels = at::from_blob(labels.data(), {b, len}, opts).to(device, false, true);
  return batch;
}

// Summed cross-entropy of a micro-batch (fp32 logits).
at::Tensor SummedLoss(const Params& p, const Batch& batch, const BatchMask& mask,
                      at::ScalarType dtype, AttentionImpl impl, const at::Tensor& inv_freq) {
  at::Tensor hidden = ForwardHidden(p, batch.ids, mask, dtype, impl, inv_freq);
  const at::Tensor& head = p.head();
  at::Tensor logits = at::linear(hidden, head.scalar_type() == dtype ? head : head.to(dtype));
  logits = logits.to(at::kFloat).view({-1, p.config.vocab_size});
  return at::cross_entropy_loss(logits, batch.labels.view({-1}), {}, at::Reduction::Sum, -100);
}

// AdamW over flat tensor lists (PyTorch's algorithm: decoupled decay, bias-corrected moments).
struct AdamW {
  std::vector<at::Tensor> params, decayed, m, v;
  int64_t step = 0;

  void Init(Params& p) {
    params.clear();
    decayed.clear();
    for (auto& [name, t] : p.Named()) {
      params.push_back(*t);
      if (t->dim() >= 2) decayed.push_back(*t);
    }
    m.clear();
    v.clear();
    for (const at::Tensor& t : params) {
      m.push_back(at::zeros_like(t));
      v.push_back(at::zeros_like(t));
    }
  }

  // Returns the global gradient norm before clipping (a device scalar: no sync here).
  at::Tensor Step(double lr, const TrainOptions& o) {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> grads;
    for (at::Tensor& t : params) {
      if (!t.grad().defined()) t.mutable_grad() = at::zeros_like(t);
      grads.push_back(t.grad());
    }
    const std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
    const at::Tensor total = at::stack(norms).norm();
    if (o.clip_norm > 0) {
      const at::Tensor coef = (o.clip_norm / (total + 1e-6)).clamp_max(1.0);
      for (at::Tensor& g : grads) g.mul_(coef);
    }
    ++step;
    const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(step));
    if (o.weight_decay > 0) at::_foreach_mul_(decayed, 1.0 - lr * o.weight_decay);
    at::_foreach_mul_(m, o.beta1);
    at::_foreach_add_(m, grads, 1.0 - o.beta1);
    at::_foreach_mul_(v, o.beta2);
    at::_foreach_addcmul_(v, grads, grads, 1.0 - o.beta2);
    std::vector<at::Tensor> denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, std::sqrt(bc2));
    at::_foreach_add_(denom, o.eps);
    at::_foreach_addcdiv_(params, m, denom, -lr / bc1);
    for (at::Tensor& t : params) t.mutable_grad().reset();
    return total;
  }
};

double LearningRate(const TrainOptions& o, int64_t step) {  // step counts from 0
  if (o.warmup_steps > 0 && step < o.warmup_steps) {
    return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  }
  if (o.schedule == "constant") return o.lr;
  const double span = std::max<int64_t>(1, o.max_steps - o.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

model::TensorData ToTensorData(const std::string& name, const at::Tensor& t, bool bf16) {
  at::Tensor host = t.detach().to(at::kCPU, bf16 ? at::kBFloat16 : at::kFloat).contiguous();
  model::TensorData out{name, bf16 ? model::DType::kBF16 : model::DType::kF32,
                        std::vector<int64_t>(host.sizes().begin(), host.sizes().end()), {}};
  const auto* bytes = static_cast<const uint8_t*>(host.data_ptr());
  out.bytes.assign(bytes, bytes + host.numel() * host.element_size());
  return out;
}

// The HF LlamaForCausalLM tensors, in module order (so shards keep a layer together).
std::vector<model::TensorData> HfTensors(const Params& p, bool bf16) {
  const ModelConfig& c = p.config;
  const int64_t q_rows = c.num_attention_heads * c.head_dim;
  const int64_t kv_rows = c.num_key_value_heads * c.head_dim;
  std::vector<model::TensorData> out;
  out.push_back(ToTensorData("model.embed_tokens.weight", p.embed, bf16));
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const LayerWeights& w = p.layers[l];
    const std::string n = absl::StrCat("model.layers.", l, ".");
    out.push_back(ToTensorData(n + "input_layernorm.weight", w.input_norm, bf16));
    out.push_back(ToTensorData(n + "self_attn.q_proj.weight", w.wqkv.narrow(0, 0, q_rows), bf16));
    out.push_back(ToTensorData(n + "self_attn.k_proj.weight", w.wqkv.narrow(0, q_rows, kv_rows), bf16));
    out.push_back(
        ToTensorData(n + "self_attn.v_proj.weight", w.wqkv.narrow(0, q_rows + kv_rows, kv_rows), bf16));
    out.push_back(ToTensorData(n + "self_attn.o_proj.weight", w.wo, bf16));
    out.push_back(ToTensorData(n + "post_attention_layernorm.weight", w.post_norm, bf16));
    const int64_t inter = c.intermediate_size;
    out.push_back(ToTensorData(n + "mlp.gate_proj.weight", w.w_gate_up.narrow(0, 0, inter), bf16));
    out.push_back(ToTensorData(n + "mlp.up_proj.weight", w.w_gate_up.narrow(0, inter, inter), bf16));
    out.push_back(ToTensorData(n + "mlp.down_proj.weight", w.w_down, bf16));
  }
  out.push_back(ToTensorData("model.norm.weight", p.final_norm, bf16));
  if (p.lm_head.defined()) out.push_back(ToTensorData("lm_head.weight", p.lm_head, bf16));
  return out;
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp.string()));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename to ", path.string(), ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status CopyTokenizerFiles(const std::string& from, const std::string& to) {
  for (const char* name : {"tokenizer.model", "added_tokens.json", "special_tokens_map.json",
                           "tokenizer_config.json"}) {
    const fs::path src = fs::path(from) / name;
    if (!fs::exists(src)) {
      if (std::string(name) == "tokenizer.model") {
        return absl::NotFoundError(absl::StrCat("no tokenizer.model in ", from));
      }
      continue;
    }
    std::error_code ec;
    fs::copy_file(src, fs::path(to) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot copy ", src.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status SaveModel(const Params& p, const model::AnchorSpec& anchors, const std::string& dir,
                       const std::string& tokenizer_from, const TrainOptions& o) {
  std::vector<model::TensorData> tensors = HfTensors(p, o.save_bf16);
  std::vector<const model::TensorData*> refs;
  for (const model::TensorData& t : tensors) refs.push_back(&t);
  RETURN_IF_ERROR(model::WriteShardedSafetensors(dir, refs, static_cast<size_t>(o.save_shard_bytes)));
  ModelConfig config = p.config;
  config.torch_dtype = o.save_bf16 ? "bfloat16" : "float32";
  RETURN_IF_ERROR(WriteText(fs::path(dir) / "config.json", model::ModelConfigToJson(config)));
  RETURN_IF_ERROR(WriteText(fs::path(dir) / model::kAnchorConfigFile, model::AnchorSpecToJson(anchors)));
  if (fs::absolute(tokenizer_from) != fs::absolute(dir)) {
    RETURN_IF_ERROR(CopyTokenizerFiles(tokenizer_from, dir));
  }
  return absl::OkStatus();
}

// Training state beside the model: fp32 weights, AdamW moments and the data cursor.
struct Cursor {
  int64_t step = 0, tokens = 0, epoch = 0, position = 0;
};

absl::Status SaveCheckpoint(Params& p, const AdamW& opt, const Cursor& cursor,
                            const std::string& out_dir) {
  const fs::path dir = fs::path(out_dir) / "checkpoint";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir.string()));
  std::vector<model::TensorData> tensors;
  size_t i = 0;
  for (auto& [name, t] : p.Named()) {
    tensors.push_back(ToTensorData("param." + name, *t, false));
    tensors.push_back(ToTensorData("adam_m." + name, opt.m[i], false));
    tensors.push_back(ToTensorData("adam_v." + name, opt.v[i], false));
    ++i;
  }
  std::vector<const model::TensorData*> refs;
  for (const model::TensorData& t : tensors) refs.push_back(&t);
  RETURN_IF_ERROR(model::WriteSafetensors((dir / "state.safetensors").string(), refs));
  nlohmann::json state = {{"step", cursor.step}, {"tokens", cursor.tokens},
                          {"epoch", cursor.epoch}, {"position", cursor.position},
                          {"adam_step", opt.step}};
  // state.json last: a checkpoint counts only once both files are complete.
  return WriteText(dir / "state.json", state.dump(2) + "\n");
}

absl::StatusOr<bool> LoadCheckpoint(Params& p, AdamW& opt, Cursor& cursor,
                                    const std::string& out_dir, at::Device device) {
  const fs::path dir = fs::path(out_dir) / "checkpoint";
  if (!fs::exists(dir / "state.json")) return false;
  std::ifstream in(dir / "state.json");
  nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
  if (!state.is_object()) return absl::DataLossError(absl::StrCat((dir / "state.json").string(), " is not JSON"));
  ASSIGN_OR_RETURN(std::unique_ptr<model::SafetensorsFile> file,
                   model::SafetensorsFile::Open((dir / "state.safetensors").string()));
  auto load = [&](const std::string& name, at::Tensor& into) -> absl::Status {
    ASSIGN_OR_RETURN(model::TensorView view, file->Get(name));
    if (view.dtype != model::DType::kF32 ||
        view.shape != std::vector<int64_t>(into.sizes().begin(), into.sizes().end())) {
      return absl::DataLossError(absl::StrCat("checkpoint tensor ", name, " in ", file->path(),
                                              " does not match the model"));
    }
    at::NoGradGuard no_grad;
    into.copy_(at::from_blob(const_cast<uint8_t*>(view.data), view.shape,
                             at::TensorOptions().dtype(at::kFloat)).to(device));
    return absl::OkStatus();
  };
  size_t i = 0;
  for (auto& [name, t] : p.Named()) {
    RETURN_IF_ERROR(load("param." + name, *t));
    RETURN_IF_ERROR(load("adam_m." + name, opt.m[i]));
    RETURN_IF_ERROR(load("adam_v." + name, opt.v[i]));
    ++i;
  }
  cursor.step = state.value("step", int64_t{0});
  cursor.tokens = state.value("tokens", int64_t{0});
  cursor.epoch = state.value("epoch", int64_t{0});
  cursor.position = state.value("position", int64_t{0});
  opt.step = state.value("adam_step", int64_t{0});
  return true;
}

absl::StatusOr<model::AnchorSpec> TrainingAnchors(const std::string& kind,
                                                  const model::Tokenizer& tokenizer,
                                                  int32_t pad_id) {
  if (kind == "none") return model::AnchorSpec{model::AnchorKind::kNone, {}, pad_id, ""};
  if (kind == "ac") {
    auto id = tokenizer.TokenToId("<AC>");
    if (!id) return absl::FailedPreconditionError("the tokenizer has no <AC> token (--anchors ac)");
    return model::AnchorSpec{model::AnchorKind::kAc, {*id}, pad_id, "<AC>"};
  }
  if (kind == "ep") {
    auto id = tokenizer.TokenToId(".");
    if (!id) return absl::FailedPreconditionError("the tokenizer has no bare \".\" piece (--anchors ep)");
    return model::AnchorSpec{model::AnchorKind::kEp, {*id}, pad_id, "."};
  }
  return absl::InvalidArgumentError(absl::StrCat("anchors must be none, ac or ep, got \"", kind, "\""));
}

std::string Bar(double fraction, int width) {
  const int filled = static_cast<int>(std::clamp(fraction, 0.0, 1.0) * width);
  return std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(width - filled), '.');
}

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  return s >= 60 ? absl::StrFormat("%dm%02ds", s / 60, s % 60) : absl::StrFormat("%ds", s);
}

int64_t CountParameters(Params& p) {
  int64_t n = 0;
  for (auto& [name, t] : p.Named()) n += t->numel();
  return n;
}

}  // namespace

double TrainingFlopsPerToken(const ModelConfig& c, int64_t seq_len) {
  const double h = static_cast<double>(c.hidden_size);
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double per_layer = h * (q + 2 * kv) + q * h + 3 * h * static_cast<double>(c.intermediate_size);
  const double matmul_params =
      static_cast<double>(c.num_hidden_layers) * per_layer + static_cast<double>(c.vocab_size) * h;
  return 6.0 * matmul_params +
         12.0 * static_cast<double>(c.num_hidden_layers) * q * static_cast<double>(seq_len);
}

absl::StatusOr<TrainResult> Train(const TrainOptions& o) {
  std::function<void(const std::string&)> log = o.log;
  if (!log) log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  if (o.data_dir.empty() || o.out_dir.empty()) {
    return absl::InvalidArgumentError("--data and --out are required");
  }
  if (o.seq_len < 8 || o.batch_size < 1 || o.grad_accum < 1 || o.max_steps < 1) {
    return absl::InvalidArgumentError("--seq-len >= 8, --batch-size, --grad-accum, --steps >= 1");
  }
  if (o.device == model::Device::kCuda && !model::CudaAvailable()) {
    return absl::FailedPreconditionError("--device cuda, but this build has no CUDA or no GPU is visible");
  }
  ASSIGN_OR_RETURN(TokenDataset data, TokenDataset::Open(o.data_dir));
  const std::string tokenizer_dir = o.init_dir.empty() ? o.tokenizer_dir : o.init_dir;
  if (tokenizer_dir.empty()) return absl::InvalidArgumentError("--tokenizer is required for pretrain");
  ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer, model::Tokenizer::Load(tokenizer_dir));
  if (o.anchors == "ac" && data.anchors() != "ac") {
    return absl::InvalidArgumentError(absl::StrCat(
        o.data_dir, " was prepared with --anchors ", data.anchors(),
        "; AC training needs data prepared with --anchors ac (<AC> between sentences)"));
  }
  if (o.anchors != "ac" && data.anchors() == "ac") {
    return absl::InvalidArgumentError(absl::StrCat(o.data_dir, " holds <AC> tokens; use it with --anchors ac"));
  }
  const at::Device device = DeviceOf(o.device);
  const at::ScalarType dtype = o.bf16 ? at::kBFloat16 : at::kFloat;
  AttentionImpl impl = o.attention;
  if (impl == AttentionImpl::kFused && !kHasFusedAttention) impl = AttentionImpl::kEager;

  Params params;
  try {
    if (!o.init_dir.empty()) {
      ASSIGN_OR_RETURN(params, LoadParams(o.init_dir, device));
    } else {
      RETURN_IF_ERROR(model::ValidateModelConfig(o.config));
      params = RandomParams(o.config, o.init_std, o.seed, device);
    }
  } catch (const std::exception& e) {
    return model::TorchStatus(e, "creating the model");
  }
  const ModelConfig& config = params.config;
  if (data.vocab_size() > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(o.data_dir, " has vocabulary ", data.vocab_size(),
                                                   ", the model only ", config.vocab_size));
  }
  const int32_t pad_id = config.pad_token_id >= 0 ? config.pad_token_id : tokenizer->pad_id();
  ASSIGN_OR_RETURN(model::AnchorSpec anchors, TrainingAnchors(o.anchors, *tokenizer, pad_id));
  if (anchors.kind == model::AnchorKind::kAc && !o.init_dir.empty()) {
    // The authors start <AC> from the "." rows of the embedding and the LM head (§2.1) when
    // the base model has never seen it.
    auto dot = tokenizer->TokenToId(".");
    ASSIGN_OR_RETURN(model::AnchorSpec base, model::DetectAnchors(o.init_dir, config, tokenizer.get()));
    if (dot && base.kind != model::AnchorKind::kAc) {
      at::NoGradGuard no_grad;
      const int64_t ac = anchors.token_ids[0];
      params.embed[ac].copy_(params.embed[*dot]);
      if (params.lm_head.defined()) params.lm_head[ac].copy_(params.lm_head[*dot]);
      log(absl::StrCat("anchor-train: <AC> (id ", ac, ") initialised from \".\" (id ", *dot, ")"));
    }
  }
  for (auto& [name, t] : params.Named()) t->set_requires_grad(true);
  const at::Tensor inv_freq = model::InvFreq(config, device);

  const std::vector<Window> windows = CutWindows(data, o.seq_len);
  if (windows.empty()) return absl::InvalidArgumentError(absl::StrCat(o.data_dir, " has no training windows"));
  std::vector<Window> eval_windows;
  std::optional<TokenDataset> eval_data;
  if (!o.eval_data_dir.empty()) {
    ASSIGN_OR_RETURN(TokenDataset held_out, TokenDataset::Open(o.eval_data_dir));
    if ((o.anchors == "ac") != (held_out.anchors() == "ac")) {
      return absl::InvalidArgumentError(absl::StrCat(o.eval_data_dir, " was prepared with --anchors ",
                                                     held_out.anchors(), ", training uses ", o.anchors));
    }
    eval_data = std::move(held_out);
    const std::vector<Window> all = CutWindows(*eval_data, o.seq_len, o.seq_len);
    const int64_t n = std::min<int64_t>(o.eval_windows, static_cast<int64_t>(all.size()));
    for (int64_t i = 0; i < n; ++i) {  // spread over the whole held-out text
      eval_windows.push_back(all[static_cast<size_t>(i * static_cast<int64_t>(all.size()) / std::max<int64_t>(n, 1))]);
    }
  }

  AdamW opt;
  Cursor cursor;
  opt.Init(params);
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", o.out_dir, ": ", ec.message()));
  if (o.resume) {
    ASSIGN_OR_RETURN(bool resumed, LoadCheckpoint(params, opt, cursor, o.out_dir, device));
    if (resumed) log(absl::StrCat("anchor-train: resumed from ", o.out_dir, "/checkpoint at step ", cursor.step));
  }

  const int64_t parameters = CountParameters(params);
  const double flops_per_token = TrainingFlopsPerToken(config, o.seq_len);
  log(absl::StrFormat(
      "anchor-train: %d parameters (%.1f MB as bf16), %d windows of %d tokens from %d tokens, "
      "anchors %s, %s %s, attention %s",
      parameters, parameters * 2 / 1e6, windows.size(), o.seq_len, data.num_tokens(), o.anchors,
      model::DeviceName(o.device), o.bf16 ? "bf16" : "fp32",
      impl == AttentionImpl::kFused ? "fused" : "eager"));

  auto evaluate = [&]() -> double {
    if (eval_windows.empty()) return -1;
    at::NoGradGuard no_grad;
    double sum = 0;
    int64_t count = 0;
    for (size_t i = 0; i < eval_windows.size(); i += static_cast<size_t>(o.batch_size)) {
      std::vector<std::vector<int32_t>> rows;
      for (size_t j = i; j < std::min(eval_windows.size(), i + static_cast<size_t>(o.batch_size)); ++j) {
        rows.push_back(WindowTokens(*eval_data, eval_windows[j], o.seq_len, pad_id));
      }
      Batch batch = MakeBatch(rows, pad_id, device);
      BatchMask mask = BuildMask(batch.ids, anchors.token_ids, pad_id);
      sum += SummedLoss(params, batch, mask, dtype, impl, inv_freq).item<double>();
      count += batch.scored;
    }
    return sum / static_cast<double>(std::max<int64_t>(count, 1));
  };

  std::ofstream curve_log(fs::path(o.out_dir) / "train_log.jsonl", std::ios::app);
  TrainResult result;
  result.parameters = parameters;
  const int64_t first_step = cursor.step;
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  std::vector<int64_t> order = EpochOrder(static_cast<int64_t>(windows.size()), o.seed, cursor.epoch);
  at::Tensor interval_loss = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device));
  int64_t interval_scored = 0, interval_tokens = 0;
  double interval_start = 0;
  at::Tensor grad_norm;
  try {
    while (cursor.step < o.max_steps) {
      // One optimizer step over grad_accum micro-batches; the loss is the mean over every
      // scored token of the step.
      std::vector<Batch> micro;
      int64_t scored = 0;
      for (int64_t a = 0; a < o.grad_accum; ++a) {
        std::vector<std::vector<int32_t>> rows;
        while (static_cast<int64_t>(rows.size()) < o.batch_size) {
          if (cursor.position >= static_cast<int64_t>(order.size())) {
            ++cursor.epoch;
            cursor.position = 0;
            order = EpochOrder(static_cast<int64_t>(windows.size()), o.seed, cursor.epoch);
          }
          rows.push_back(WindowTokens(data, windows[static_cast<size_t>(order[static_cast<size_t>(cursor.position++)])],
                                      o.seq_len, pad_id));
        }
        micro.push_back(MakeBatch(rows, pad_id, device));
        scored += micro.back().scored;
      }
      const double lr = LearningRate(o, cursor.step);
      for (const Batch& batch : micro) {
        BatchMask mask = BuildMask(batch.ids, anchors.token_ids, pad_id);
        at::Tensor loss = SummedLoss(params, batch, mask, dtype, impl, inv_freq);
        (loss / static_cast<double>(std::max<int64_t>(scored, 1))).backward();
        interval_loss += loss.detach();
      }
      grad_norm = opt.Step(lr, o);
      ++cursor.step;
      cursor.tokens += scored;
      interval_scored += scored;
      interval_tokens += o.grad_accum * o.batch_size * o.seq_len;
      const bool last = cursor.step == o.max_steps ||
                        (o.max_minutes > 0 && elapsed() > o.max_minutes * 60) ||
                        (o.stop_after > 0 && cursor.step - first_step >= o.stop_after);
      const bool eval_now = last || (o.eval_every > 0 && cursor.step % o.eval_every == 0);
      if (last || eval_now || cursor.step % o.log_every == 0) {
        TrainPoint point;
        point.step = cursor.step;
        point.tokens = cursor.tokens;
        point.loss = interval_loss.item<double>() / static_cast<double>(std::max<int64_t>(interval_scored, 1));
        point.lr = lr;
        point.grad_norm = grad_norm.item<double>();
        const double now = elapsed();
        point.tokens_per_second = static_cast<double>(interval_tokens) / std::max(now - interval_start, 1e-9);
        if (o.peak_tflops > 0) point.mfu = point.tokens_per_second * flops_per_token / (o.peak_tflops * 1e12);
        if (eval_now) point.eval_loss = evaluate();
        const double done = static_cast<double>(cursor.step) / static_cast<double>(o.max_steps);
        const double eta = o.max_minutes > 0 ? std::min(o.max_minutes * 60 - now, now / done - now)
                                             : now / done - now;
        std::string line = absl::StrFormat(
            "step %6d/%d [%s] loss %.4f lr %.2e |g| %.2f %7.0f tok/s", point.step, o.max_steps,
            Bar(done, 24), point.loss, point.lr, point.grad_norm, point.tokens_per_second);
        if (point.mfu > 0) absl::StrAppend(&line, absl::StrFormat(" MFU %.1f%%", 100 * point.mfu));
        if (point.eval_loss >= 0) {
          absl::StrAppend(&line, absl::StrFormat(" eval %.4f (ppl %.2f)", point.eval_loss, std::exp(point.eval_loss)));
        }
        absl::StrAppend(&line, " elapsed ", Duration(now), " eta ", Duration(std::max(0.0, eta)));
        log(line);
        nlohmann::json j = {{"step", point.step}, {"tokens", point.tokens}, {"loss", point.loss},
                            {"lr", point.lr}, {"grad_norm", point.grad_norm},
                            {"tokens_per_second", point.tokens_per_second}, {"mfu", point.mfu},
                            {"seconds", now}, {"anchors", o.anchors}};
        if (point.eval_loss >= 0) j["eval_loss"] = point.eval_loss;
        curve_log << j.dump() << "\n" << std::flush;
        result.curve.push_back(point);
        result.final_loss = point.loss;
        if (point.eval_loss >= 0) result.final_eval_loss = point.eval_loss;
        interval_loss.zero_();
        interval_scored = interval_tokens = 0;
        interval_start = elapsed();
      }
      if (o.checkpoint_every > 0 && cursor.step % o.checkpoint_every == 0 && !last) {
        RETURN_IF_ERROR(SaveCheckpoint(params, opt, cursor, o.out_dir));
      }
      if (last) break;
    }
    RETURN_IF_ERROR(SaveCheckpoint(params, opt, cursor, o.out_dir));
    RETURN_IF_ERROR(SaveModel(params, anchors, o.out_dir, tokenizer_dir, o));
  } catch (const std::exception& e) {
    return model::TorchStatus(e, absl::StrCat("training step ", cursor.step + 1));
  }
  result.steps = cursor.step;
  result.tokens = cursor.tokens;
  result.seconds = elapsed();
  log(absl::StrFormat("anchor-train: %d steps, %d tokens in %s; wrote %s", result.steps, result.tokens,
                      Duration(result.seconds), o.out_dir));
  return result;
}

absl::StatusOr<std::vector<float>> TrainingLogits(const std::string& dir,
                                                  const std::vector<std::vector<int32_t>>& batch,
                                                  const std::string& anchors,
                                                  AttentionImpl attention) {
  if (batch.empty() || batch[0].empty()) return absl::InvalidArgumentError("empty batch");
  for (const auto& row : batch) {
    if (row.size() != batch[0].size()) return absl::InvalidArgumentError("rows differ in length");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer, model::Tokenizer::Load(dir));
  try {
    at::NoGradGuard no_grad;
    ASSIGN_OR_RETURN(Params p, LoadParams(dir, at::kCPU));
    const int32_t pad_id = p.config.pad_token_id >= 0 ? p.config.pad_token_id : tokenizer->pad_id();
    ASSIGN_OR_RETURN(model::AnchorSpec spec, TrainingAnchors(anchors, *tokenizer, pad_id));
    if (attention == AttentionImpl::kFused && !kHasFusedAttention) attention = AttentionImpl::kEager;
    Batch b = MakeBatch(batch, pad_id, at::kCPU);
    BatchMask mask = BuildMask(b.ids, spec.token_ids, pad_id);
    at::Tensor hidden = ForwardHidden(p, b.ids, mask, at::kFloat, attention, model::InvFreq(p.config, at::kCPU));
    at::Tensor logits = at::linear(hidden, p.head()).contiguous();
    return std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
  } catch (const std::exception& e) {
    return model::TorchStatus(e, "training forward");
  }
}

absl::StatusOr<std::vector<StepTiming>> TimeTrainingSteps(const ModelConfig& config,
                                                          const std::string& anchors,
                                                          int32_t anchor_id, int64_t batch_size,
                                                          int64_t seq_len, int64_t sentence_len,
                                                          int steps, model::Device device_kind,
                                                          bool bf16, double peak_tflops) {
  RETURN_IF_ERROR(model::ValidateModelConfig(config));
  const at::Device device = DeviceOf(device_kind);
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  std::vector<StepTiming> out;
  try {
    Params p = RandomParams(config, 0.02, 1, device);
    for (auto& [name, t] : p.Named()) t->set_requires_grad(true);
    AdamW opt;
    opt.Init(p);
    TrainOptions o;
    const at::Tensor inv_freq = model::InvFreq(config, device);
    // Sentences of `sentence_len` tokens, each closed by an anchor (or none for "none").
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(batch_size));
    common::SplitMix rng(7);
    for (auto& row : rows) {
      for (int64_t i = 0; i < seq_len; ++i) {
        const bool anchor = anchors != "none" && (i + 1) % sentence_len == 0;
        row.push_back(anchor ? anchor_id : static_cast<int32_t>(10 + rng.Below(static_cast<size_t>(config.vocab_size - 10))));
      }
    }
    const Batch batch = MakeBatch(rows, -1, device);
    const std::vector<int32_t> ids = anchors == "none" ? std::vector<int32_t>{} : std::vector<int32_t>{anchor_id};
    std::vector<AttentionImpl> impls = {AttentionImpl::kEager};
    if (kHasFusedAttention) impls.push_back(AttentionImpl::kFused);
    for (AttentionImpl impl : impls) {
      auto run = [&](int n) {
        at::Tensor loss;
        for (int s = 0; s < n; ++s) {
          BatchMask mask = BuildMask(batch.ids, ids, -1);
          loss = SummedLoss(p, batch, mask, dtype, impl, inv_freq);
          (loss / static_cast<double>(batch.scored)).backward();
          opt.Step(1e-4, o);
        }
        return loss.item<double>();  // waits for the device
      };
      run(2);  // warm-up: allocator, kernels, autotuning
#ifdef ANCHORSERVE_CUDA
      if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(0);
#endif
      const auto t0 = std::chrono::steady_clock::now();
      run(steps);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      StepTiming t;
      t.attention = impl;
      t.step_ms = 1e3 * seconds / steps;
      t.tokens_per_second = static_cast<double>(batch_size * seq_len * steps) / seconds;
#ifdef ANCHORSERVE_CUDA
      if (device.is_cuda()) {
        t.peak_memory_mb = static_cast<double>(
            c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak) / 1e6;
      }
#endif
      if (peak_tflops > 0) t.mfu = t.tokens_per_second * TrainingFlopsPerToken(config, seq_len) / (peak_tflops * 1e12);
      out.push_back(t);
    }
  } catch (const std::exception& e) {
    return model::TorchStatus(e, "timing training steps");
  }
  return out;
}

}  // namespace anchorserve::train
