// The embedded default model: a tiny random-weight AnLLM-AC-shaped model directory written
// deterministically from a seed, so the repository ships no weights. It stands in until a
// trained model replaces it (see models/README.md).
#ifndef ANCHORSERVE_MODEL_DEFAULT_MODEL_H_
#define ANCHORSERVE_MODEL_DEFAULT_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "model/model_config.h"

namespace anchorserve::model {

struct DefaultModelOptions {
  std::string out_dir;
  uint64_t seed = 0;
  int tokenizer_vocab_size = 1024;
  int64_t hidden_size = 128;
  int64_t num_layers = 4;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;  // GQA, so the default exercises the grouped path
  int64_t intermediate_size = 344;
  int64_t max_position_embeddings = 4096;
};

// Writes tokenizer.model (SentencePiece BPE trained on SyntheticCorpus, with [PAD]=3 and
// <AC>=4), config.json, anchor_config.json and model.safetensors (F32, N(0, 0.02) from the
// seed, norms 1, the <AC> rows copied from "." as the authors initialise it) into out_dir.
// Same options -> byte-identical files. Errors: the directory cannot be written.
absl::Status WriteDefaultModel(const DefaultModelOptions& options);

// Deterministic English-like text (words, numbers, quotes, abbreviations, some non-ASCII),
// one paragraph per line, about `bytes` long.
std::string SyntheticCorpus(uint64_t seed, size_t bytes);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_DEFAULT_MODEL_H_
