// Training-step throughput of anchor-train's forward + backward + AdamW on the 20M-parameter
// shape of the default model, for each exact form of the training mask: the eager path
// (scores per layer and head plus an additive L x L mask, as the authors' code and HF eager
// run it) and the fused path (one boolean mask per batch built from sentence ids, fused
// scaled-dot-product attention; causal batches use the causal kernel). Prints a Markdown table.
//
//   train_bench [--device cpu|cuda] [--dtype float32|bfloat16] [--batch 32] [--seq 512]
//               [--sentence 25] [--steps 10] [--peak-tflops 989]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "model/llama.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  using anchorserve::train::AttentionImpl;
  std::string device = "cpu", dtype;
  long batch = 32, seq = 512, sentence = 25, steps = 10;
  double peak = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--device") device = value;
    else if (flag == "--dtype") dtype = value;
    else if (flag == "--batch") batch = std::atol(value);
    else if (flag == "--seq") seq = std::atol(value);
    else if (flag == "--sentence") sentence = std::atol(value);
    else if (flag == "--steps") steps = std::atol(value);
    else if (flag == "--peak-tflops") peak = std::atof(value);
    else {
      std::fprintf(stderr, "train_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  auto dev = anchorserve::model::ParseDevice(device);
  if (!dev.ok()) {
    std::fprintf(stderr, "train_bench: %s\n", std::string(dev.status().message()).c_str());
    return 2;
  }
  const bool cuda = *dev == anchorserve::model::Device::kCuda;
  if (dtype.empty()) dtype = cuda ? "bfloat16" : "float32";
  if (peak < 0) peak = cuda ? 989 : 0;
  anchorserve::model::ModelConfig c;  // anchor-train pretrain's default architecture
  c.vocab_size = 8192;
  c.hidden_size = 384;
  c.intermediate_size = 960;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 6;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  std::printf("| mask | attention | batch x seq | step ms | tokens/s | MFU | peak MB |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|\n");
  for (const char* anchors : {"ac", "none"}) {
    auto timings = anchorserve::train::TimeTrainingSteps(c, anchors, /*anchor_id=*/4, batch, seq,
                                                         sentence, static_cast<int>(steps), *dev,
                                                         dtype == "bfloat16", peak);
    if (!timings.ok()) {
      std::fprintf(stderr, "train_bench: %s\n", std::string(timings.status().message()).c_str());
      return 1;
    }
    for (const auto& t : *timings) {
      std::printf("| %s | %s | %ld x %ld | %.1f | %.0f | %.1f%% | %.0f |\n",
                  std::strcmp(anchors, "ac") == 0 ? "AnSAN (AC)" : "causal",
                  t.attention == AttentionImpl::kFused ? "fused" : "eager", batch, seq, t.step_ms,
                  t.tokens_per_second, 100 * t.mfu, t.peak_memory_mb);
    }
  }
  return 0;
}
