// Single-sequence forward throughput of the model core: prefill tokens/s and batch-1 decode
// tokens/s in full and anchor mode, and for the decode step the HBM floor (weight bytes over
// measured copy bandwidth). Prints a Markdown table; the baseline the engine must beat.
//
//   model_bench [--shape tiny|7b] [--device cpu|cuda] [--dtype float32|bfloat16]
//               [--prompt 128] [--decode 64] [--threads N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "model/anchor_sequence.h"
#include "model/llama.h"

namespace anchorserve::bench {
namespace {

using model::AnchorSequence;
using model::AttentionMode;
using model::ModelConfig;

struct Result {
  double prefill_tps = 0, decode_tps = 0, step_ms = 0;
  int64_t kv_tokens = 0;
};

Result Run(const model::LlamaModel& llama, AttentionMode mode, int64_t prompt, int64_t decode) {
  model::SequenceOptions options;
  options.mode = mode;
  options.anchors = model::CustomAnchors({kBenchAnchor}, -1);
  const std::vector<int32_t> ids = Stream(prompt + decode, llama.config().vocab_size);
  const std::vector<int32_t> head(ids.begin(), ids.begin() + prompt);
  Result r;
  std::vector<double> prefill, steps;
  for (int rep = 0; rep < 3; ++rep) {
    auto seq = *AnchorSequence::Create(&llama, options);
    double t0 = Now();
    if (!seq->Feed(head, false).ok()) std::abort();
    prefill.push_back(Now() - t0);
    if (rep < 2) continue;  // decode once, after two prefill warm-ups
    for (int64_t i = prompt; i < prompt + decode; ++i) {
      t0 = Now();
      if (!seq->Feed({&ids[i], 1}, false).ok()) std::abort();
      steps.push_back(Now() - t0);
    }
    r.kv_tokens = seq->kv_tokens();
  }
  std::sort(prefill.begin(), prefill.end());
  std::sort(steps.begin(), steps.end());
  r.prefill_tps = prompt / prefill[1];
  r.step_ms = 1e3 * steps[steps.size() / 2];
  r.decode_tps = 1e3 / r.step_ms;
  return r;
}

int Main(int argc, char** argv) {
  std::string shape = "tiny", device = "cpu", dtype = "float32";
  int64_t prompt = 128, decode = 64;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--shape")
      shape = v;
    else if (k == "--device")
      device = v;
    else if (k == "--dtype")
      dtype = v;
    else if (k == "--prompt")
      prompt = std::stoll(v);
    else if (k == "--decode")
      decode = std::stoll(v);
    else if (k == "--threads")
      threads = std::stoi(v);
    else {
      std::fprintf(stderr, "model_bench: unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  model::LoadOptions options;
  options.device = *model::ParseDevice(device);
  options.precision = *model::ParsePrecision(dtype);
  options.num_threads = threads;
  std::fprintf(stderr, "model_bench: creating %s model on %s (%s)...\n", shape.c_str(),
               device.c_str(), dtype.c_str());
  auto llama = model::LlamaModel::CreateRandom(Shape(shape), 7, options);
  if (!llama.ok()) {
    std::fprintf(stderr, "model_bench: %s\n", std::string(llama.status().message()).c_str());
    return 1;
  }
  const double bandwidth = model::MeasureCopyBandwidth(options.device, 1LL << 30);
  const double floor_ms = 1e3 * static_cast<double>((*llama)->WeightBytes()) / bandwidth;
  std::printf(
      "| shape | device | dtype | mode | prefill tok/s (L=%lld) | decode tok/s (b=1) | "
      "step ms | floor ms | step/floor | kept KV |\n",
      static_cast<long long>(prompt));
  std::printf("|---|---|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (AttentionMode mode : {AttentionMode::kFull, AttentionMode::kAnchor}) {
    std::fprintf(stderr, "model_bench: %s mode...\n",
                 std::string(model::AttentionModeName(mode)).c_str());
    const Result r = Run(**llama, mode, prompt, decode);
    std::printf("| %s | %s | %s | %s | %.0f | %.1f | %.3f | %.3f | %.2f | %lld/%lld |\n",
                shape.c_str(), device.c_str(), dtype.c_str(),
                std::string(model::AttentionModeName(mode)).c_str(), r.prefill_tps, r.decode_tps,
                r.step_ms, floor_ms, r.step_ms / floor_ms, static_cast<long long>(r.kv_tokens),
                static_cast<long long>(prompt + decode));
  }
  std::printf("\nweights %.1f MB, measured copy bandwidth %.1f GB/s (read+write)\n",
              (*llama)->WeightBytes() / 1e6, bandwidth / 1e9);
  return 0;
}

}  // namespace
}  // namespace anchorserve::bench

int main(int argc, char** argv) { return anchorserve::bench::Main(argc, argv); }
