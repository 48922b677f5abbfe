// Pre-training and AnSAN continued pre-training of Llama-architecture models (the paper's
// recipe, anllm-reference.md §6.1) on libtorch. The header is torch-free.
#ifndef ANCHORSERVE_TRAIN_TRAINER_H_
#define ANCHORSERVE_TRAIN_TRAINER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama.h"
#include "model/model_config.h"

namespace anchorserve::train {

// How attention applies the training mask. Both are exact; they differ in cost.
//  kEager: scores materialised per layer and head, an additive mask added, fp32 softmax (the
//          authors' and HF's eager path).
//  kFused: the mask built once per batch as booleans [B, 1, L, L] from per-token sentence ids
//          and shared by every layer and head; libtorch's fused scaled-dot-product attention
//          never materialises scores (causal batches take the causal kernel with no mask).
//          Needs libtorch >= 2.0; older builds fall back to kEager.
enum class AttentionImpl { kEager, kFused };

struct TrainOptions {
  // Data: a directory written by `anchor-train prepare`; optional held-out data likewise.
  std::string data_dir;
  std::string eval_data_dir;
  std::string out_dir;  // final model (HF layout) + checkpoint/ + train_log.jsonl

  // Start: either `init_dir` (an HF-layout model: continue) or `config` + `tokenizer_dir`
  // (random initialisation: pretrain).
  std::string init_dir;
  std::string tokenizer_dir;
  model::ModelConfig config;

  // The mask: "none" trains with plain causal attention; "ac"/"ep" with the AnSAN mask over
  // the <AC> / bare "." token (the data must have been prepared with the same anchors for AC).
  std::string anchors = "none";

  int64_t seq_len = 512;
  int64_t batch_size = 32;   // windows per micro-batch
  int64_t grad_accum = 1;    // micro-batches per optimizer step
  int64_t max_steps = 1000;  // length of the schedule
  double max_minutes = 0;    // > 0: stop (and save) once this much wall time has passed
  int64_t stop_after = 0;    // > 0: stop (and save) after this many steps of this invocation;
                             // a later run with the same flags resumes (long runs in pieces)
  double lr = 1e-3;
  double min_lr_ratio = 0.1;  // cosine decays to lr * min_lr_ratio
  int64_t warmup_steps = 100;
  std::string schedule = "cosine";  // "cosine" or "constant" (after warm-up)
  double weight_decay = 0.1;        // on matrices only, as AdamW is usually run
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip_norm = 1.0;  // 0: no clipping
  double init_std = 0.02;
  uint64_t seed = 1234;

  model::Device device = model::Device::kCpu;
  bool bf16 = false;  // bf16 compute over fp32 master weights (the GPU setting)
  AttentionImpl attention = AttentionImpl::kFused;
  double peak_tflops = 0;  // for MFU; 0 = unknown (not printed)

  int64_t log_every = 10;
  int64_t eval_every = 200;     // 0: only at the end
  int64_t eval_windows = 64;    // held-out windows per evaluation
  int64_t checkpoint_every = 0; // 0: only at the end
  bool resume = true;           // continue from out_dir/checkpoint when present
  int64_t save_shard_bytes = 16000000;  // 16 MB per shard file
  bool save_bf16 = true;        // final weights as BF16 (fp32 when false)

  // Progress lines (stderr by default); tests pass a sink.
  std::function<void(const std::string&)> log;
};

struct TrainPoint {
  int64_t step = 0;
  int64_t tokens = 0;  // non-pad tokens trained on so far
  double loss = 0;     // mean over the last logging interval
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_second = 0;
  double mfu = 0;           // 0 when peak_tflops is unknown
  double eval_loss = -1;    // -1: not evaluated at this point
};

struct TrainResult {
  int64_t steps = 0;
  int64_t tokens = 0;
  double seconds = 0;
  double final_loss = 0;
  double final_eval_loss = -1;
  int64_t parameters = 0;
  std::vector<TrainPoint> curve;
};

// Trains and writes out_dir: config.json, model(-NNNNN-of-NNNNN).safetensors (+ index),
// tokenizer.model, anchor_config.json, train_log.jsonl and checkpoint/ (fp32 weights, AdamW
// moments, state.json). Deterministic for a seed on one device. Errors name the file/flag.
absl::StatusOr<TrainResult> Train(const TrainOptions& options);

// Training-forward logits of `dir`'s model over one batch of windows ([B][L] ids, pads =
// config pad id), under the training mask of `anchors`: row-major [B, L, vocab], fp32. For
// checking that training and serving compute the same function.
absl::StatusOr<std::vector<float>> TrainingLogits(const std::string& dir,
                                                  const std::vector<std::vector<int32_t>>& batch,
                                                  const std::string& anchors,
                                                  AttentionImpl attention);

// Times forward+backward+AdamW steps of a random-weight model (benchmarks): tokens/s and the
// peak device memory for each attention implementation, on the given shape.
struct StepTiming {
  AttentionImpl attention;
  double tokens_per_second = 0;
  double step_ms = 0;
  double peak_memory_mb = 0;  // CUDA only; 0 on CPU
  double mfu = 0;
};
absl::StatusOr<std::vector<StepTiming>> TimeTrainingSteps(const model::ModelConfig& config,
                                                          const std::string& anchors,
                                                          int32_t anchor_id, int64_t batch_size,
                                                          int64_t seq_len, int64_t sentence_len,
                                                          int steps, model::Device device,
                                                          bool bf16, double peak_tflops);

// The model FLOPs of one trained token (forward + backward) for `config` at `seq_len`:
// 6 * (non-embedding parameters + LM head) + 12 * layers * heads * head_dim * seq_len.
double TrainingFlopsPerToken(const model::ModelConfig& config, int64_t seq_len);

}  // namespace anchorserve::train

#endif  // ANCHORSERVE_TRAIN_TRAINER_H_
