// Shapes and token streams shared by the model-level benchmarks.
#ifndef ANCHORSERVE_BENCH_BENCH_UTIL_H_
#define ANCHORSERVE_BENCH_BENCH_UTIL_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace anchorserve::bench {

inline constexpr int32_t kBenchAnchor = 13;  // the anchor id of the random-weight shapes

// "7b": Llama-2-7B; otherwise a tiny shape.
inline model::ModelConfig Shape(const std::string& name) {
  model::ModelConfig c;
  if (name == "7b") {
    c.vocab_size = 32002;
    c.hidden_size = 4096;
    c.intermediate_size = 11008;
    c.num_hidden_layers = 32;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 32;
    c.head_dim = 128;
    c.max_position_embeddings = 4096;
  } else {
    c.vocab_size = 1024;
    c.hidden_size = 128;
    c.intermediate_size = 344;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 32;
    c.max_position_embeddings = 4096;
  }
  c.rms_norm_eps = 1e-5;
  return c;
}

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Token stream with an anchor closing every `sentence`-token sentence.
inline std::vector<int32_t> Stream(int64_t n, int64_t vocab, int64_t sentence = 25) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = (i % sentence == sentence - 1) ? kBenchAnchor
                                            : static_cast<int32_t>(100 + (i * 7919) % (vocab - 100));
  }
  ids[0] = 1;
  return ids;
}

}  // namespace anchorserve::bench

#endif  // ANCHORSERVE_BENCH_BENCH_UTIL_H_
