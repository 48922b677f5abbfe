#include "model/default_model.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/splitmix.h"
#include "common/status_macros.h"
#include "model/anchors.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "model/tokenizer_trainer.h"

namespace anchorserve::model {
namespace {

using common::SplitMix;

constexpr const char* kNouns[] = {
    "river",  "house",   "garden",  "letter",   "window",  "morning", "captain",  "village",
    "forest", "road",    "ship",    "friend",   "mother",  "father",  "child",    "king",
    "queen",  "table",   "door",    "mountain", "city",    "story",   "book",     "horse",
    "bird",   "dog",     "teacher", "doctor",   "market",  "storm",   "light",    "voice",
    "heart",  "night",   "winter",  "summer",   "island",  "bridge",  "train",    "café",
    "garçon", "naïveté", "Zürich",  "東京",     "journey", "answer",  "question", "machine"};
constexpr const char* kVerbs[] = {
    "saw",    "found",   "opened",  "carried", "followed",  "remembered", "wrote",    "heard",
    "left",   "crossed", "painted", "watched", "asked",     "answered",   "built",    "lost",
    "called", "reached", "loved",   "feared",  "described", "counted",    "measured", "explained"};
constexpr const char* kAdjectives[] = {
    "old",  "small",  "bright", "quiet",  "cold",   "green", "strange", "happy",  "dark",
    "long", "gentle", "heavy",  "narrow", "golden", "early", "distant", "wooden", "careful"};
constexpr const char* kNames[] = {"Mr. Brown",   "Dr. Watson", "Mrs. Hale", "Anna",  "Tom",
                                  "J. R. Smith", "Prof. Lane", "St. John",  "Maria", "Peter"};
constexpr const char* kLinks[] = {"and", "but", "while", "because", "when", "although", "so"};

template <size_t N>
const char* Pick(SplitMix& rng, const char* const (&list)[N]) {
  return list[rng.Below(N)];
}

std::string Sentence(SplitMix& rng) {
  std::string s;
  const int clauses = 1 + static_cast<int>(rng.Below(3));
  for (int c = 0; c < clauses; ++c) {
    if (c > 0) absl::StrAppend(&s, ", ", Pick(rng, kLinks), " ");
    const bool named = rng.Below(3) == 0;
    if (named) {
      absl::StrAppend(&s, Pick(rng, kNames));
    } else {
      absl::StrAppend(&s, "the ", Pick(rng, kAdjectives), " ", Pick(rng, kNouns));
    }
    absl::StrAppend(&s, " ", Pick(rng, kVerbs), " the ");
    if (rng.Below(2) == 0) absl::StrAppend(&s, Pick(rng, kAdjectives), " ");
    absl::StrAppend(&s, Pick(rng, kNouns));
    switch (rng.Below(8)) {
      case 0:
        absl::StrAppend(&s, " in ", 1800 + rng.Below(220));
        break;
      case 1:
        absl::StrAppend(&s, " for ", rng.Below(100), ".", rng.Below(100), " miles");
        break;
      case 2:
        absl::StrAppend(&s, " at ", 1 + rng.Below(12), " p.m.");
        break;
      default:
        break;
    }
  }
  s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  static constexpr const char* kEnds[] = {".", ".", ".", ".", "?", "!"};
  absl::StrAppend(&s, kEnds[rng.Below(6)]);
  if (rng.Below(10) == 0) s = absl::StrCat("\"", s, "\"");
  return s;
}

absl::Status WriteText(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

TensorData Matrix(SplitMix& rng, const std::string& name, int64_t rows, int64_t cols) {
  TensorData t{name, DType::kF32, {rows, cols}, {}};
  t.bytes.resize(static_cast<size_t>(rows * cols) * 4);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float v = static_cast<float>(0.02 * rng.Normal());
    std::memcpy(&t.bytes[i * 4], &v, 4);
  }
  return t;
}

TensorData Ones(const std::string& name, int64_t n) {
  TensorData t{name, DType::kF32, {n}, {}};
  t.bytes.resize(static_cast<size_t>(n) * 4);
  const float one = 1.0f;
  for (int64_t i = 0; i < n; ++i) std::memcpy(&t.bytes[i * 4], &one, 4);
  return t;
}

void CopyRow(TensorData& t, int64_t from, int64_t to) {
  const size_t row = static_cast<size_t>(t.shape[1]) * 4;
  std::memcpy(&t.bytes[to * row], &t.bytes[from * row], row);
}

}  // namespace

std::string SyntheticCorpus(uint64_t seed, size_t bytes) {
  SplitMix rng(seed);
  std::string text;
  text.reserve(bytes + 1024);
  while (text.size() < bytes) {
    const int sentences = 2 + static_cast<int>(rng.Below(5));
    for (int i = 0; i < sentences; ++i) {
      if (i > 0) text += ' ';
      text += Sentence(rng);
    }
    text += '\n';
  }
  return text;
}

absl::Status WriteDefaultModel(const DefaultModelOptions& options) {
  namespace fs = std::filesystem;
  const fs::path dir(options.out_dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));

  const fs::path corpus = dir / "tokenizer-corpus.txt";
  RETURN_IF_ERROR(WriteText(corpus, SyntheticCorpus(options.seed, 400000)));
  TokenizerTrainOptions train;
  train.input_files = {corpus.string()};
  train.output_dir = dir.string();
  train.vocab_size = options.tokenizer_vocab_size;
  train.num_threads = 1;
  absl::Status trained = TrainTokenizer(train);
  fs::remove(corpus, ec);
  RETURN_IF_ERROR(trained);
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(dir.string()));

  ModelConfig config;
  config.vocab_size = tokenizer->vocab_size();
  config.hidden_size = options.hidden_size;
  config.intermediate_size = options.intermediate_size;
  config.num_hidden_layers = options.num_layers;
  config.num_attention_heads = options.num_heads;
  config.num_key_value_heads = options.num_kv_heads;
  config.head_dim = options.hidden_size / options.num_heads;
  config.max_position_embeddings = options.max_position_embeddings;
  config.rms_norm_eps = 1e-5;
  config.rope_theta = 10000.0;
  config.tie_word_embeddings = false;
  config.bos_token_id = tokenizer->bos_id();
  config.eos_token_ids = {tokenizer->eos_id()};
  config.pad_token_id = tokenizer->pad_id();
  config.torch_dtype = "float32";
  RETURN_IF_ERROR(ValidateModelConfig(config));
  RETURN_IF_ERROR(WriteText(dir / "config.json", ModelConfigToJson(config)));

  AnchorSpec anchors;
  anchors.kind = AnchorKind::kAc;
  anchors.token_ids = {kTrainedAnchorId};
  anchors.pad_id = kTrainedPadId;
  anchors.anchor_token = "<AC>";
  RETURN_IF_ERROR(WriteText(dir / kAnchorConfigFile, AnchorSpecToJson(anchors)));

  SplitMix rng(options.seed ^ 0xA5C0FFEEULL);
  const int64_t h = config.hidden_size, v = config.vocab_size, inter = config.intermediate_size;
  const int64_t q_rows = config.num_attention_heads * config.head_dim;
  const int64_t kv_rows = config.num_key_value_heads * config.head_dim;
  std::vector<TensorData> tensors;
  tensors.push_back(Matrix(rng, "model.embed_tokens.weight", v, h));
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    tensors.push_back(Ones(p + "input_layernorm.weight", h));
    tensors.push_back(Ones(p + "post_attention_layernorm.weight", h));
    tensors.push_back(Matrix(rng, p + "self_attn.q_proj.weight", q_rows, h));
    tensors.push_back(Matrix(rng, p + "self_attn.k_proj.weight", kv_rows, h));
    tensors.push_back(Matrix(rng, p + "self_attn.v_proj.weight", kv_rows, h));
    tensors.push_back(Matrix(rng, p + "self_attn.o_proj.weight", h, q_rows));
    tensors.push_back(Matrix(rng, p + "mlp.gate_proj.weight", inter, h));
    tensors.push_back(Matrix(rng, p + "mlp.up_proj.weight", inter, h));
    tensors.push_back(Matrix(rng, p + "mlp.down_proj.weight", h, inter));
  }
  tensors.push_back(Ones("model.norm.weight", h));
  tensors.push_back(Matrix(rng, "lm_head.weight", v, h));
  // The authors initialise <AC> from the "." rows of the embedding and the LM head.
  if (auto dot = tokenizer->TokenToId("."); dot.has_value()) {
    CopyRow(tensors.front(), *dot, kTrainedAnchorId);
    CopyRow(tensors.back(), *dot, kTrainedAnchorId);
  }
  std::vector<const TensorData*> refs;
  for (const TensorData& t : tensors) refs.push_back(&t);
  return WriteSafetensors((dir / "model.safetensors").string(), refs, {{"format", "pt"}});
}

}  // namespace anchorserve::model
