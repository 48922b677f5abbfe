// Multiple-choice accuracy with k-shot demonstrations (anllm-reference.md §5.1-§5.3, the
// paper's Table 1): every choice is scored by the summed log-probability of its continuation
// tokens, acc picks the largest sum, acc_norm the largest sum per character (lm-eval's rule).
// Reports L_d, L_kv and C-down of the demonstrations. Definitions in docs/EVALUATION.md.
// Threads: as scoring.h (reentrant; the model and tokenizer are shared read-only).
#ifndef ANCHORSERVE_EVAL_MC_H_
#define ANCHORSERVE_EVAL_MC_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "eval/mc_data.h"
#include "eval/scoring.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace anchorserve::eval {

// Why T-up is not reported when it is not (see EvaluateMultipleChoice, docs/EVALUATION.md).
inline constexpr char kSpeedupNeedsAnchorDemos[] =
    "measured only in anchor mode with demonstrations (shots > 0)";

struct ChoiceTokens {
  std::vector<int32_t> context;
  std::vector<int32_t> continuation;  // non-empty
};

// lm-eval's pair encoding: context = Encode(context), continuation = the ids of
// Encode(context + continuation) after the first |context| of them (no BOS in either).
// InvalidArgument when the continuation adds no token.
absl::StatusOr<ChoiceTokens> EncodeChoice(const model::Tokenizer& tokenizer,
                                          absl::string_view context,
                                          absl::string_view continuation);

// The text of the first `shots` items as demonstrations: each DemonstrationText(), followed by
// " " + demo_anchor when demo_anchor is non-empty, then "\n\n". Empty for shots == 0.
// (The AnLLM tokenizer strips the whitespace around "<AC>", so for AC models the demonstrations
// are effectively separated by the anchor alone.)
std::string DemonstrationsText(const std::vector<McItem>& items, int64_t shots,
                               absl::string_view demo_anchor);

struct ChoiceScore {
  double loglik = 0;    // sum of log p over the continuation tokens
  int64_t tokens = 0;   // continuation tokens
  bool greedy = false;  // every continuation token is its row's argmax
};

struct ItemScores {
  std::vector<ChoiceScore> choices;
  // kAnchor with a non-empty prefix: the cache entries kept right after the prefix (anchors +
  // the open sentence), as the live sequence reported it. -1 otherwise.
  int64_t kv_after_prefix = -1;
  int64_t tokens_forwarded = 0;  // sum over choices of |prefix + context + continuation|
};

// Scores each choice c as the sequence prefix + choices[c].context + choices[c].continuation,
// recomputed from scratch per choice in `options.mode`.
// Errors: InvalidArgument for an empty context with an empty prefix; as ScoreSequence.
absl::StatusOr<ItemScores> ScoreChoices(const model::LlamaModel& model,
                                        absl::Span<const int32_t> prefix,
                                        const std::vector<ChoiceTokens>& choices,
                                        const ScoringOptions& options);

// Index of the largest value, the first on ties (numpy's argmax). Precondition: non-empty.
int PickChoice(const std::vector<double>& values);

struct McOptions {
  int64_t shots = 0;        // the first `shots` items become demonstrations and are not scored
  int64_t limit = -1;       // score at most this many items after them; -1 = all
  bool add_bos = false;     // the harness the paper used adds no BOS for causal LMs (§5.1)
  std::string demo_anchor;  // appended after each demonstration ("<AC>" for AC models); "" none
  ScoringOptions scoring;
};

struct McProgress {
  int64_t items_done = 0;
  int64_t items_total = 0;
  double accuracy = 0;
  double seconds = 0;
};

struct McReport {
  std::string task;
  EvalMode mode = EvalMode::kMasked;
  model::PositionPolicy policy = model::PositionPolicy::kAbsolute;
  int64_t shots = 0;
  int64_t items = 0;           // scored
  int64_t choices_scored = 0;  // forward passes
  // Multiple choice: argmax of loglik. Language modelling (LAMBADA): every continuation token
  // is the greedy choice.
  double accuracy = 0;
  std::optional<double> accuracy_norm;  // argmax of loglik / NormalizationLength; MC only
  // Language modelling only: exp(-mean over items of the continuation's summed loglik), the
  // "perplexity" lm-eval reports for LAMBADA.
  std::optional<double> continuation_ppl;
  int64_t demo_tokens = 0;            // L_d: tokens of the demonstrations (BOS excluded)
  int64_t demo_anchors = 0;           // L_kv: anchors among them, what anchor caching keeps of them
  std::optional<double> compression;  // C-down = 1 - L_kv / L_d; none when L_d == 0
  // kAnchor only: cache entries after the demonstrations as measured (L_kv + the open tail).
  std::optional<int64_t> kv_after_demos;
  int64_t tokens_forwarded = 0;
  double seconds = 0;             // scoring time, recomputing demonstrations for every choice
  // Anchor mode with demonstrations: every choice is scored three ways and timed:
  //  - recomputing demonstrations + query + choice (`seconds_recompute`, the paper's baseline),
  //  - from a fork of the demonstrations' anchor-compressed cache (`seconds_anchor_cached`,
  //    the one-time feed of the demonstrations included),
  //  - from a fork of their full cache (`seconds_full_cached`, full caching, the paper's
  //    Table 3 baseline; its scores are the full-attention model's and are not reported).
  // T-up = recompute / anchor-cached; speedup_vs_full = full-cached / anchor-cached.
  // The anchor-cached scores must equal the recomputed ones: their largest difference is
  // `cached_max_diff` (0 when exact).
  double seconds_recompute = 0;
  double seconds_anchor_cached = 0;
  double seconds_full_cached = 0;
  std::optional<double> speedup;
  std::optional<double> speedup_vs_full;
  std::optional<double> cached_max_diff;
  std::string speedup_note = kSpeedupNeedsAnchorDemos;
};

// Encodes and scores items[shots, shots + limit) with the first `shots` items as
// demonstrations. Each sequence is [BOS] + Encode(DemonstrationsText) + context + continuation
// with the demonstrations encoded on their own (so they are a token prefix shared by every
// choice) and context/continuation by EncodeChoice. `progress` (may be empty) is called after
// each item.
// Errors: InvalidArgument when no item is left to score or an item does not encode (naming
// its line); as ScoreChoices, prefixed with the item's line.
absl::StatusOr<McReport> EvaluateMultipleChoice(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer, const McTask& task,
    const std::vector<McItem>& items, const McOptions& options,
    const std::function<void(const McProgress&)>& progress = {});

}  // namespace anchorserve::eval

#endif  // ANCHORSERVE_EVAL_MC_H_
