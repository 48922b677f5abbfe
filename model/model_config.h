// The Hugging Face Llama `config.json`: parsing, validation and writing.
//
// We serve exactly one architecture (LlamaForCausalLM without RoPE scaling, biases or
// quantization), so anything in a config that would change the math and that we do not
// implement is refused at load time with the offending field named, rather than producing a
// model that runs and answers wrongly.
#ifndef ANCHORSERVE_MODEL_MODEL_CONFIG_H_
#define ANCHORSERVE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace anchorserve::model {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  int32_t bos_token_id = 1;                  // -1: none (config says null)
  std::vector<int32_t> eos_token_ids = {2};  // any of these ends generation
  int32_t pad_token_id = -1;                 // -1: none
  std::string torch_dtype;                   // as written ("bfloat16", ...), may be empty

  friend bool operator==(const ModelConfig&, const ModelConfig&) = default;
};

// Parses a config.json text and validates the result (ValidateModelConfig). `source` names the
// file in error messages. Defaults follow transformers' LlamaConfig for fields old configs
// omit: num_key_value_heads = num_attention_heads, head_dim = hidden_size / num_attention_heads
// (hidden_size must then divide evenly), max_position_embeddings = 2048, rms_norm_eps = 1e-6,
// rope_theta = 10000, tie_word_embeddings = false, bos 1, eos 2, no pad, hidden_act "silu".
// Required: vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads.
// Accepted spellings: eos_token_id as an int or a list; bos/pad/eos may be null; the dtype as
// "torch_dtype" or transformers 5's "dtype"; RoPE as top-level "rope_theta" and/or transformers
// 5's "rope_parameters" {"rope_type": "default", "rope_theta": ...} (they must agree when both
// are given). Unknown keys are ignored.
// Errors: InvalidArgument, naming `source` and the field, for text that is not a JSON object,
// a missing required field, a wrong JSON type or out-of-range value, and for what we do not
// implement: model_type other than "llama", hidden_act other than "silu", non-default
// rope_scaling / rope_parameters, attention_bias or mlp_bias true, quantization_config.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source);

// Reads and parses `<model_dir>/config.json`. NotFound (naming the path) when absent; I/O
// errors from errno; otherwise as ParseModelConfig.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// Checks the invariants the model code relies on: all sizes positive; num_attention_heads a
// multiple of num_key_value_heads; head_dim even (RoPE rotates pairs); rms_norm_eps and
// rope_theta positive and finite; eos_token_ids non-empty; every token id (bos/pad unless -1)
// inside [0, vocab_size). hidden_size == heads * head_dim is NOT required here: configs may set
// head_dim explicitly (ParseModelConfig enforces divisibility when it derives head_dim).
// InvalidArgument naming the first offending field.
absl::Status ValidateModelConfig(const ModelConfig& config);

// A config.json that transformers' LlamaConfig loads back to the same model: every field above
// plus "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
// "attention_bias": false, "mlp_bias": false, "rope_scaling": null. eos_token_id is an int
// when there is one id, else a list; pad_token_id / bos_token_id are null when -1; torch_dtype
// is omitted when empty. Keys sorted, indent 2, trailing newline (as save_pretrained writes).
// ParseModelConfig(ModelConfigToJson(c)) == c for every valid c.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_MODEL_CONFIG_H_
