#include "model/anchor_sequence.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "absl/strings/str_cat.h"
#include "model/ansan_mask.h"
#include "model/llama_impl.h"

namespace anchorserve::model {

absl::StatusOr<AttentionMode> ParseAttentionMode(absl::string_view name) {
  if (name == "full") return AttentionMode::kFull;
  if (name == "anchor") return AttentionMode::kAnchor;
  return absl::InvalidArgumentError(
      absl::StrCat("mode must be full or anchor, got \"", name, "\""));
}

absl::StatusOr<PositionPolicy> ParsePositionPolicy(absl::string_view name) {
  if (name == "absolute") return PositionPolicy::kAbsolute;
  if (name == "compact") return PositionPolicy::kCompact;
  return absl::InvalidArgumentError(
      absl::StrCat("policy must be absolute or compact, got \"", name, "\""));
}

absl::string_view AttentionModeName(AttentionMode mode) {
  return mode == AttentionMode::kFull ? "full" : "anchor";
}

absl::string_view PositionPolicyName(PositionPolicy policy) {
  return policy == PositionPolicy::kAbsolute ? "absolute" : "compact";
}

AnchorSequence::AnchorSequence(const LlamaModel* model, SequenceOptions options)
    : model_(model), options_(std::move(options)) {}

AnchorSequence::~AnchorSequence() = default;

std::unique_ptr<AnchorSequence> AnchorSequence::Fork() const {
  std::unique_ptr<AnchorSequence> copy(new AnchorSequence(model_, options_));
  copy->entries_ = entries_;
  copy->kv_ = kv_;
  copy->tokens_seen_ = tokens_seen_;
  copy->anchors_ = anchors_;
  copy->peak_kv_tokens_ = peak_kv_tokens_;
  return copy;
}

absl::StatusOr<std::unique_ptr<AnchorSequence>> AnchorSequence::Create(const LlamaModel* model,
                                                                       SequenceOptions options) {
  if (model == nullptr) return absl::InvalidArgumentError("model must not be null");
  return std::unique_ptr<AnchorSequence>(new AnchorSequence(model, std::move(options)));
}

absl::StatusOr<std::vector<float>> AnchorSequence::Feed(absl::Span<const int32_t> ids,
                                                        bool all_logits) {
  const ModelConfig& config = model_->config();
  const int64_t s = static_cast<int64_t>(ids.size());
  if (s == 0) return absl::InvalidArgumentError("token_ids must not be empty");
  for (int32_t id : ids) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
  }
  const int64_t p = kv_tokens();
  const int64_t first_position = options_.policy == PositionPolicy::kAbsolute ? tokens_seen_ : p;
  if (first_position + s > config.max_position_embeddings) {
    return absl::OutOfRangeError(
        absl::StrCat("position ", first_position + s - 1, " would reach max_position_embeddings (",
                     config.max_position_embeddings, ") of the model under the ",
                     PositionPolicyName(options_.policy), " position policy"));
  }
  const bool anchor_mode = options_.mode == AttentionMode::kAnchor;
  const AnchorSpec& spec = options_.anchors;

  // Mask [S, P + S]: the cached columns first, then the chunk.
  std::vector<uint8_t> allowed(static_cast<size_t>(s * (p + s)), 0);
  const AttentionMask chunk_mask = anchor_mode ? BuildAnsanMask(ids, spec) : BuildCausalMask(s);
  bool anchor_before = false;  // an anchor at a smaller chunk index closed the cached sentence
  for (int64_t i = 0; i < s; ++i) {
    const bool row_anchor = anchor_mode && spec.IsAnchor(ids[i]);
    const bool row_pad = anchor_mode && spec.pad_id >= 0 && ids[i] == spec.pad_id;
    uint8_t* row = &allowed[i * (p + s)];
    for (int64_t c = 0; c < p; ++c) {
      const KvEntry& e = entries_[c];
      if (!anchor_mode) {
        row[c] = 1;
      } else if (row_pad || (spec.pad_id >= 0 && e.token == spec.pad_id)) {
        row[c] = 0;
      } else if (e.anchor) {
        row[c] = row_anchor ? 0 : 1;
      } else {
        row[c] = anchor_before ? 0 : 1;
      }
    }
    for (int64_t j = 0; j <= i; ++j) row[p + j] = chunk_mask[i * s + j];
    if (row_anchor) anchor_before = true;
  }

  c10::InferenceMode guard;
  const LlamaImpl& impl = model_->impl();
  const at::Device device = impl.options.device();
  try {
    std::vector<int64_t> id64(ids.begin(), ids.end());
    std::vector<int64_t> pos64(s);
    for (int64_t i = 0; i < s; ++i) pos64[i] = first_position + i;
    at::Tensor id_t = at::tensor(id64).to(device);
    at::Tensor pos_t = at::tensor(pos64).to(device);
    at::Tensor mask =
        at::from_blob(allowed.data(), {s, p + s}, at::TensorOptions().dtype(at::kByte))
            .to(device, at::kBool, false, true);
    std::vector<LayerKV> present;
    at::Tensor hidden = impl.ForwardHidden(id_t, pos_t, kv_, mask, &present);
    at::Tensor logits = all_logits ? impl.Logits(hidden) : impl.Logits(hidden.narrow(0, s - 1, 1));
    logits = logits.cpu().contiguous();
    std::vector<float> out(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());

    // Commit: append the chunk, then REDUCTION if the chunk holds anchors.
    std::vector<KvEntry> next = entries_;
    int64_t last_anchor = -1, chunk_anchors = 0;
    for (int64_t i = 0; i < s; ++i) {
      const bool is_anchor = anchor_mode && spec.IsAnchor(ids[i]);
      next.push_back({ids[i], pos64[i], is_anchor});
      if (is_anchor) {
        last_anchor = i;
        ++chunk_anchors;
      }
    }
    std::vector<LayerKV> kv(present.size());
    for (size_t l = 0; l < present.size(); ++l) {
      if (p == 0) {
        kv[l] = present[l];
      } else {
        kv[l] = {at::cat({kv_[l].k, present[l].k}, 1), at::cat({kv_[l].v, present[l].v}, 1)};
      }
    }
    if (chunk_anchors > 0) {
      std::vector<int64_t> keep;
      for (int64_t c = 0; c < p; ++c) {
        if (entries_[c].anchor) keep.push_back(c);
      }
      for (int64_t i = 0; i < s; ++i) {
        if (next[p + i].anchor || i > last_anchor) keep.push_back(p + i);
      }
      at::Tensor index = at::tensor(keep).to(device);
      for (LayerKV& layer : kv) {
        layer.k = layer.k.index_select(1, index);
        layer.v = layer.v.index_select(1, index);
      }
      std::vector<KvEntry> kept;
      kept.reserve(keep.size());
      for (int64_t c : keep) kept.push_back(next[c]);
      next = std::move(kept);
    }
    entries_ = std::move(next);
    kv_ = std::move(kv);
    tokens_seen_ += s;
    anchors_ += chunk_anchors;
    peak_kv_tokens_ = std::max(peak_kv_tokens_, p + s);
    return out;
  } catch (const std::exception& e) {
    return TorchStatus(e, "forward");
  }
}

}  // namespace anchorserve::model
