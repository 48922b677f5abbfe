// Memory per session over a multi-turn chat, anchor vs full mode, through the real paged
// cache (tiny model, teacher-forced real text), with bytes also given for the Llama-2-7B
// shape (shape arithmetic: kept tokens x bytes per token). Also times snapshot (offload) and
// restore of the session and a REDUCTION step against a plain decode step.
//
//   cache_bench --model DIR [--text FILE] [--turns 20] [--device cpu|cuda] [--dtype ...]
//
// Text: FILE, else ../shared/data/heldout/gutenberg_valid.txt when present, else the
// synthetic corpus. Each turn is a user message and a reply of 2-6 sentences each, with <AC>
// after every sentence (the AC prompt convention).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cache/block_pool.h"
#include "cache/paged_sequence.h"
#include "model/anchors.h"
#include "model/default_model.h"
#include "model/llama.h"
#include "model/sentence_splitter.h"
#include "model/tokenizer.h"

namespace anchorserve::bench {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<std::string> Sentences(const std::string& text, size_t want) {
  std::vector<std::string> out;
  std::istringstream lines(text);
  std::string line;
  while (out.size() < want && std::getline(lines, line)) {
    if (line.size() < 40 || line == "<|endoftext|>") continue;
    for (std::string& s : model::SplitSentenceStrings(line)) {
      if (s.size() >= 8 && out.size() < want) out.push_back(std::move(s));
    }
  }
  return out;
}

int Main(int argc, char** argv) {
  std::string model_dir = "build/models/default", text_file, device = "cpu", dtype = "float32";
  int turns = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model_dir = v;
    else if (k == "--text") text_file = v;
    else if (k == "--turns") turns = std::stoi(v);
    else if (k == "--device") device = v;
    else if (k == "--dtype") dtype = v;
    else {
      std::fprintf(stderr, "cache_bench: unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (text_file.empty() && std::filesystem::exists("../shared/data/heldout/gutenberg_valid.txt")) {
    text_file = "../shared/data/heldout/gutenberg_valid.txt";
  }
  std::string text;
  if (!text_file.empty()) {
    std::ifstream in(text_file);
    std::stringstream s;
    s << in.rdbuf();
    text = s.str().substr(0, 4 << 20);
  } else {
    text = model::SyntheticCorpus(7, 2 << 20);
    text_file = "(synthetic corpus)";
  }
  model::LoadOptions options;
  options.device = *model::ParseDevice(device);
  options.precision = *model::ParsePrecision(dtype);
  // The directory gives the tokenizer, anchors and shape; weights are drawn at random with a
  // position limit that a 20-turn chat cannot reach (memory does not depend on the weights).
  auto config = model::LoadModelConfig(model_dir);
  auto tokenizer = model::Tokenizer::Load(model_dir);
  if (!config.ok() || !tokenizer.ok()) {
    std::fprintf(stderr, "cache_bench: cannot load %s (run anchor-eval init-model --out %s)\n",
                 model_dir.c_str(), model_dir.c_str());
    return 1;
  }
  config->max_position_embeddings = 1 << 20;
  auto llama = model::LlamaModel::CreateRandom(*config, 1, options);
  if (!llama.ok()) return 1;
  auto anchors = model::DetectAnchors(model_dir, (*llama)->config(), tokenizer->get());
  if (!anchors.ok() || anchors->kind != model::AnchorKind::kAc) {
    std::fprintf(stderr, "cache_bench: needs an AC model\n");
    return 1;
  }
  const std::vector<std::string> sentences = Sentences(text, static_cast<size_t>(turns) * 12);
  // Turns: 2-6 sentences of user text, 2-6 of reply, deterministic.
  std::vector<std::vector<int32_t>> turn_ids;
  size_t next = 0;
  for (int t = 0; t < turns && next < sentences.size(); ++t) {
    std::string message;
    const size_t n = 4 + (t * 7) % 9;  // user + reply sentences this turn
    for (size_t k = 0; k < n && next < sentences.size(); ++k) {
      message += sentences[next++] + " " + anchors->anchor_token + " ";
    }
    turn_ids.push_back((*tokenizer)->Encode(message, /*add_bos=*/t == 0));
  }

  cache::BlockPoolOptions pool_options;
  pool_options.geometry = cache::GeometryOf((*llama)->config(), options.precision);
  pool_options.device = options.device;
  pool_options.precision = options.precision;
  pool_options.block_tokens = 16;
  pool_options.budget_bytes = 256LL << 20;
  auto pool = cache::BlockPool::Create(pool_options);
  if (!pool.ok()) return 1;
  model::ModelConfig seven_b;
  seven_b.num_hidden_layers = 32;
  seven_b.num_key_value_heads = 32;
  seven_b.head_dim = 128;
  const int64_t bytes_7b = cache::GeometryOf(seven_b, model::Precision::kBFloat16).bytes_per_token();

  std::unique_ptr<cache::PagedSequence> seqs[2];
  for (int m = 0; m < 2; ++m) {
    cache::PagedSequenceOptions o;
    o.mode = m == 0 ? model::AttentionMode::kAnchor : model::AttentionMode::kFull;
    o.anchors = *anchors;
    seqs[m] = *cache::PagedSequence::Create(llama->get(), pool->get(), o);
  }
  std::printf("text: %s; model: %s (%lld B/token); 7B shape: %lld B/token (bf16)\n\n",
              text_file.c_str(), model_dir.c_str(),
              static_cast<long long>(pool_options.geometry.bytes_per_token()),
              static_cast<long long>(bytes_7b));
  std::printf("| turn | tokens | kept anchor | kept full | anchor/full | 7B anchor MB | 7B full MB | C-down |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (size_t t = 0; t < turn_ids.size(); ++t) {
    for (auto& seq : seqs) {
      if (auto fed = seq->Feed(turn_ids[t], false); !fed.ok()) {
        std::fprintf(stderr, "cache_bench: %s\n", std::string(fed.status().message()).c_str());
        return 1;
      }
    }
    const auto a = seqs[0]->accounting(), f = seqs[1]->accounting();
    std::printf("| %zu | %lld | %lld | %lld | %.2f%% | %.2f | %.1f | %.1f%% |\n", t + 1,
                static_cast<long long>(a.full_tokens), static_cast<long long>(a.kept_tokens),
                static_cast<long long>(f.kept_tokens),
                100.0 * a.kept_tokens / std::max<int64_t>(1, f.kept_tokens),
                a.kept_tokens * bytes_7b / 1e6, f.kept_tokens * bytes_7b / 1e6,
                100.0 * a.reduction());
  }
  // Our tokenizer (small vocabulary) cuts sentences into more tokens than Llama-2's would;
  // estimate the 7B ratio with Llama-2's ~1.3 tokens per English word as well.
  double words = 0;
  for (size_t i = 0; i < next; ++i) {
    bool in_word = false;
    for (char c : sentences[i]) {
      const bool space = c == ' ' || c == '\n' || c == '\t';
      if (!space && !in_word) ++words;
      in_word = !space;
    }
  }
  const double anchors_kept = static_cast<double>(seqs[0]->accounting().kept_tokens);
  const double llama_tokens = 1.3 * words + static_cast<double>(next);
  std::printf("\n%zu sentences, %.1f words each: with Llama-2's tokenizer (~1.3 tokens/word) "
              "anchor/full would be about %.2f%% (7B: %.1f MB vs %.1f MB)\n",
              next, words / next, 100.0 * anchors_kept / llama_tokens, anchors_kept * bytes_7b / 1e6,
              llama_tokens * bytes_7b / 1e6);
  // Offload/restore and REDUCTION cost on this device.
  const double t0 = Now();
  auto snap = seqs[0]->Snapshot();
  const double t1 = Now();
  cache::PagedSequenceOptions o = seqs[0]->options();
  auto restored = cache::PagedSequence::Restore(llama->get(), pool->get(), o, *snap);
  const double t2 = Now();
  if (!snap.ok() || !restored.ok()) return 1;
  std::vector<double> plain, reduce;
  const int32_t word = turn_ids[0][2], anchor = anchors->token_ids[0];
  for (int i = 0; i < 40; ++i) {
    const int32_t id = i % 5 == 4 ? anchor : word;
    const double s = Now();
    if (!(*restored)->Feed({&id, 1}, false).ok()) return 1;
    (i % 5 == 4 ? reduce : plain).push_back(Now() - s);
  }
  std::sort(plain.begin(), plain.end());
  std::sort(reduce.begin(), reduce.end());
  std::printf("\nsession after %zu turns: snapshot (offload) %.3f ms for %zu bytes, restore %.3f ms; "
              "decode step %.3f ms, step with REDUCTION %.3f ms (%s, %s)\n",
              turn_ids.size(), 1e3 * (t1 - t0), snap->kv.size(), 1e3 * (t2 - t1),
              1e3 * plain[plain.size() / 2], 1e3 * reduce[reduce.size() / 2], device.c_str(),
              dtype.c_str());
  return 0;
}

}  // namespace
}  // namespace anchorserve::bench

int main(int argc, char** argv) { return anchorserve::bench::Main(argc, argv); }
