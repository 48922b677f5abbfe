// anchor-train: make an AnLLM from text (docs/TRAINING.md).
//
//   anchor-train tokenizer --input FILE[,FILE...] --out DIR [--vocab-size 8000]
//   anchor-train prepare   --input FILE[,FILE...] --tokenizer DIR --out DIR
//                          [--anchors ac|ep|none] [--shard-tokens N] [--max-documents N]
//   anchor-train pretrain  --data DIR --tokenizer DIR --out DIR [architecture] [training]
//   anchor-train continue  --init DIR --anchors ac|ep --data DIR --out DIR [training]
//
// architecture: --hidden 384 --layers 8 --heads 6 --kv-heads 6 --intermediate 960
//               --max-position 4096 --rope-theta 10000 --rms-eps 1e-5 --tie 0|1
// training:     --eval-data DIR --seq-len 512 --batch-size 32 --grad-accum 1 --steps 1000
//               --max-minutes M --lr 1e-3 --min-lr-ratio 0.1 --warmup 100
//               --schedule cosine|constant --weight-decay 0.1 --beta1 0.9 --beta2 0.95
//               --clip 1.0 --seed 1234 --device cpu|cuda --dtype float32|bfloat16
//               --attention fused|eager --peak-tflops T --log-every 10 --eval-every 200
//               --eval-windows 64 --checkpoint-every 0 --resume 1|0 --stop-after N --shard-mb 16
//
// Bad arguments: one line on stderr, exit 2. Failures: one line, exit 1.
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "model/model_config.h"
#include "model/tokenizer.h"
#include "absl/strings/str_split.h"
#include "model/tokenizer_trainer.h"
#include "train/prepare.h"
#include "train/trainer.h"

namespace {

struct Args {
  std::map<std::string, std::string> values;
  std::string error;
};

Args Parse(int argc, char** argv, const std::set<std::string>& known) {
  Args args;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) return {{}, "unexpected argument \"" + a + "\""};
    std::string name = a.substr(2), value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return {{}, "--" + name + " needs a value"};
    }
    if (!known.count(name)) return {{}, "unknown flag --" + name};
    args.values[name] = value;
  }
  return args;
}

int Usage(const std::string& message) {
  std::fprintf(stderr, "anchor-train: %s (usage: anchor-train tokenizer|prepare|pretrain|continue ...)\n",
               message.c_str());
  return 2;
}

int64_t Int(const Args& a, const std::string& k, int64_t fallback, bool* ok) {
  auto it = a.values.find(k);
  if (it == a.values.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v) || v < 0) *ok = false;
  return v;
}

double Real(const Args& a, const std::string& k, double fallback, bool* ok) {
  auto it = a.values.find(k);
  if (it == a.values.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second, &v) || v < 0) *ok = false;
  return v;
}

const std::set<std::string> kTrainingFlags = {
    "data", "out", "eval-data", "seq-len", "batch-size", "grad-accum", "steps", "max-minutes",
    "lr", "min-lr-ratio", "warmup", "schedule", "weight-decay", "beta1", "beta2", "clip", "seed",
    "device", "dtype", "attention", "peak-tflops", "log-every", "eval-every", "eval-windows",
    "checkpoint-every", "resume", "shard-mb", "init-std", "stop-after"};
const std::set<std::string> kArchitectureFlags = {
    "tokenizer", "hidden", "layers", "heads", "kv-heads", "intermediate", "max-position",
    "rope-theta", "rms-eps", "tie"};

// Shared by pretrain and continue: returns "" or the flag error.
std::string ReadTrainingFlags(const Args& a, anchorserve::train::TrainOptions* o) {
  bool ok = true;
  o->data_dir = a.values.count("data") ? a.values.at("data") : "";
  o->out_dir = a.values.count("out") ? a.values.at("out") : "";
  if (o->data_dir.empty() || o->out_dir.empty()) return "--data and --out are required";
  if (a.values.count("eval-data")) o->eval_data_dir = a.values.at("eval-data");
  o->seq_len = Int(a, "seq-len", o->seq_len, &ok);
  o->batch_size = Int(a, "batch-size", o->batch_size, &ok);
  o->grad_accum = Int(a, "grad-accum", o->grad_accum, &ok);
  o->max_steps = Int(a, "steps", o->max_steps, &ok);
  o->max_minutes = Real(a, "max-minutes", o->max_minutes, &ok);
  o->lr = Real(a, "lr", o->lr, &ok);
  o->min_lr_ratio = Real(a, "min-lr-ratio", o->min_lr_ratio, &ok);
  o->warmup_steps = Int(a, "warmup", o->warmup_steps, &ok);
  o->weight_decay = Real(a, "weight-decay", o->weight_decay, &ok);
  o->beta1 = Real(a, "beta1", o->beta1, &ok);
  o->beta2 = Real(a, "beta2", o->beta2, &ok);
  o->clip_norm = Real(a, "clip", o->clip_norm, &ok);
  o->init_std = Real(a, "init-std", o->init_std, &ok);
  o->seed = static_cast<uint64_t>(Int(a, "seed", static_cast<int64_t>(o->seed), &ok));
  o->peak_tflops = Real(a, "peak-tflops", -1, &ok);
  o->log_every = Int(a, "log-every", o->log_every, &ok);
  o->eval_every = Int(a, "eval-every", o->eval_every, &ok);
  o->eval_windows = Int(a, "eval-windows", o->eval_windows, &ok);
  o->checkpoint_every = Int(a, "checkpoint-every", o->checkpoint_every, &ok);
  o->resume = Int(a, "resume", 1, &ok) != 0;
  o->stop_after = Int(a, "stop-after", 0, &ok);
  o->save_shard_bytes = Int(a, "shard-mb", 16, &ok) * 1000000;  // decimal MB, as HF's "16MB"
  if (!ok) return "numeric flags must be non-negative numbers";
  if (o->log_every == 0 || o->save_shard_bytes == 0) return "--log-every and --shard-mb must be positive";
  if (a.values.count("schedule")) o->schedule = a.values.at("schedule");
  if (o->schedule != "cosine" && o->schedule != "constant") return "--schedule must be cosine or constant";
  auto device = anchorserve::model::ParseDevice(a.values.count("device") ? a.values.at("device") : "cpu");
  if (!device.ok()) return std::string(device.status().message());
  o->device = *device;
  auto precision = anchorserve::model::ParsePrecision(
      a.values.count("dtype") ? a.values.at("dtype")
                              : (o->device == anchorserve::model::Device::kCuda ? "bfloat16" : "float32"));
  if (!precision.ok()) return std::string(precision.status().message());
  o->bf16 = *precision == anchorserve::model::Precision::kBFloat16;
  const std::string attention = a.values.count("attention") ? a.values.at("attention") : "fused";
  if (attention != "fused" && attention != "eager") return "--attention must be fused or eager";
  o->attention = attention == "fused" ? anchorserve::train::AttentionImpl::kFused
                                      : anchorserve::train::AttentionImpl::kEager;
  // H100 SXM dense BF16 peak; set --peak-tflops for other parts (0 hides MFU).
  if (o->peak_tflops < 0) o->peak_tflops = o->device == anchorserve::model::Device::kCuda ? 989 : 0;
  return "";
}

int RunTraining(const anchorserve::train::TrainOptions& o) {
  auto result = anchorserve::train::Train(o);
  if (!result.ok()) {
    std::fprintf(stderr, "anchor-train: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  std::printf("{\"steps\": %lld, \"tokens\": %lld, \"seconds\": %.1f, \"parameters\": %lld, "
              "\"final_loss\": %.5f, \"final_eval_loss\": %.5f}\n",
              static_cast<long long>(result->steps), static_cast<long long>(result->tokens),
              result->seconds, static_cast<long long>(result->parameters), result->final_loss,
              result->final_eval_loss);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage("missing subcommand");
  const std::string command = argv[1];
  if (command == "tokenizer") {
    Args a = Parse(argc, argv, {"input", "out", "vocab-size"});
    if (!a.error.empty()) return Usage(a.error);
    if (!a.values.count("input") || !a.values.count("out")) return Usage("--input and --out are required");
    bool ok = true;
    anchorserve::model::TokenizerTrainOptions o;
    o.input_files = absl::StrSplit(a.values["input"], ',', absl::SkipEmpty());
    o.output_dir = a.values["out"];
    o.vocab_size = static_cast<int>(Int(a, "vocab-size", 8000, &ok));
    if (!ok) return Usage("--vocab-size must be a positive integer");
    if (auto s = anchorserve::model::TrainTokenizer(o); !s.ok()) {
      std::fprintf(stderr, "anchor-train: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    std::fprintf(stderr, "anchor-train: wrote %s/tokenizer.model\n", o.output_dir.c_str());
    return 0;
  }
  if (command == "prepare") {
    Args a = Parse(argc, argv, {"input", "tokenizer", "out", "anchors", "shard-tokens", "max-documents"});
    if (!a.error.empty()) return Usage(a.error);
    for (const char* k : {"input", "tokenizer", "out"}) {
      if (!a.values.count(k)) return Usage(std::string("--") + k + " is required");
    }
    bool ok = true;
    anchorserve::train::PrepareOptions o;
    o.input_files = absl::StrSplit(a.values["input"], ',', absl::SkipEmpty());
    o.tokenizer_dir = a.values["tokenizer"];
    o.output_dir = a.values["out"];
    if (a.values.count("anchors")) o.anchors = a.values["anchors"];
    if (o.anchors != "ac" && o.anchors != "ep" && o.anchors != "none") {
      return Usage("--anchors must be ac, ep or none");
    }
    o.shard_tokens = Int(a, "shard-tokens", o.shard_tokens, &ok);
    o.max_documents = Int(a, "max-documents", 0, &ok);
    if (!ok || o.shard_tokens == 0) return Usage("--shard-tokens/--max-documents must be positive integers");
    const auto start = std::chrono::steady_clock::now();
    o.progress = [&](int64_t bytes, int64_t tokens) {
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "\ranchor-train prepare: %.1f MB read, %lld tokens, %.0f tokens/s   ",
                   bytes / 1e6, static_cast<long long>(tokens), tokens / std::max(s, 1e-9));
    };
    auto result = anchorserve::train::PrepareCorpus(o);
    std::fprintf(stderr, "\n");
    if (!result.ok()) {
      std::fprintf(stderr, "anchor-train: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    std::printf("{\"documents\": %lld, \"sentences\": %lld, \"tokens\": %lld, \"anchors\": %lld, "
                "\"shards\": %lld}\n",
                static_cast<long long>(result->documents), static_cast<long long>(result->sentences),
                static_cast<long long>(result->tokens), static_cast<long long>(result->anchors),
                static_cast<long long>(result->shards));
    return 0;
  }
  if (command == "pretrain" || command == "continue") {
    const bool pretrain = command == "pretrain";
    std::set<std::string> known = kTrainingFlags;
    if (pretrain) {
      known.insert(kArchitectureFlags.begin(), kArchitectureFlags.end());
    } else {
      known.insert({"init", "anchors"});
    }
    Args a = Parse(argc, argv, known);
    if (!a.error.empty()) return Usage(a.error);
    anchorserve::train::TrainOptions o;
    if (std::string e = ReadTrainingFlags(a, &o); !e.empty()) return Usage(e);
    if (!pretrain) {
      if (!a.values.count("init")) return Usage("--init is required for continue");
      o.init_dir = a.values["init"];
      o.anchors = a.values.count("anchors") ? a.values["anchors"] : "";
      if (o.anchors != "ac" && o.anchors != "ep") return Usage("--anchors must be ac or ep");
      return RunTraining(o);
    }
    if (!a.values.count("tokenizer")) return Usage("--tokenizer is required for pretrain");
    o.tokenizer_dir = a.values["tokenizer"];
    auto tokenizer = anchorserve::model::Tokenizer::Load(o.tokenizer_dir);
    if (!tokenizer.ok()) {
      std::fprintf(stderr, "anchor-train: %s\n", std::string(tokenizer.status().message()).c_str());
      return 1;
    }
    bool ok = true;
    anchorserve::model::ModelConfig& c = o.config;
    c.vocab_size = (*tokenizer)->vocab_size();
    c.hidden_size = Int(a, "hidden", 384, &ok);
    c.num_hidden_layers = Int(a, "layers", 8, &ok);
    c.num_attention_heads = Int(a, "heads", 6, &ok);
    c.num_key_value_heads = Int(a, "kv-heads", c.num_attention_heads, &ok);
    c.intermediate_size = Int(a, "intermediate", 960, &ok);
    c.max_position_embeddings = Int(a, "max-position", 4096, &ok);
    c.rope_theta = Real(a, "rope-theta", 10000, &ok);
    c.rms_norm_eps = Real(a, "rms-eps", 1e-5, &ok);
    c.tie_word_embeddings = Int(a, "tie", 0, &ok) != 0;
    if (!ok || c.num_attention_heads == 0) return Usage("architecture flags must be positive numbers");
    c.head_dim = c.hidden_size / c.num_attention_heads;
    c.bos_token_id = (*tokenizer)->bos_id();
    c.eos_token_ids = {(*tokenizer)->eos_id()};
    c.pad_token_id = (*tokenizer)->pad_id();
    o.anchors = "none";
    return RunTraining(o);
  }
  return Usage("unknown subcommand \"" + command + "\"");
}
