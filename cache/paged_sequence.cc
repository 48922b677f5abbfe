#include "cache/paged_sequence.h"

#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cache/block_pool_impl.h"
#include "cache/cuda/paged_attention.h"
#include "common/status_macros.h"
#include "model/ansan_mask.h"
#include "model/llama_impl.h"

namespace anchorserve::cache {
namespace {

using at::indexing::Slice;

int64_t BlocksFor(int64_t tokens, int64_t block_tokens) {
  return (tokens + block_tokens - 1) / block_tokens;
}

// Allocates `n` blocks, all or nothing.
absl::StatusOr<std::vector<int32_t>> AllocateAll(BlockPool* pool, int64_t n) {
  std::vector<int32_t> blocks;
  blocks.reserve(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) {
    auto block = pool->Allocate();
    if (!block.ok()) {
      for (int32_t b : blocks) pool->Free(b);
      return block.status();
    }
    blocks.push_back(*block);
  }
  return blocks;
}

absl::Status CheckGeometry(const model::LlamaModel& model, const BlockPool& pool) {
  const KvGeometry want = GeometryOf(model.config(), model.options().precision);
  const KvGeometry& have = pool.options().geometry;
  if (want.num_layers != have.num_layers || want.num_kv_heads != have.num_kv_heads ||
      want.head_dim != have.head_dim || want.dtype_bytes != have.dtype_bytes ||
      pool.options().device != model.options().device) {
    return absl::InvalidArgumentError("KV pool geometry, dtype or device does not match the model");
  }
  return absl::OkStatus();
}

}  // namespace

PagedSequence::PagedSequence(const model::LlamaModel* model, BlockPool* pool,
                             PagedSequenceOptions options)
    : model_(model), pool_(pool), options_(std::move(options)) {}

PagedSequence::~PagedSequence() {
  FreeRegion(anchors_);
  FreeRegion(kept_full_);
  FreeRegion(sentence_);
}

void PagedSequence::FreeRegion(Region& region) {
  for (int32_t b : region.blocks) pool_->Free(b);
  region.blocks.clear();
  region.entries.clear();
}

absl::StatusOr<std::unique_ptr<PagedSequence>> PagedSequence::Create(
    const model::LlamaModel* model, BlockPool* pool, PagedSequenceOptions options) {
  if (model == nullptr || pool == nullptr) {
    return absl::InvalidArgumentError("model and pool must not be null");
  }
  RETURN_IF_ERROR(CheckGeometry(*model, *pool));
  return std::unique_ptr<PagedSequence>(new PagedSequence(model, pool, std::move(options)));
}

std::vector<SnapshotEntry> PagedSequence::entries() const {
  std::vector<SnapshotEntry> all;
  all.reserve(anchors_.entries.size() + kept_full_.entries.size() + sentence_.entries.size());
  for (const Region* r : {&anchors_, &kept_full_, &sentence_}) {
    all.insert(all.end(), r->entries.begin(), r->entries.end());
  }
  return all;
}

int64_t PagedSequence::blocks_held() const {
  return static_cast<int64_t>(anchors_.blocks.size() + kept_full_.blocks.size() +
                              sentence_.blocks.size());
}

int64_t PagedSequence::BlocksForNext(int32_t token) const {
  const int64_t bt = pool_->block_tokens();
  const Region* region = &sentence_;
  if (options_.mode == model::AttentionMode::kFull) {
    region = &kept_full_;
  } else if (options_.anchors.IsAnchor(token)) {
    region = &anchors_;
  }
  return static_cast<int64_t>(region->entries.size()) % bt == 0 ? 1 : 0;
}

KvAccounting PagedSequence::accounting() const {
  KvAccounting a;
  a.kept_tokens = static_cast<int64_t>(anchors_.entries.size() + kept_full_.entries.size() +
                                       sentence_.entries.size());
  a.full_tokens = next_position_;
  a.anchors = anchors_seen_;
  a.peak_kept_tokens = peak_kept_;
  a.bytes_per_token = pool_->options().geometry.bytes_per_token();
  return a;
}

namespace {

// (block, offset) of every kept entry in attention order, as device index tensors.
struct SlotIndex {
  at::Tensor blocks;
  at::Tensor offsets;
};

void AppendSlots(const std::vector<int32_t>& blocks, int64_t count, int64_t block_tokens,
                 std::vector<int64_t>* b, std::vector<int64_t>* o) {
  for (int64_t k = 0; k < count; ++k) {
    b->push_back(blocks[k / block_tokens]);
    o->push_back(k % block_tokens);
  }
}

}  // namespace

absl::Status PagedSequence::CheckChunk(absl::Span<const int32_t> ids,
                                       absl::Span<const uint8_t> kept_full,
                                       int64_t kept_entries) const {
  const model::ModelConfig& config = model_->config();
  const int64_t s = static_cast<int64_t>(ids.size());
  if (s == 0) return absl::InvalidArgumentError("token_ids must not be empty");
  if (!kept_full.empty() && static_cast<int64_t>(kept_full.size()) != s) {
    return absl::InvalidArgumentError("kept_full must be empty or hold one flag per token");
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id,
                                                     " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  const int64_t first_position =
      options_.policy == model::PositionPolicy::kAbsolute ? next_position_ : kept_entries;
  if (first_position + s > config.max_position_embeddings) {
    return absl::OutOfRangeError(absl::StrCat(
        "position ", first_position + s - 1, " would reach max_position_embeddings (",
        config.max_position_embeddings, ") of the model under the ",
        model::PositionPolicyName(options_.policy), " position policy"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PagedSequence::Placement> PagedSequence::Place(
    absl::Span<const int32_t> ids, absl::Span<const uint8_t> kept_full) {
  const int64_t s = static_cast<int64_t>(ids.size());
  const bool anchor_mode = options_.mode == model::AttentionMode::kAnchor;
  auto in_span = [&](int64_t i) { return !anchor_mode || (!kept_full.empty() && kept_full[i]); };
  auto is_anchor = [&](int64_t i) { return anchor_mode && options_.anchors.IsAnchor(ids[i]); };
  const int64_t p = static_cast<int64_t>(anchors_.entries.size() + kept_full_.entries.size() +
                                         sentence_.entries.size());
  Placement pl;
  const int64_t first_position =
      options_.policy == model::PositionPolicy::kAbsolute ? next_position_ : p;
  pl.positions.resize(static_cast<size_t>(s));
  for (int64_t i = 0; i < s; ++i) pl.positions[i] = first_position + i;
  int64_t last_anchor = -1;
  for (int64_t i = 0; i < s; ++i) {
    if (is_anchor(i)) {
      last_anchor = i;
      ++pl.chunk_anchors;
    }
  }
  pl.clear_sentence = last_anchor >= 0;
  for (int64_t i = 0; i < s; ++i) {
    if (in_span(i)) {
      pl.to_kept.push_back(i);
    } else if (is_anchor(i)) {
      pl.to_anchor.push_back(i);
    } else if (i > last_anchor) {
      pl.to_sentence.push_back(i);
    }
  }
  const int64_t bt = pool_->block_tokens();
  const int64_t anchors_after = static_cast<int64_t>(anchors_.entries.size() + pl.to_anchor.size());
  const int64_t kept_after = static_cast<int64_t>(kept_full_.entries.size() + pl.to_kept.size());
  pl.sentence_base = pl.clear_sentence ? 0 : static_cast<int64_t>(sentence_.entries.size());
  const int64_t sentence_after = pl.sentence_base + static_cast<int64_t>(pl.to_sentence.size());
  const int64_t need_anchor =
      BlocksFor(anchors_after, bt) - static_cast<int64_t>(anchors_.blocks.size());
  const int64_t need_kept =
      BlocksFor(kept_after, bt) - static_cast<int64_t>(kept_full_.blocks.size());
  const int64_t need_sentence =
      BlocksFor(sentence_after, bt) -
      (pl.clear_sentence ? 0 : static_cast<int64_t>(sentence_.blocks.size()));
  ASSIGN_OR_RETURN(pl.fresh, AllocateAll(pool_, need_anchor + need_kept + need_sentence));
  pl.anchor_blocks = anchors_.blocks;
  pl.kept_blocks = kept_full_.blocks;
  if (!pl.clear_sentence) pl.sentence_blocks = sentence_.blocks;
  size_t next_fresh = 0;
  for (int64_t k = 0; k < need_anchor; ++k) pl.anchor_blocks.push_back(pl.fresh[next_fresh++]);
  for (int64_t k = 0; k < need_kept; ++k) pl.kept_blocks.push_back(pl.fresh[next_fresh++]);
  for (int64_t k = 0; k < need_sentence; ++k) pl.sentence_blocks.push_back(pl.fresh[next_fresh++]);
  auto place = [&](const std::vector<int64_t>& tokens, int64_t base,
                   const std::vector<int32_t>& blocks) {
    for (size_t k = 0; k < tokens.size(); ++k) {
      const int64_t slot = base + static_cast<int64_t>(k);
      pl.src.push_back(tokens[k]);
      pl.dst_block.push_back(blocks[slot / bt]);
      pl.dst_offset.push_back(slot % bt);
    }
  };
  place(pl.to_anchor, static_cast<int64_t>(anchors_.entries.size()), pl.anchor_blocks);
  place(pl.to_kept, static_cast<int64_t>(kept_full_.entries.size()), pl.kept_blocks);
  place(pl.to_sentence, pl.sentence_base, pl.sentence_blocks);
  return pl;
}

void PagedSequence::Abort(const Placement& placement) {
  for (int32_t b : placement.fresh) pool_->Free(b);
}

void PagedSequence::Apply(absl::Span<const int32_t> ids, Placement pl) {
  const int64_t p = static_cast<int64_t>(anchors_.entries.size() + kept_full_.entries.size() +
                                         sentence_.entries.size());
  const int64_t s = static_cast<int64_t>(ids.size());
  auto entry = [&](int64_t i, EntryKind kind) {
    return SnapshotEntry{ids[i], pl.positions[i], kind};
  };
  for (int64_t i : pl.to_anchor) anchors_.entries.push_back(entry(i, EntryKind::kAnchor));
  for (int64_t i : pl.to_kept) kept_full_.entries.push_back(entry(i, EntryKind::kKeptFull));
  if (pl.clear_sentence) {
    for (int32_t b : sentence_.blocks) pool_->Free(b);  // REDUCTION: the sentence, wholesale
    sentence_.entries.clear();
  }
  for (int64_t i : pl.to_sentence) sentence_.entries.push_back(entry(i, EntryKind::kSentence));
  anchors_.blocks = std::move(pl.anchor_blocks);
  kept_full_.blocks = std::move(pl.kept_blocks);
  sentence_.blocks = std::move(pl.sentence_blocks);
  next_position_ += s;
  anchors_seen_ += pl.chunk_anchors;
  peak_kept_ = std::max(peak_kept_, p + s);
}

void PagedSequence::AppendSegments(std::vector<int32_t>* block, std::vector<int32_t>* info) const {
  const int64_t bt = pool_->block_tokens();
  for (const Region* r : {&anchors_, &kept_full_, &sentence_}) {
    const int64_t n = static_cast<int64_t>(r->entries.size());
    const int32_t flag = r == &anchors_ ? cuda::kSegmentAnchorFlag : 0;
    for (int64_t k = 0; k * bt < n; ++k) {
      block->push_back(r->blocks[k]);
      info->push_back(static_cast<int32_t>(std::min(bt, n - k * bt)) | flag);
    }
  }
}

absl::StatusOr<std::vector<float>> PagedSequence::Feed(absl::Span<const int32_t> ids,
                                                       bool all_logits,
                                                       absl::Span<const uint8_t> kept_full) {
  return Forward(ids, all_logits ? Logits::kAll : Logits::kLast, kept_full);
}

absl::Status PagedSequence::Prefill(absl::Span<const int32_t> ids,
                                    absl::Span<const uint8_t> kept_full) {
  return Forward(ids, Logits::kNone, kept_full).status();
}

absl::StatusOr<std::vector<float>> PagedSequence::Forward(absl::Span<const int32_t> ids,
                                                          Logits want,
                                                          absl::Span<const uint8_t> kept_full) {
  const model::ModelConfig& config = model_->config();
  const int64_t s = static_cast<int64_t>(ids.size());
  const std::vector<SnapshotEntry> cached = entries();
  const int64_t p = static_cast<int64_t>(cached.size());
  RETURN_IF_ERROR(CheckChunk(ids, kept_full, p));
  const bool anchor_mode = options_.mode == model::AttentionMode::kAnchor;
  const model::AnchorSpec& spec = options_.anchors;
  auto in_span = [&](int64_t i) { return !anchor_mode || (!kept_full.empty() && kept_full[i]); };
  auto is_anchor = [&](int64_t i) { return anchor_mode && spec.IsAnchor(ids[i]); };
  auto is_pad = [&](int32_t id) { return anchor_mode && spec.pad_id >= 0 && id == spec.pad_id; };

  // Mask [S, P + S]: cached columns by kind, then the chunk (AnSAN, plus kept-full columns).
  std::vector<uint8_t> allowed(static_cast<size_t>(s * (p + s)), 0);
  const model::AttentionMask chunk_mask =
      anchor_mode ? model::BuildAnsanMask(ids, spec) : model::BuildCausalMask(s);
  bool anchor_before = false;
  for (int64_t i = 0; i < s; ++i) {
    const bool row_anchor = is_anchor(i);
    const bool row_pad = is_pad(ids[i]);
    uint8_t* row = &allowed[i * (p + s)];
    for (int64_t c = 0; c < p; ++c) {
      const SnapshotEntry& e = cached[c];
      if (row_pad || is_pad(e.token)) continue;
      switch (e.kind) {
        case EntryKind::kAnchor: row[c] = row_anchor ? 0 : 1; break;
        case EntryKind::kKeptFull: row[c] = 1; break;
        case EntryKind::kSentence: row[c] = anchor_before ? 0 : 1; break;
      }
    }
    for (int64_t j = 0; j <= i; ++j) {
      uint8_t v = chunk_mask[i * s + j];
      if (anchor_mode && in_span(j) && !row_pad && !is_pad(ids[j])) v = 1;
      row[p + j] = v;
    }
    if (row_anchor) anchor_before = true;
  }

  // Allocate first (all or nothing), then compute, then write, then drop the closed sentence.
  ASSIGN_OR_RETURN(Placement pl, Place(ids, kept_full));
  c10::InferenceMode guard;
  const model::LlamaImpl& impl = model_->impl();
  const at::Device device = impl.options.device();
  at::Tensor& storage = pool_->storage().kv;
  std::vector<float> out;
  try {
    // Gather the kept entries into contiguous per-layer K/V (the CPU reading of the layout).
    std::vector<model::LayerKV> past;
    if (p > 0) {
      std::vector<int64_t> b, o;
      for (const Region* r : {&anchors_, &kept_full_, &sentence_}) {
        AppendSlots(r->blocks, static_cast<int64_t>(r->entries.size()), pool_->block_tokens(), &b, &o);
      }
      at::Tensor gathered = storage.index({model::ToDevice(at::tensor(b), device), Slice(), Slice(), Slice(),
                                           model::ToDevice(at::tensor(o), device)});  // [P, L, 2, kv, d]
      gathered = gathered.permute({1, 2, 3, 0, 4}).contiguous();      // [L, 2, kv, P, d]
      for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
        past.push_back({gathered[l][0], gathered[l][1]});
      }
    }
    at::Tensor id_t =
        model::ToDevice(at::tensor(std::vector<int64_t>(ids.begin(), ids.end())), device);
    at::Tensor pos_t = model::ToDevice(at::tensor(pl.positions), device);
    const at::TensorOptions bytes = at::TensorOptions().dtype(at::kByte);
    at::Tensor mask =
        model::ToDevice(at::from_blob(allowed.data(), {s, p + s}, bytes), device).to(at::kBool);
    std::vector<model::LayerKV> present;
    at::Tensor hidden = impl.ForwardHidden(id_t, pos_t, past, mask, &present);
    if (want != Logits::kNone) {
      at::Tensor logits = want == Logits::kAll ? impl.Logits(hidden)
                                               : impl.Logits(hidden.narrow(0, s - 1, 1));
      logits = logits.cpu().contiguous();
      out.assign(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
    }
    if (!pl.src.empty()) {
      std::vector<at::Tensor> k_layers, v_layers;
      for (const model::LayerKV& kv : present) {
        k_layers.push_back(kv.k);
        v_layers.push_back(kv.v);
      }
      // [L, 2, kv, S, d] -> the written tokens as [n, L, 2, kv, d].
      at::Tensor combined = at::stack({at::stack(k_layers), at::stack(v_layers)}, 1);
      at::Tensor values =
          combined.index_select(3, model::ToDevice(at::tensor(pl.src), device)).permute({3, 0, 1, 2, 4});
      storage.index_put_({model::ToDevice(at::tensor(pl.dst_block), device), Slice(), Slice(), Slice(),
                          model::ToDevice(at::tensor(pl.dst_offset), device)},
                         values);
    }
  } catch (const std::exception& e) {
    Abort(pl);
    return model::TorchStatus(e, "forward");
  }
  Apply(ids, std::move(pl));
  return out;
}

absl::StatusOr<std::unique_ptr<PagedSequence>> PagedSequence::Clone() const {
  std::unique_ptr<PagedSequence> copy(new PagedSequence(model_, pool_, options_));
  copy->next_position_ = next_position_;
  copy->anchors_seen_ = anchors_seen_;
  copy->peak_kept_ = peak_kept_;
  std::vector<int64_t> src, dst;
  const Region* from[] = {&anchors_, &kept_full_, &sentence_};
  Region* to[] = {&copy->anchors_, &copy->kept_full_, &copy->sentence_};
  for (int i = 0; i < 3; ++i) {
    to[i]->entries = from[i]->entries;
    // `copy`'s destructor returns whatever was taken if this fails.
    ASSIGN_OR_RETURN(to[i]->blocks,
                     AllocateAll(pool_, static_cast<int64_t>(from[i]->blocks.size())));
    src.insert(src.end(), from[i]->blocks.begin(), from[i]->blocks.end());
    dst.insert(dst.end(), to[i]->blocks.begin(), to[i]->blocks.end());
  }
  if (src.empty()) return copy;
  c10::InferenceMode guard;
  try {
    at::Tensor& storage = pool_->storage().kv;
    const at::Device device = storage.device();
    storage.index_copy_(0, model::ToDevice(at::tensor(dst), device),
                        storage.index_select(0, model::ToDevice(at::tensor(src), device)));
  } catch (const std::exception& e) {
    return model::TorchStatus(e, "copying KV blocks");
  }
  return copy;
}

absl::StatusOr<SessionSnapshot> PagedSequence::Snapshot() const {
  SessionSnapshot snap;
  const KvGeometry& g = pool_->options().geometry;
  snap.model_fingerprint = options_.model_fingerprint;
  snap.num_layers = static_cast<int32_t>(g.num_layers);
  snap.num_kv_heads = static_cast<int32_t>(g.num_kv_heads);
  snap.head_dim = static_cast<int32_t>(g.head_dim);
  snap.dtype = std::string(model::PrecisionName(model_->options().precision));
  snap.mode = std::string(model::AttentionModeName(options_.mode));
  snap.position_policy = std::string(model::PositionPolicyName(options_.policy));
  snap.next_position = next_position_;
  snap.accounting = accounting();
  snap.entries = entries();
  if (snap.entries.empty()) return snap;
  c10::InferenceMode guard;
  try {
    const at::Device device = pool_->storage().kv.device();
    std::vector<int64_t> b, o;
    const int64_t bt = pool_->block_tokens();
    for (const Region* r : {&anchors_, &kept_full_, &sentence_}) {
      AppendSlots(r->blocks, static_cast<int64_t>(r->entries.size()), bt, &b, &o);
    }
    at::Tensor gathered = pool_->storage()
                              .kv.index({model::ToDevice(at::tensor(b), device), Slice(), Slice(), Slice(),
                                         model::ToDevice(at::tensor(o), device)})
                              .permute({1, 2, 3, 0, 4})
                              .contiguous()
                              .cpu();  // [L, 2, kv, T, d]: per layer K then V
    const size_t nbytes = static_cast<size_t>(gathered.numel()) * gathered.element_size();
    snap.kv.resize(nbytes);
    std::memcpy(snap.kv.data(), gathered.data_ptr(), nbytes);
  } catch (const std::exception& e) {
    return model::TorchStatus(e, "snapshot");
  }
  return snap;
}

absl::StatusOr<std::unique_ptr<PagedSequence>> PagedSequence::Restore(
    const model::LlamaModel* model, BlockPool* pool, PagedSequenceOptions options,
    const SessionSnapshot& snap) {
  ASSIGN_OR_RETURN(std::unique_ptr<PagedSequence> seq, Create(model, pool, options));
  const KvGeometry& g = pool->options().geometry;
  if (!snap.model_fingerprint.empty() && !options.model_fingerprint.empty() &&
      snap.model_fingerprint != options.model_fingerprint) {
    return absl::InvalidArgumentError("session state belongs to another model");
  }
  if (snap.num_layers != g.num_layers || snap.num_kv_heads != g.num_kv_heads ||
      snap.head_dim != g.head_dim ||
      snap.dtype != model::PrecisionName(model->options().precision)) {
    return absl::InvalidArgumentError("session state has another KV shape or dtype");
  }
  if (snap.mode != model::AttentionModeName(options.mode) ||
      snap.position_policy != model::PositionPolicyName(options.policy)) {
    return absl::InvalidArgumentError("session state was built with another mode or policy");
  }
  const int64_t t = static_cast<int64_t>(snap.entries.size());
  if (static_cast<int64_t>(snap.kv.size()) != snap.ExpectedKvBytes()) {
    return absl::InvalidArgumentError("session state KV bytes do not match its entries");
  }
  // Regions in attention order; the snapshot lists anchors, kept-full, then the sentence,
  // and its KV bytes follow that order.
  for (size_t i = 1; i < snap.entries.size(); ++i) {
    if (snap.entries[i].kind < snap.entries[i - 1].kind) {
      return absl::InvalidArgumentError(
          "session state entries must be ordered anchors, kept-full, sentence");
    }
  }
  for (const SnapshotEntry& e : snap.entries) {
    Region& r = e.kind == EntryKind::kAnchor     ? seq->anchors_
                : e.kind == EntryKind::kKeptFull ? seq->kept_full_
                                                 : seq->sentence_;
    r.entries.push_back(e);
  }
  const int64_t bt = pool->block_tokens();
  std::vector<int64_t> b, o;
  for (Region* r : {&seq->anchors_, &seq->kept_full_, &seq->sentence_}) {
    auto blocks = AllocateAll(pool, BlocksFor(static_cast<int64_t>(r->entries.size()), bt));
    if (!blocks.ok()) return blocks.status();  // seq's destructor frees what was taken
    r->blocks = *std::move(blocks);
    AppendSlots(r->blocks, static_cast<int64_t>(r->entries.size()), bt, &b, &o);
  }
  seq->next_position_ = snap.next_position;
  seq->anchors_seen_ = snap.accounting.anchors;
  seq->peak_kept_ = snap.accounting.peak_kept_tokens;
  if (t == 0) return seq;
  c10::InferenceMode guard;
  try {
    at::Tensor& storage = pool->storage().kv;
    const at::ScalarType type = storage.scalar_type();
    at::Tensor host = at::empty({g.num_layers, 2, g.num_kv_heads, t, g.head_dim},
                                at::TensorOptions().dtype(type));
    std::memcpy(host.data_ptr(), snap.kv.data(), snap.kv.size());
    const at::Device device = storage.device();
    storage.index_put_({model::ToDevice(at::tensor(b), device), Slice(), Slice(), Slice(),
                        model::ToDevice(at::tensor(o), device)},
                       model::ToDevice(host, device).permute({3, 0, 1, 2, 4}));
  } catch (const std::exception& e) {
    return model::TorchStatus(e, "restoring KV blocks");
  }
  return seq;
}

}  // namespace anchorserve::cache
