// anchor-eval: run, inspect and evaluate AnLLMs from the command line.
//
//   anchor-eval logits   --model DIR (--token-ids 1,2,3 | --text "...") [--mode full|anchor]
//                        [--policy absolute|compact] [--anchor-ids 13,29889]
//                        [--device cpu|cuda] [--dtype float32|bfloat16] [--json]
//   anchor-eval generate --model DIR --text "..." [--max-tokens N] [--temperature T] [--top-k K]
//                        [--top-p P] [--min-p P] [--repetition-penalty R] [--seed S]
//                        [--stop-ids 2,13]
//                        [--mode ...] [--policy ...] [--device ...] [--dtype ...]
//                        [--anchor-insertion auto|none]   (auto: <AC> at sentence ends, AC models)
//   anchor-eval tokenize --model DIR --text "..."
//   anchor-eval init-model --out DIR [--seed N]
//   anchor-eval convert  --from DIR --to DIR [--shard-mb 2048]
//   anchor-eval ppl      --model DIR --data FILE [--window 256] [--stride 256]
//                        [--mode full|masked|anchor] [--policy absolute|compact] [--chunk N]
//                        [--limit N] [--anchor-insertion auto|none] [--anchor-ids ...]
//                        [--device ...] [--dtype ...] [--json]
//   anchor-eval mc       --model DIR --data FILE --task NAME [--shots K] [--limit N] [--bos]
//                        [--mode full|masked|anchor] [--policy ...] [--chunk N]
//                        [--anchor-insertion auto|none] [--anchor-ids ...] [--device ...]
//                        [--dtype ...] [--json]
//   (ppl and mc: definitions in docs/EVALUATION.md)
//
// Bad arguments: one line on stderr, exit 2. Runtime failures: one line, exit 1.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "eval/mc.h"
#include "eval/mc_data.h"
#include "eval/ppl.h"
#include "eval/scoring.h"
#include "eval/text_file.h"
#include "model/anchor_sequence.h"
#include "model/anchors.h"
#include "model/checkpoint_convert.h"
#include "model/default_model.h"
#include "model/llama.h"
#include "model/sampling.h"
#include "model/sentence_splitter.h"
#include "model/tokenizer.h"

namespace anchorserve::eval {
namespace {

using model::AnchorSequence;

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

struct UsageError {
  std::string message;
};

// --name value / --name=value flags; booleans take no value.
class Flags {
 public:
  Flags(int argc, char** argv, int first, const std::set<std::string>& known,
        const std::set<std::string>& booleans) {
    for (int i = first; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) throw UsageError{"unexpected argument \"" + arg + "\""};
      std::string name = arg.substr(2), value;
      const size_t eq = name.find('=');
      bool has_value = false;
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      if (!known.count(name) && !booleans.count(name)) {
        throw UsageError{"unknown flag --" + name};
      }
      if (booleans.count(name)) {
        if (has_value) throw UsageError{"--" + name + " takes no value"};
        values_[name] = "true";
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) throw UsageError{"--" + name + " needs a value"};
        value = argv[++i];
      }
      values_[name] = value;
    }
  }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  std::string Required(const std::string& name) const {
    if (!Has(name)) throw UsageError{"--" + name + " is required"};
    return Get(name);
  }
  int64_t Int(const std::string& name, int64_t fallback) const {
    if (!Has(name)) return fallback;
    int64_t v;
    if (!absl::SimpleAtoi(Get(name), &v)) throw UsageError{"--" + name + " must be an integer"};
    return v;
  }
  double Double(const std::string& name, double fallback) const {
    if (!Has(name)) return fallback;
    double v;
    if (!absl::SimpleAtod(Get(name), &v)) throw UsageError{"--" + name + " must be a number"};
    return v;
  }

 private:
  std::map<std::string, std::string> values_;
};

template <typename T>
T OrUsage(absl::StatusOr<T> v, const std::string& flag) {
  if (!v.ok()) throw UsageError{"--" + flag + ": " + std::string(v.status().message())};
  return *std::move(v);
}

struct Failure {
  absl::Status status;
};

template <typename T>
T OrFail(absl::StatusOr<T> v) {
  if (!v.ok()) throw Failure{v.status()};
  return *std::move(v);
}

void OrFail(const absl::Status& s) {
  if (!s.ok()) throw Failure{s};
}

const std::set<std::string> kRunFlags = {"model",      "token-ids", "text",   "mode",
                                         "policy",     "anchor-ids", "device", "dtype",
                                         "threads",    "anchor-insertion"};

// Everything logits/generate share: the model, its tokenizer (optional), the sequence options.
struct Loaded {
  std::unique_ptr<model::LlamaModel> llama;
  std::unique_ptr<model::Tokenizer> tokenizer;  // null without tokenizer.model
  model::SequenceOptions sequence;
  std::vector<int32_t> prompt;
};

Loaded LoadForRun(const Flags& flags) {
  Loaded out;
  const std::string dir = flags.Required("model");
  model::LoadOptions options;
  options.device = OrUsage(model::ParseDevice(flags.Get("device", "cpu")), "device");
  options.precision = OrUsage(model::ParsePrecision(flags.Get("dtype", "float32")), "dtype");
  options.num_threads = static_cast<int>(flags.Int("threads", 0));
  out.sequence.mode = OrUsage(model::ParseAttentionMode(flags.Get("mode", "anchor")), "mode");
  out.sequence.policy =
      OrUsage(model::ParsePositionPolicy(flags.Get("policy", "absolute")), "policy");
  if (flags.Has("token-ids") == flags.Has("text")) {
    throw UsageError{"give exactly one of --token-ids and --text"};
  }
  std::vector<int32_t> anchor_ids;
  if (flags.Has("anchor-ids")) {
    anchor_ids = OrUsage(model::ParseIdList(flags.Get("anchor-ids"), "anchor-ids"), "anchor-ids");
  }
  if (flags.Has("token-ids")) {
    out.prompt = OrUsage(model::ParseIdList(flags.Get("token-ids"), "token-ids"), "token-ids");
    if (out.prompt.empty()) throw UsageError{"--token-ids: no token ids given"};
  }
  auto tokenizer = model::Tokenizer::Load(dir);
  if (tokenizer.ok()) {
    out.tokenizer = *std::move(tokenizer);
  } else if (flags.Has("text")) {
    throw Failure{tokenizer.status()};
  }
  out.llama = OrFail(model::LlamaModel::Load(dir, options));
  const model::ModelConfig& config = out.llama->config();
  if (flags.Has("anchor-ids")) {
    int32_t pad = config.pad_token_id;
    if (out.tokenizer) pad = out.tokenizer->pad_id();
    out.sequence.anchors = model::CustomAnchors(anchor_ids, pad);
  } else {
    out.sequence.anchors = OrFail(model::DetectAnchors(dir, config, out.tokenizer.get()));
  }
  if (flags.Has("text")) {
    std::string text = flags.Get("text");
    // AC models saw <AC> after every sentence in training; `auto` inserts it the way the
    // server does, with the trainer's sentence splitter. `none` leaves the text as written.
    const std::string insertion = flags.Get("anchor-insertion", "none");
    if (insertion != "auto" && insertion != "none") {
      throw UsageError{"--anchor-insertion must be auto or none"};
    }
    if (insertion == "auto" && out.sequence.anchors.kind == model::AnchorKind::kAc &&
        text.find(out.sequence.anchors.anchor_token) == std::string::npos) {
      text = model::InsertAnchorsAtSentenceEnds(text, out.sequence.anchors.anchor_token,
                                                /*always_close_last=*/false);
    }
    out.prompt = out.tokenizer->Encode(text, /*add_bos=*/true);
  }
  for (int32_t id : out.prompt) {
    if (id >= config.vocab_size) {
      throw UsageError{absl::StrCat("--token-ids: ", id, " is outside the vocabulary [0, ",
                                    config.vocab_size, ")")};
    }
  }
  if (out.sequence.mode == model::AttentionMode::kAnchor && !out.sequence.anchors.has_anchors()) {
    std::cerr << "anchor-eval: note: the model has no anchor tokens; anchor mode keeps everything"
              << std::endl;
  }
  return out;
}

int RunLogits(const Flags& flags) {
  Loaded run = LoadForRun(flags);
  auto sequence = OrFail(AnchorSequence::Create(run.llama.get(), run.sequence));
  const int64_t vocab = run.llama->config().vocab_size;
  std::vector<std::vector<float>> rows;
  std::vector<int64_t> kv_tokens;
  for (int32_t id : run.prompt) {
    rows.push_back(OrFail(sequence->Feed({&id, 1}, /*all_logits=*/false)));
    kv_tokens.push_back(sequence->kv_tokens());
  }
  if (flags.Has("json")) {
    nlohmann::json j;
    j["token_ids"] = run.prompt;
    j["mode"] = std::string(model::AttentionModeName(run.sequence.mode));
    j["policy"] = std::string(model::PositionPolicyName(run.sequence.policy));
    j["anchor_ids"] = run.sequence.anchors.token_ids;
    j["vocab_size"] = vocab;
    j["kv_tokens"] = kv_tokens;
    j["logits"] = rows;
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::printf("%5s %8s %10s %8s %12s\n", "pos", "token", "kv_tokens", "argmax", "max_logit");
  for (size_t i = 0; i < rows.size(); ++i) {
    size_t best = 0;
    for (size_t v = 1; v < rows[i].size(); ++v) {
      if (rows[i][v] > rows[i][best]) best = v;
    }
    std::printf("%5zu %8d %10lld %8zu %12.5f\n", i, run.prompt[i],
                static_cast<long long>(kv_tokens[i]), best, rows[i][best]);
  }
  return 0;
}

int RunGenerate(const Flags& flags) {
  Loaded run = LoadForRun(flags);
  if (!run.tokenizer) throw UsageError{"--model: generate needs tokenizer.model in the model dir"};
  model::SamplingParams sampling;
  sampling.temperature = static_cast<float>(flags.Double("temperature", 0.8));
  sampling.top_k = static_cast<int32_t>(flags.Int("top-k", 0));
  sampling.top_p = static_cast<float>(flags.Double("top-p", 0.95));
  sampling.min_p = static_cast<float>(flags.Double("min-p", 0.0));
  sampling.repetition_penalty = static_cast<float>(flags.Double("repetition-penalty", 1.0));
  sampling.seed = static_cast<uint64_t>(flags.Int("seed", 0));
  if (auto s = model::ValidateSamplingParams(sampling); !s.ok()) {
    throw UsageError{std::string(s.message())};
  }
  const int64_t max_tokens = flags.Int("max-tokens", 64);
  if (max_tokens <= 0) throw UsageError{"--max-tokens must be positive"};
  auto sequence = OrFail(AnchorSequence::Create(run.llama.get(), run.sequence));
  model::Sampler sampler(sampling);
  model::StreamingDetokenizer detokenizer(run.tokenizer.get());
  // Stop on EOS and on any --stop-ids; the stop token itself is not emitted.
  std::vector<int32_t> stop_ids = run.llama->config().eos_token_ids;
  if (flags.Has("stop-ids")) {
    for (int32_t id : OrUsage(model::ParseIdList(flags.Get("stop-ids"), "stop-ids"), "stop-ids")) {
      stop_ids.push_back(id);
    }
  }
  std::vector<int32_t> history = run.prompt;
  std::vector<float> logits = OrFail(sequence->Feed(run.prompt, /*all_logits=*/false));
  int64_t generated = 0;
  std::string finish = "length";
  while (generated < max_tokens) {
    const int32_t next = sampler.Sample(logits, history);
    if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) {
      finish = "stop";
      break;
    }
    history.push_back(next);
    ++generated;
    std::cout << detokenizer.Push(next) << std::flush;
    logits = OrFail(sequence->Feed({&next, 1}, /*all_logits=*/false));
  }
  std::cout << detokenizer.Flush() << "\n";
  const double reduction =
      1.0 - static_cast<double>(sequence->kv_tokens()) / static_cast<double>(sequence->tokens_seen());
  std::fprintf(stderr,
               "[%s/%s] prompt %zu tokens, generated %lld (%s); kv kept %lld of %lld tokens "
               "(C-down %.1f%%), anchors %lld\n",
               std::string(model::AttentionModeName(run.sequence.mode)).c_str(),
               std::string(model::PositionPolicyName(run.sequence.policy)).c_str(),
               run.prompt.size(), static_cast<long long>(generated), finish.c_str(),
               static_cast<long long>(sequence->kv_tokens()),
               static_cast<long long>(sequence->tokens_seen()), 100.0 * reduction,
               static_cast<long long>(sequence->anchors()));
  return 0;
}

int RunTokenize(const Flags& flags) {
  auto tokenizer = OrFail(model::Tokenizer::Load(flags.Required("model")));
  const std::vector<int32_t> ids = tokenizer->Encode(flags.Required("text"), /*add_bos=*/true);
  nlohmann::json j;
  j["token_ids"] = ids;
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(tokenizer->IdToPiece(id));
  j["pieces"] = pieces;
  std::cout << j.dump() << "\n";
  return 0;
}

int RunInitModel(const Flags& flags) {
  model::DefaultModelOptions options;
  options.out_dir = flags.Required("out");
  options.seed = static_cast<uint64_t>(flags.Int("seed", 0));
  OrFail(model::WriteDefaultModel(options));
  std::cerr << "anchor-eval: wrote the default model to " << options.out_dir << std::endl;
  return 0;
}

int RunConvert(const Flags& flags) {
  const int64_t shard_mb = flags.Int("shard-mb", 2048);
  if (shard_mb <= 0) throw UsageError{"--shard-mb must be positive"};
  OrFail(model::ConvertTorchCheckpoint(flags.Required("from"), flags.Required("to"),
                                       static_cast<size_t>(shard_mb) << 20));
  std::cerr << "anchor-eval: converted to " << flags.Get("to") << std::endl;
  return 0;
}

// ---- ppl and mc: held-out perplexity and multiple-choice accuracy (docs/EVALUATION.md) ----

template <typename T>
nlohmann::json OrNull(const std::optional<T>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

// What ppl and mc share: the model, its tokenizer (required: both read text), the scoring
// options and whether <AC> goes into the text.
struct EvalSetup {
  std::unique_ptr<model::LlamaModel> llama;
  std::unique_ptr<model::Tokenizer> tokenizer;
  ScoringOptions scoring;
  std::string anchor_to_insert;  // "<AC>" for AC models under --anchor-insertion auto, else ""
};

const std::set<std::string> kEvalFlags = {
    "model", "data",    "mode",  "policy",     "limit",           "device",
    "dtype", "threads", "chunk", "anchor-ids", "anchor-insertion"};

// Validates the flags ppl and mc share; loading comes later (LoadEvalModel) so that a bad data
// file fails before a large model is read.
ScoringOptions ParseScoringFlags(const Flags& flags) {
  ScoringOptions scoring;
  scoring.mode = OrUsage(ParseEvalMode(flags.Get("mode", "masked")), "mode");
  scoring.sequence.policy =
      OrUsage(model::ParsePositionPolicy(flags.Get("policy", "absolute")), "policy");
  if (scoring.sequence.policy != model::PositionPolicy::kAbsolute &&
      scoring.mode != EvalMode::kAnchor) {
    throw UsageError{
        "--policy only applies to --mode anchor (full and masked use positions "
        "0..L-1)"};
  }
  scoring.chunk = flags.Int("chunk", 0);
  if (scoring.chunk < 0) throw UsageError{"--chunk must not be negative"};
  const std::string insertion = flags.Get("anchor-insertion", "auto");
  if (insertion != "auto" && insertion != "none") {
    throw UsageError{"--anchor-insertion must be auto or none"};
  }
  if (flags.Int("limit", -1) < -1) throw UsageError{"--limit must be -1 (all) or more"};
  if (flags.Has("anchor-ids")) {
    OrUsage(model::ParseIdList(flags.Get("anchor-ids"), "anchor-ids"), "anchor-ids");
  }
  return scoring;
}

EvalSetup LoadEvalModel(const Flags& flags, ScoringOptions scoring) {
  EvalSetup out;
  const std::string dir = flags.Required("model");
  model::LoadOptions options;
  options.device = OrUsage(model::ParseDevice(flags.Get("device", "cpu")), "device");
  options.precision = OrUsage(model::ParsePrecision(flags.Get("dtype", "float32")), "dtype");
  options.num_threads = static_cast<int>(flags.Int("threads", 0));
  out.tokenizer = OrFail(model::Tokenizer::Load(dir));
  out.llama = OrFail(model::LlamaModel::Load(dir, options));
  if (flags.Has("anchor-ids")) {
    scoring.sequence.anchors = model::CustomAnchors(
        OrUsage(model::ParseIdList(flags.Get("anchor-ids"), "anchor-ids"), "anchor-ids"),
        out.tokenizer->pad_id());
  } else {
    scoring.sequence.anchors =
        OrFail(model::DetectAnchors(dir, out.llama->config(), out.tokenizer.get()));
  }
  const model::AnchorSpec& anchors = scoring.sequence.anchors;
  if (flags.Get("anchor-insertion", "auto") == "auto" && anchors.kind == model::AnchorKind::kAc &&
      !anchors.anchor_token.empty()) {
    out.anchor_to_insert = anchors.anchor_token;
  }
  if (scoring.mode != EvalMode::kFull && !anchors.has_anchors()) {
    std::cerr << "anchor-eval: note: the model has no anchor tokens; " << EvalModeName(scoring.mode)
              << " mode equals full attention" << std::endl;
  }
  out.scoring = std::move(scoring);
  return out;
}

// At most one progress line every few seconds on stderr.
class ProgressLine {
 public:
  bool Due() {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::seconds(5)) return false;
    last_ = now;
    return true;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

std::string Mode(const ScoringOptions& scoring) {
  std::string mode(EvalModeName(scoring.mode));
  if (scoring.mode == EvalMode::kAnchor) {
    absl::StrAppend(&mode, " (policy ", model::PositionPolicyName(scoring.sequence.policy),
                    ", chunk ", scoring.chunk == 0 ? "whole segment" : absl::StrCat(scoring.chunk),
                    ")");
  }
  return mode;
}

int RunPpl(const Flags& flags) {
  const std::string data_path = flags.Required("data");
  ScoringOptions scoring = ParseScoringFlags(flags);
  PerplexityOptions options;
  options.window = flags.Int("window", 256);
  options.stride = flags.Int("stride", 256);
  options.limit = flags.Int("limit", -1);
  if (options.window < 2) throw UsageError{"--window must be at least 2"};
  if (options.stride < 1) throw UsageError{"--stride must be positive"};
  // ppl feeds the anchor path token by token unless --chunk says otherwise.
  if (!flags.Has("chunk")) scoring.chunk = 1;
  const std::string text = OrFail(ReadTextFile(data_path));
  EvalSetup setup = LoadEvalModel(flags, scoring);
  options.scoring = setup.scoring;
  if (options.window > setup.llama->config().max_position_embeddings) {
    throw UsageError{absl::StrCat("--window ", options.window,
                                  " exceeds the model's max_position_embeddings (",
                                  setup.llama->config().max_position_embeddings, ")")};
  }
  HeldOutTextOptions text_options;
  text_options.insert_anchors = !setup.anchor_to_insert.empty();
  text_options.anchor_token = setup.anchor_to_insert;
  if (options.limit > 0) {
    text_options.min_tokens = (options.limit - 1) * options.stride + options.window;
  }
  const std::vector<int32_t> tokens = TokenizeHeldOutText(text, *setup.tokenizer, text_options);
  ProgressLine line;
  const PerplexityReport report =
      OrFail(EvaluatePerplexity(*setup.llama, tokens, options, [&](const PerplexityProgress& p) {
        if (!line.Due() || p.windows_done == p.windows_total) return;
        std::fprintf(stderr, "anchor-eval ppl: %lld/%lld windows, %lld tokens, ppl %.4f, %.1f s\n",
                     static_cast<long long>(p.windows_done),
                     static_cast<long long>(p.windows_total),
                     static_cast<long long>(p.tokens_scored), p.token_average_ppl, p.seconds);
      }));
  if (flags.Has("json")) {
    nlohmann::json j;
    j["mode"] = std::string(EvalModeName(report.mode));
    j["policy"] = std::string(model::PositionPolicyName(report.policy));
    j["chunk"] = report.chunk;
    j["window"] = report.window;
    j["stride"] = report.stride;
    j["anchor_ids"] = options.scoring.sequence.anchors.token_ids;
    j["anchor_insertion"] = text_options.insert_anchors;
    j["stream_tokens"] = report.stream_tokens;
    j["windows"] = report.windows;
    j["tokens_scored"] = report.tokens_scored;
    j["anchor_targets"] = report.anchor_targets;
    j["window_average_nll"] = report.window_average_nll;
    j["window_average_ppl"] = report.window_average_ppl;
    j["token_average_nll"] = report.token_average_nll;
    j["token_average_ppl"] = report.token_average_ppl;
    j["non_anchor_token_ppl"] = OrNull(report.non_anchor_token_ppl);
    j["token_accuracy"] = report.token_accuracy;
    if (report.kv) {
      j["kv"] = {{"mean_kept", report.kv->mean_kept},
                 {"peak_kept", report.kv->peak_kept},
                 {"mean_full_equivalent", report.kv->mean_full_equivalent},
                 {"c_down", report.kv->compression},
                 {"peak_step_kv", report.kv->peak_step_kv}};
    } else {
      j["kv"] = nullptr;
    }
    j["seconds"] = report.seconds;
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::printf("%-22s %s\n", "mode", Mode(options.scoring).c_str());
  std::printf("%-22s %lld x %lld tokens, stride %lld (stream: %lld tokens%s)\n", "windows",
              static_cast<long long>(report.windows), static_cast<long long>(report.window),
              static_cast<long long>(report.stride), static_cast<long long>(report.stream_tokens),
              text_options.insert_anchors ? ", <AC> inserted" : "");
  std::printf("%-22s %lld (anchors among them: %lld)\n", "tokens scored",
              static_cast<long long>(report.tokens_scored),
              static_cast<long long>(report.anchor_targets));
  std::printf("%-22s %.4f   exp(mean over windows of the window's mean NLL)\n",
              "ppl, window average", report.window_average_ppl);
  std::printf("%-22s %.4f   exp(total NLL / tokens scored)\n", "ppl, token average",
              report.token_average_ppl);
  if (report.non_anchor_token_ppl) {
    std::printf("%-22s %.4f   token average over non-anchor targets\n", "ppl, non-anchor",
                *report.non_anchor_token_ppl);
  }
  std::printf("%-22s %.4f\n", "token accuracy", report.token_accuracy);
  if (report.kv) {
    std::printf("%-22s %.2f of %.2f full-equivalent (mean after each token)\n", "kv kept",
                report.kv->mean_kept, report.kv->mean_full_equivalent);
    std::printf("%-22s %lld (largest step: %lld keys)\n", "kv kept, peak",
                static_cast<long long>(report.kv->peak_kept),
                static_cast<long long>(report.kv->peak_step_kv));
    std::printf("%-22s %.1f%%\n", "C-down", 100.0 * report.kv->compression);
  }
  std::printf("%-22s %.2f\n", "seconds", report.seconds);
  return 0;
}

int RunMc(const Flags& flags) {
  const std::string data_path = flags.Required("data");
  const McTask task = OrUsage(FindMcTask(flags.Required("task")), "task");
  ScoringOptions scoring = ParseScoringFlags(flags);
  McOptions options;
  options.shots = flags.Int("shots", 0);
  options.limit = flags.Int("limit", -1);
  options.add_bos = flags.Has("bos");
  if (options.shots < 0) throw UsageError{"--shots must not be negative"};
  const std::vector<McItem> items = OrFail(LoadMcFile(data_path, task));
  EvalSetup setup = LoadEvalModel(flags, scoring);
  options.scoring = setup.scoring;
  options.demo_anchor = setup.anchor_to_insert;
  ProgressLine line;
  const McReport report = OrFail(EvaluateMultipleChoice(
      *setup.llama, *setup.tokenizer, task, items, options, [&](const McProgress& p) {
        if (!line.Due() || p.items_done == p.items_total) return;
        std::fprintf(stderr, "anchor-eval mc: %lld/%lld items, acc %.4f, %.1f s\n",
                     static_cast<long long>(p.items_done), static_cast<long long>(p.items_total),
                     p.accuracy, p.seconds);
      }));
  if (flags.Has("json")) {
    nlohmann::json j;
    j["task"] = report.task;
    j["mode"] = std::string(EvalModeName(report.mode));
    j["policy"] = std::string(model::PositionPolicyName(report.policy));
    j["anchor_ids"] = options.scoring.sequence.anchors.token_ids;
    j["demo_anchor"] = options.demo_anchor;
    j["bos"] = options.add_bos;
    j["shots"] = report.shots;
    j["items"] = report.items;
    j["choices_scored"] = report.choices_scored;
    j["acc"] = report.accuracy;
    j["acc_norm"] = OrNull(report.accuracy_norm);
    j["continuation_ppl"] = OrNull(report.continuation_ppl);
    j["L_d"] = report.demo_tokens;
    j["L_kv"] = report.demo_anchors;
    j["c_down"] = OrNull(report.compression);
    j["kv_after_demos"] = OrNull(report.kv_after_demos);
    j["tokens_forwarded"] = report.tokens_forwarded;
    j["seconds"] = report.seconds;
    j["t_up"] = OrNull(report.speedup);
    j["t_up_vs_full_cache"] = OrNull(report.speedup_vs_full);
    j["t_up_note"] = report.speedup_note;
    j["seconds_recompute"] = report.seconds_recompute;
    j["seconds_anchor_cached"] = report.seconds_anchor_cached;
    j["seconds_full_cached"] = report.seconds_full_cached;
    j["cached_max_diff"] = OrNull(report.cached_max_diff);
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::printf("%-16s %s\n", "task", report.task.c_str());
  std::printf("%-16s %s\n", "mode", Mode(options.scoring).c_str());
  std::printf("%-16s %lld (choices scored: %lld)\n", "items", static_cast<long long>(report.items),
              static_cast<long long>(report.choices_scored));
  if (report.continuation_ppl) {
    std::printf("%-16s %.4f   (greedy match of the whole continuation)\n", "acc", report.accuracy);
    std::printf("%-16s %.4f   exp(-mean continuation log-likelihood)\n", "ppl",
                *report.continuation_ppl);
  } else {
    std::printf("%-16s %.4f\n", "acc", report.accuracy);
    std::printf("%-16s %.4f   (log-likelihood per character)\n", "acc_norm",
                report.accuracy_norm.value_or(0));
  }
  std::printf(
      "%-16s %lld%s\n", "shots", static_cast<long long>(report.shots),
      options.demo_anchor.empty() || report.shots == 0 ? "" : ", <AC> after each demonstration");
  std::printf("%-16s %lld tokens\n", "L_d", static_cast<long long>(report.demo_tokens));
  std::printf("%-16s %lld anchors\n", "L_kv", static_cast<long long>(report.demo_anchors));
  if (report.compression) {
    std::printf("%-16s %.1f%%\n", "C-down", 100.0 * *report.compression);
  }
  if (report.kv_after_demos) {
    std::printf("%-16s %lld (anchors + open sentence)\n", "kv after demos",
                static_cast<long long>(*report.kv_after_demos));
  }
  if (report.speedup) {
    std::printf("%-16s %.2fx   (%s)\n", "T-up", *report.speedup, report.speedup_note.c_str());
    std::printf("%-16s %.2fx   (full-cached / anchor-cached demonstrations)\n", "vs full cache",
                report.speedup_vs_full.value_or(0));
  } else {
    std::printf("%-16s %s\n", "T-up", report.speedup_note.c_str());
  }
  std::printf("%-16s %.2f\n", "seconds", report.seconds);
  return 0;
}

constexpr char kUsage[] =
    "usage: anchor-eval <logits|generate|tokenize|init-model|convert|ppl|mc> [flags]; see "
    "README.md";

int Main(int argc, char** argv) {
  try {
    if (argc < 2) throw UsageError{"missing subcommand"};
    const std::string command = argv[1];
    if (command == "logits") {
      return RunLogits(Flags(argc, argv, 2, kRunFlags, {"json"}));
    }
    if (command == "generate") {
      std::set<std::string> known = kRunFlags;
      known.insert({"max-tokens", "temperature", "top-k", "top-p", "min-p", "repetition-penalty",
                    "seed", "stop-ids"});
      return RunGenerate(Flags(argc, argv, 2, known, {}));
    }
    if (command == "tokenize") return RunTokenize(Flags(argc, argv, 2, {"model", "text"}, {}));
    if (command == "init-model") return RunInitModel(Flags(argc, argv, 2, {"out", "seed"}, {}));
    if (command == "convert") {
      return RunConvert(Flags(argc, argv, 2, {"from", "to", "shard-mb"}, {}));
    }
    if (command == "ppl") {
      std::set<std::string> known = kEvalFlags;
      known.insert({"window", "stride"});
      return RunPpl(Flags(argc, argv, 2, known, {"json"}));
    }
    if (command == "mc") {
      std::set<std::string> known = kEvalFlags;
      known.insert({"task", "shots"});
      return RunMc(Flags(argc, argv, 2, known, {"json", "bos"}));
    }
    if (command == "--help" || command == "help") {
      std::cout << kUsage << "\n";
      return 0;
    }
    throw UsageError{"unknown subcommand \"" + command + "\""};
  } catch (const UsageError& e) {
    std::cerr << "anchor-eval: " << e.message << " (" << kUsage << ")" << std::endl;
    return kExitUsage;
  } catch (const Failure& f) {
    std::cerr << "anchor-eval: " << f.status.message() << std::endl;
    return kExitFailure;
  }
}

}  // namespace
}  // namespace anchorserve::eval

int main(int argc, char** argv) { return anchorserve::eval::Main(argc, argv); }
