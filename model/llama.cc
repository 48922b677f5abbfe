#include "model/llama.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/llama_impl.h"
#include "model/safetensors.h"

namespace anchorserve::model {
namespace {

at::ScalarType ScalarTypeOf(Precision precision) {
  return precision == Precision::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

absl::StatusOr<at::ScalarType> ScalarTypeOf(DType dtype, absl::string_view tensor) {
  switch (dtype) {
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor ", tensor, " has dtype ",
                                                     DTypeName(dtype),
                                                     "; weights must be F32, F16 or BF16"));
  }
}


absl::Status CheckDevice(const LoadOptions& options) {
  if (options.device == Device::kCuda && !CudaAvailable()) {
    return absl::FailedPreconditionError(
        "device cuda requested, but this build has no CUDA libtorch or no GPU is visible");
  }
  if (options.device == Device::kCuda) {
    if (options.device_index < 0 || options.device_index >= CudaDeviceCount()) {
      return absl::InvalidArgumentError(
          absl::StrCat("device_index ", options.device_index, " is not a visible CUDA device (",
                       CudaDeviceCount(), " visible; CUDA_VISIBLE_DEVICES applies)"));
    }
    try {
      // The caller's later device-less allocations (the KV pool) follow the weights.
      c10::impl::getDeviceGuardImpl(at::kCUDA)->setDevice(
          at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(options.device_index)));
    } catch (const std::exception& e) {
      return TorchStatus(e, absl::StrCat("select CUDA device ", options.device_index));
    }
  }
  if (options.num_threads > 0) at::set_num_threads(options.num_threads);
  return absl::OkStatus();
}

at::TensorOptions TensorOptionsOf(const LoadOptions& options) {
  return at::TensorOptions()
      .dtype(ScalarTypeOf(options.precision))
      .device(options.device == Device::kCuda
                  ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(options.device_index))
                  : at::Device(at::kCPU));
}

}  // namespace

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return weight * h.to(x.scalar_type());
}

namespace {
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}
}  // namespace

at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos.unsqueeze(-2) + RotateHalf(x) * sin.unsqueeze(-2);
}

at::Tensor InvFreq(const ModelConfig& config, const at::Device& device) {
  // As HF: base ** (arange(0, d, 2) / d) in fp32.
  at::Tensor exponents =
      at::arange(0, config.head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
      static_cast<double>(config.head_dim);
  return (1.0 / at::pow(config.rope_theta, exponents)).to(device);
}

at::Tensor RopeAngles(const at::Tensor& positions, const at::Tensor& inv_freq) {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;
  return at::cat({freqs, freqs}, -1);
}

absl::StatusOr<Device> ParseDevice(absl::string_view name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("device must be cpu or cuda, got \"", name, "\""));
}

absl::StatusOr<Precision> ParsePrecision(absl::string_view name) {
  if (name == "float32" || name == "fp32") return Precision::kFloat32;
  if (name == "bfloat16" || name == "bf16") return Precision::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype must be float32 or bfloat16, got \"", name, "\""));
}

absl::string_view DeviceName(Device device) { return device == Device::kCuda ? "cuda" : "cpu"; }
absl::string_view PrecisionName(Precision precision) {
  return precision == Precision::kBFloat16 ? "bfloat16" : "float32";
}

absl::Status TorchStatus(const std::exception& e, absl::string_view what) {
  const std::string message = e.what();
  const std::string first_line = message.substr(0, message.find('\n'));
  if (message.find("out of memory") != std::string::npos) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": ", first_line));
  }
  return absl::InternalError(absl::StrCat(what, ": ", first_line));
}

at::Tensor ToDevice(const at::Tensor& host, const at::Device& device) {
  if (!device.is_cuda()) return host.to(device);
  at::Tensor pinned = at::empty(host.sizes(), host.options().pinned_memory(true));
  pinned.copy_(host);
  return pinned.to(device, /*non_blocking=*/true);
}

bool CudaAvailable() { return at::hasCUDA(); }
int CudaDeviceCount() { return at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0; }

at::Tensor LlamaImpl::ForwardHidden(const at::Tensor& ids, const at::Tensor& positions,
                                    const std::vector<LayerKV>& past, const at::Tensor& allowed,
                                    std::vector<LayerKV>* present) const {
  const int64_t s = ids.size(0);
  const int64_t heads = config.num_attention_heads;
  const int64_t kv_heads = config.num_key_value_heads;
  const int64_t group = heads / kv_heads;
  const int64_t d = config.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const at::ScalarType dtype = options.dtype().toScalarType();

  const at::Tensor emb = RopeAngles(positions, inv_freq);  // [S, d]
  const at::Tensor cos = emb.cos().to(dtype);
  const at::Tensor sin = emb.sin().to(dtype);
  // [1, S, T] so it broadcasts over each kv head's group of query heads.
  const at::Tensor blocked = allowed.logical_not().unsqueeze(0).unsqueeze(0);

  at::Tensor x = at::embedding(embed, ids);  // [S, hidden]
  present->clear();
  present->reserve(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerWeights& w = layers[l];
    at::Tensor h = RmsNorm(x, w.input_norm, config.rms_norm_eps);
    at::Tensor qkv = at::linear(h, w.wqkv);
    at::Tensor q = qkv.narrow(1, 0, heads * d).view({s, heads, d});
    at::Tensor k = qkv.narrow(1, heads * d, kv_heads * d).view({s, kv_heads, d});
    at::Tensor v = qkv.narrow(1, (heads + kv_heads) * d, kv_heads * d).view({s, kv_heads, d});
    q = ApplyRope(q, cos, sin);
    k = ApplyRope(k, cos, sin);
    LayerKV now{k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()};
    at::Tensor keys = now.k, values = now.v;
    if (l < past.size() && past[l].k.defined() && past[l].k.size(1) > 0) {
      keys = at::cat({past[l].k, now.k}, 1);
      values = at::cat({past[l].v, now.v}, 1);
    }
    const int64_t t = keys.size(1);
    // Query head kv*group + r uses kv head kv (HF repeat_kv order).
    at::Tensor qg =
        q.view({s, kv_heads, group, d}).permute({1, 2, 0, 3}).reshape({kv_heads, group * s, d});
    at::Tensor scores = at::matmul(qg, keys.transpose(1, 2)).mul_(scale);  // [kv, g*S, T]
    scores = scores.view({kv_heads, group, s, t}).to(at::kFloat);
    scores.masked_fill_(blocked, std::numeric_limits<float>::lowest());
    at::Tensor probs = at::softmax(scores, -1).to(dtype).view({kv_heads, group * s, t});
    at::Tensor out = at::matmul(probs, values)  // [kv, g*S, d]
                         .view({kv_heads, group, s, d})
                         .permute({2, 0, 1, 3})
                         .reshape({s, heads * d});
    x = x + at::linear(out, w.wo);
    h = RmsNorm(x, w.post_norm, config.rms_norm_eps);
    at::Tensor gate_up = at::linear(h, w.w_gate_up);
    const int64_t inter = config.intermediate_size;
    at::Tensor act = at::silu(gate_up.narrow(1, 0, inter)) * gate_up.narrow(1, inter, inter);
    x = x + at::linear(act, w.w_down);
    present->push_back(std::move(now));
  }
  return RmsNorm(x, final_norm, config.rms_norm_eps);
}

at::Tensor LlamaImpl::Logits(const at::Tensor& hidden) const {
  return at::linear(hidden, lm_head).to(at::kFloat);
}

LlamaModel::LlamaModel(ModelConfig config, LoadOptions options, std::unique_ptr<LlamaImpl> impl)
    : config_(std::move(config)), options_(options), impl_(std::move(impl)) {}

LlamaModel::~LlamaModel() = default;

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const std::string& dir,
                                                             const LoadOptions& options) {
  RETURN_IF_ERROR(CheckDevice(options));
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  c10::InferenceMode guard;
  auto impl = std::make_unique<LlamaImpl>();
  impl->config = config;
  impl->options = TensorOptionsOf(options);
  const int64_t hidden = config.hidden_size;
  const int64_t q_rows = config.num_attention_heads * config.head_dim;
  const int64_t kv_rows = config.num_key_value_heads * config.head_dim;

  auto load = [&](const std::string& name,
                  std::vector<int64_t> shape) -> absl::StatusOr<at::Tensor> {
    ASSIGN_OR_RETURN(TensorView view, checkpoint->Get(name));
    if (view.shape != shape) {
      std::string want, got;
      for (int64_t v : shape) absl::StrAppend(&want, want.empty() ? "" : ",", v);
      for (int64_t v : view.shape) absl::StrAppend(&got, got.empty() ? "" : ",", v);
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " in ", dir, " has shape [",
                                                     got, "], config.json implies [", want, "]"));
    }
    ASSIGN_OR_RETURN(at::ScalarType type, ScalarTypeOf(view.dtype, name));
    try {
      at::Tensor src = at::from_blob(const_cast<uint8_t*>(view.data), view.shape,
                                     at::TensorOptions().dtype(type));
      return src.to(impl->options.device(), impl->options.dtype().toScalarType(),
                    /*non_blocking=*/false, /*copy=*/true);
    } catch (const std::exception& e) {
      return TorchStatus(e, absl::StrCat("loading tensor ", name));
    }
  };

  try {
    ASSIGN_OR_RETURN(impl->embed, load("model.embed_tokens.weight", {config.vocab_size, hidden}));
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      LayerWeights w;
      ASSIGN_OR_RETURN(w.input_norm, load(p + "input_layernorm.weight", {hidden}));
      ASSIGN_OR_RETURN(w.post_norm, load(p + "post_attention_layernorm.weight", {hidden}));
      ASSIGN_OR_RETURN(at::Tensor wq, load(p + "self_attn.q_proj.weight", {q_rows, hidden}));
      ASSIGN_OR_RETURN(at::Tensor wk, load(p + "self_attn.k_proj.weight", {kv_rows, hidden}));
      ASSIGN_OR_RETURN(at::Tensor wv, load(p + "self_attn.v_proj.weight", {kv_rows, hidden}));
      ASSIGN_OR_RETURN(w.wo, load(p + "self_attn.o_proj.weight", {hidden, q_rows}));
      ASSIGN_OR_RETURN(at::Tensor wg,
                       load(p + "mlp.gate_proj.weight", {config.intermediate_size, hidden}));
      ASSIGN_OR_RETURN(at::Tensor wu,
                       load(p + "mlp.up_proj.weight", {config.intermediate_size, hidden}));
      ASSIGN_OR_RETURN(w.w_down,
                       load(p + "mlp.down_proj.weight", {hidden, config.intermediate_size}));
      w.wqkv = at::cat({wq, wk, wv}, 0);
      w.w_gate_up = at::cat({wg, wu}, 0);
      impl->layers.push_back(std::move(w));
    }
    ASSIGN_OR_RETURN(impl->final_norm, load("model.norm.weight", {hidden}));
    if (config.tie_word_embeddings) {
      impl->lm_head = impl->embed;
    } else {
      ASSIGN_OR_RETURN(impl->lm_head, load("lm_head.weight", {config.vocab_size, hidden}));
    }
    impl->inv_freq = InvFreq(config, impl->options.device());
  } catch (const std::exception& e) {
    return TorchStatus(e, absl::StrCat("loading ", dir));
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(config, options, std::move(impl)));
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::CreateRandom(const ModelConfig& config,
                                                                     uint64_t seed,
                                                                     const LoadOptions& options,
                                                                     double init_std) {
  RETURN_IF_ERROR(ValidateModelConfig(config));
  RETURN_IF_ERROR(CheckDevice(options));
  c10::InferenceMode guard;
  auto impl = std::make_unique<LlamaImpl>();
  impl->config = config;
  impl->options = TensorOptionsOf(options);
  try {
    at::manual_seed(seed);
    auto normal = [&](int64_t rows, int64_t cols) {
      return at::empty({rows, cols}, impl->options).normal_(0.0, init_std);
    };
    auto ones = [&](int64_t n) { return at::ones({n}, impl->options); };
    const int64_t hidden = config.hidden_size;
    const int64_t q_rows = config.num_attention_heads * config.head_dim;
    const int64_t kv_rows = config.num_key_value_heads * config.head_dim;
    impl->embed = normal(config.vocab_size, hidden);
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      LayerWeights w;
      w.input_norm = ones(hidden);
      w.post_norm = ones(hidden);
      w.wqkv = normal(q_rows + 2 * kv_rows, hidden);
      w.wo = normal(hidden, q_rows);
      w.w_gate_up = normal(2 * config.intermediate_size, hidden);
      w.w_down = normal(hidden, config.intermediate_size);
      impl->layers.push_back(std::move(w));
    }
    impl->final_norm = ones(hidden);
    impl->lm_head = config.tie_word_embeddings ? impl->embed : normal(config.vocab_size, hidden);
    impl->inv_freq = InvFreq(config, impl->options.device());
  } catch (const std::exception& e) {
    return TorchStatus(e, "creating random weights");
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(config, options, std::move(impl)));
}

int64_t LlamaModel::WeightBytes() const {
  auto bytes = [](const at::Tensor& t) {
    return t.numel() * static_cast<int64_t>(t.element_size());
  };
  int64_t total = bytes(impl_->embed) + bytes(impl_->final_norm);
  if (!config_.tie_word_embeddings) total += bytes(impl_->lm_head);
  for (const LayerWeights& w : impl_->layers) {
    total += bytes(w.input_norm) + bytes(w.post_norm) + bytes(w.wqkv) + bytes(w.wo) +
             bytes(w.w_gate_up) + bytes(w.w_down);
  }
  return total;
}

absl::StatusOr<std::vector<float>> LlamaModel::ForwardFull(
    absl::Span<const int32_t> ids, absl::Span<const int32_t> positions,
    absl::Span<const uint8_t> allowed) const {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n == 0) return absl::InvalidArgumentError("token_ids must not be empty");
  if (static_cast<int64_t>(positions.size()) != n) {
    return absl::InvalidArgumentError("positions must have one entry per token");
  }
  if (static_cast<int64_t>(allowed.size()) != n * n) {
    return absl::InvalidArgumentError("mask must be L x L for L tokens");
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  c10::InferenceMode guard;
  try {
    const at::Device device = impl_->options.device();
    at::Tensor id_t = at::tensor(std::vector<int64_t>(ids.begin(), ids.end())).to(device);
    at::Tensor pos_t =
        at::tensor(std::vector<int64_t>(positions.begin(), positions.end())).to(device);
    at::Tensor mask = at::from_blob(const_cast<uint8_t*>(allowed.data()), {n, n},
                                    at::TensorOptions().dtype(at::kByte))
                          .to(device, at::kBool, false, true);
    std::vector<LayerKV> present;
    at::Tensor hidden = impl_->ForwardHidden(id_t, pos_t, {}, mask, &present);
    at::Tensor logits = impl_->Logits(hidden).cpu().contiguous();
    return std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
  } catch (const std::exception& e) {
    return TorchStatus(e, "forward");
  }
}

double MeasureCopyBandwidth(Device device, int64_t bytes) {
  c10::InferenceMode guard;
  const at::Device dev = device == Device::kCuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  at::Tensor src =
      at::empty({bytes / 4}, at::TensorOptions().dtype(at::kFloat).device(dev)).uniform_();
  at::Tensor dst = at::empty_like(src);
  dst.copy_(src);
  (void)dst[0].item<float>();  // warm-up and sync
  const int reps = 20;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) dst.copy_(src);
  (void)dst[0].item<float>();  // a device-to-host read waits for the copies
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 2.0 * static_cast<double>(src.numel() * 4) * reps / seconds;
}

}  // namespace anchorserve::model
