// Engine benchmarks 1-3 at the model/cache level: batched decode through
// PagedSequence::DecodeBatch on the paged KV layout, side by side in one run:
//  1. decode tokens/s at batch 1 and 64 against the HBM floor (weights + the KV the step
//     reads, over the measured copy bandwidth), for each attention path (CUDA graph + paged
//     kernel, eager kernel, the gathering reference);
//  2. our full mode is the number to put beside HF generate() (scripts/device/hf_generate_bench.py);
//  3. anchor vs full mode with a long history (default 8K tokens, 25-token sentences).
// Prints Markdown tables; --json writes the rows.
//
//   decode_bench [--shape 7b|tiny] [--device cuda|cpu] [--dtype bfloat16|float32]
//                [--prompt 512] [--steps 32] [--batches 1,64] [--history 8192]
//                [--long-batch 8] [--kv-fraction 0.6] [--kv-mb N] [--json PATH]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cache/block_pool.h"
#include "cache/paged_sequence.h"
#include "model/llama.h"

namespace anchorserve::bench {
namespace {

using cache::DecodeAttention;
using cache::DecodeOptions;
using cache::PagedSequence;
using model::AttentionMode;

struct Row {
  std::string path, mode;
  int64_t batch = 0, context = 0, kept = 0;
  double step_ms = 0, tok_s = 0, floor_ms = 0;
};

struct Bench {
  const model::LlamaModel* llama;
  cache::BlockPool* pool;
  double bandwidth;  // bytes/s moved by a device copy (reads + writes)
  int64_t steps;

  // `batch` sequences with `context` tokens of history, then `steps` timed decode steps.
  Row Run(const std::string& path, AttentionMode mode, int64_t batch, int64_t context,
          const DecodeOptions& options) const {
    cache::PagedSequenceOptions o;
    o.mode = mode;
    o.anchors = model::CustomAnchors({kBenchAnchor}, -1);
    const std::vector<int32_t> ids =
        Stream(context + steps + 2, llama->config().vocab_size);
    std::vector<std::unique_ptr<PagedSequence>> seqs;
    for (int64_t b = 0; b < batch; ++b) {
      auto seq = PagedSequence::Create(llama, pool, o);
      if (!seq.ok()) Die(seq.status());
      for (int64_t at = 0; at < context; at += 512) {
        const int64_t n = std::min<int64_t>(512, context - at);
        if (auto s = (*seq)->Feed({ids.data() + at, static_cast<size_t>(n)}, false); !s.ok()) {
          Die(s.status());
        }
      }
      seqs.push_back(*std::move(seq));
    }
    std::vector<PagedSequence*> raw;
    for (auto& s : seqs) raw.push_back(s.get());
    auto step = [&](int64_t i) {
      std::vector<int32_t> tokens(static_cast<size_t>(batch), ids[context + i]);
      auto logits = PagedSequence::DecodeBatch(raw, tokens, options);
      if (!logits.ok()) Die(logits.status());
    };
    step(0);  // warm-up: captures this bucket's graph
    step(1);
    int64_t kept = 0;
    for (auto& s : seqs) kept += static_cast<int64_t>(s->entries().size());
    const double t0 = Now();
    for (int64_t i = 2; i < steps + 2; ++i) step(i);
    const double seconds = Now() - t0;
    Row r;
    r.path = path;
    r.mode = std::string(model::AttentionModeName(mode));
    r.batch = batch;
    r.context = context;
    r.kept = kept / batch;
    r.step_ms = 1e3 * seconds / static_cast<double>(steps);
    r.tok_s = static_cast<double>(batch * steps) / seconds;
    // A step reads every weight once and, per sequence, the K/V it keeps (once per layer).
    const double kv_bytes = static_cast<double>(kept + batch * steps / 2) *
                            static_cast<double>(pool->options().geometry.bytes_per_token());
    r.floor_ms = 1e3 * (static_cast<double>(llama->WeightBytes()) + kv_bytes) / bandwidth;
    std::fprintf(stderr, "decode_bench: %-9s %-6s batch %3lld context %5lld: %.3f ms/step\n",
                 path.c_str(), r.mode.c_str(), static_cast<long long>(batch),
                 static_cast<long long>(context), r.step_ms);
    return r;
  }

  [[noreturn]] static void Die(const absl::Status& s) {
    std::fprintf(stderr, "decode_bench: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
};

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoll(item));
  return out;
}

void PrintRows(const std::vector<Row>& rows) {
  std::printf("| path | mode | batch | context | kept KV/seq | step ms | tok/s | floor ms | step/floor |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %lld | %lld | %lld | %.3f | %.1f | %.3f | %.2f |\n", r.path.c_str(),
                r.mode.c_str(), static_cast<long long>(r.batch), static_cast<long long>(r.context),
                static_cast<long long>(r.kept), r.step_ms, r.tok_s, r.floor_ms,
                r.step_ms / r.floor_ms);
  }
}

int Main(int argc, char** argv) {
  std::string shape = "7b", device = "cuda", dtype = "bfloat16", json;
  int64_t prompt = 512, steps = 32, history = 8192, long_batch = 8, kv_mb = 0;
  double kv_fraction = 0.6;  // leaves room for the long-history prefill
  std::vector<int64_t> batches = {1, 64};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--shape") shape = v;
    else if (k == "--device") device = v;
    else if (k == "--dtype") dtype = v;
    else if (k == "--prompt") prompt = std::stoll(v);
    else if (k == "--steps") steps = std::stoll(v);
    else if (k == "--batches") batches = ParseList(v);
    else if (k == "--history") history = std::stoll(v);
    else if (k == "--long-batch") long_batch = std::stoll(v);
    else if (k == "--kv-fraction") kv_fraction = std::stod(v);
    else if (k == "--kv-mb") kv_mb = std::stoll(v);
    else if (k == "--json") json = v;
    else {
      std::fprintf(stderr, "decode_bench: unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  model::LoadOptions load;
  load.device = *model::ParseDevice(device);
  load.precision = *model::ParsePrecision(dtype);
  model::ModelConfig config = Shape(shape);
  config.max_position_embeddings = std::max<int64_t>(config.max_position_embeddings,
                                                     history + prompt + steps + 64);
  std::fprintf(stderr, "decode_bench: creating the %s shape on %s (%s)...\n", shape.c_str(),
               device.c_str(), dtype.c_str());
  auto llama = model::LlamaModel::CreateRandom(config, 7, load);
  if (!llama.ok()) Bench::Die(llama.status());
  cache::BlockPoolOptions pool_options;
  pool_options.geometry = cache::GeometryOf(config, load.precision);
  pool_options.device = load.device;
  pool_options.precision = load.precision;
  pool_options.block_tokens = 16;
  pool_options.budget_bytes = kv_mb << 20;
  if (load.device == model::Device::kCuda && kv_mb == 0) pool_options.free_memory_fraction = kv_fraction;
  if (load.device == model::Device::kCpu && kv_mb == 0) pool_options.budget_bytes = int64_t{1} << 30;
  auto pool = cache::BlockPool::Create(pool_options);
  if (!pool.ok()) Bench::Die(pool.status());
  const double bandwidth = model::MeasureCopyBandwidth(load.device, int64_t{1} << 30);
  Bench bench{llama->get(), pool->get(), bandwidth, steps};

  DecodeOptions graphs, eager, reference;
  eager.cuda_graphs = false;
  reference.attention = DecodeAttention::kReference;
  const bool kernel = load.device == model::Device::kCuda &&
                      load.precision == model::Precision::kBFloat16;
  std::vector<Row> short_rows, long_rows;
  for (int64_t b : batches) {
    if (kernel) {
      short_rows.push_back(bench.Run("graph", AttentionMode::kFull, b, prompt, graphs));
      short_rows.push_back(bench.Run("eager", AttentionMode::kFull, b, prompt, eager));
    }
    short_rows.push_back(bench.Run("reference", AttentionMode::kFull, b, prompt, reference));
    if (kernel) short_rows.push_back(bench.Run("graph", AttentionMode::kAnchor, b, prompt, graphs));
  }
  const char* best = kernel ? "graph" : "reference";
  const DecodeOptions& best_options = kernel ? graphs : reference;
  if (history > 0 && long_batch > 0) {
    long_rows.push_back(bench.Run(best, AttentionMode::kFull, long_batch, history, best_options));
    long_rows.push_back(bench.Run(best, AttentionMode::kAnchor, long_batch, history, best_options));
  }

  std::printf("Batched decode, %s shape, %s, %s (benchmarks 1 and 2: our full mode)\n\n",
              shape.c_str(), device.c_str(), dtype.c_str());
  PrintRows(short_rows);
  if (!long_rows.empty()) {
    std::printf("\nLong history (benchmark 3): %lld tokens, 25-token sentences, batch %lld\n\n",
                static_cast<long long>(history), static_cast<long long>(long_batch));
    PrintRows(long_rows);
    std::printf("\nanchor / full decode throughput: %.2fx\n",
                long_rows[1].tok_s / long_rows[0].tok_s);
  }
  std::printf("\nweights %.1f MB, KV %.3f MB/token, measured copy bandwidth %.1f GB/s "
              "(read+write, as model_bench's floor)\n",
              static_cast<double>((*llama)->WeightBytes()) / 1e6,
              static_cast<double>(pool_options.geometry.bytes_per_token()) / 1e6, bandwidth / 1e9);
  if (!json.empty()) {
    std::ofstream out(json);
    out << "{\"bandwidth\": " << bandwidth << ", \"rows\": [";
    bool first = true;
    for (const auto* rows : {&short_rows, &long_rows}) {
      for (const Row& r : *rows) {
        out << (first ? "" : ",") << "\n {\"path\": \"" << r.path << "\", \"mode\": \"" << r.mode
            << "\", \"batch\": " << r.batch << ", \"context\": " << r.context
            << ", \"kept\": " << r.kept << ", \"step_ms\": " << r.step_ms
            << ", \"tok_s\": " << r.tok_s << ", \"floor_ms\": " << r.floor_ms << "}";
        first = false;
      }
    }
    out << "\n]}\n";
  }
  return 0;
}

}  // namespace
}  // namespace anchorserve::bench

int main(int argc, char** argv) { return anchorserve::bench::Main(argc, argv); }
