// Held-out perplexity over sliding windows (anllm-reference.md §5.5, the paper's Fig. 3), in
// the three modes of scoring.h. Definitions are in docs/EVALUATION.md. Threads: as scoring.h
// (reentrant; the model is shared read-only).
#ifndef ANCHORSERVE_EVAL_PPL_H_
#define ANCHORSERVE_EVAL_PPL_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "eval/scoring.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace anchorserve::eval {

// The line that separates documents in shared/data multi-document files.
inline constexpr char kDocumentSeparator[] = "<|endoftext|>";

// The AnLLM-AC training preparation applied to one document, line by line: every non-blank line
// (a paragraph in our data) becomes model::JoinSentencesWithAnchor(line, anchor), i.e. an anchor
// between its sentences and none after the last; blank lines stay blank; lines are re-joined
// with "\n". Pure.
std::string InsertAnchorsPerLine(absl::string_view document, absl::string_view anchor);

struct HeldOutTextOptions {
  // AC models: InsertAnchorsPerLine with `anchor_token` on every document first.
  bool insert_anchors = false;
  std::string anchor_token = "<AC>";
  // Stop once at least this many tokens are collected (documents are tokenized in order);
  // -1 = tokenize everything.
  int64_t min_tokens = -1;
};

// The token stream of a held-out text file: documents are split at lines that are exactly
// kDocumentSeparator (a file without one is one document), leading and trailing blank lines of
// a document are dropped, each document is encoded with a BOS (the tokenizer's; none if it has
// none), and the documents' ids are concatenated, as a flat evaluation stream (Proof-Pile's
// .bin in the reference) would be. Never fails.
std::vector<int32_t> TokenizeHeldOutText(absl::string_view text, const model::Tokenizer& tokenizer,
                                         const HeldOutTextOptions& options);

struct PerplexityOptions {
  int64_t window = 256;  // tokens per window (the reference's seq_len)
  int64_t stride = 256;  // distance between window starts (the reference: 256)
  int64_t limit = -1;    // at most this many windows; -1 = all
  ScoringOptions scoring;
};

// Starts of the windows: 0, stride, 2*stride, ... while start + window <= num_tokens (only
// full windows), at most `limit` of them (-1 = no limit). Empty when num_tokens < window.
std::vector<int64_t> WindowStarts(int64_t num_tokens, int64_t window, int64_t stride,
                                  int64_t limit);

// How far a run is, for a progress line.
struct PerplexityProgress {
  int64_t windows_done = 0;
  int64_t windows_total = 0;
  int64_t tokens_scored = 0;
  double token_average_ppl = 0;
  double seconds = 0;
};

struct KvSummary {
  double mean_kept = 0;             // mean over windows of the mean kept entries after each token
  int64_t peak_kept = 0;            // the most entries kept after any token of any window
  double mean_full_equivalent = 0;  // the same mean for a full cache: (window + 1) / 2
  double compression = 0;           // C-down = 1 - sum(kept) / sum(full-equivalent)
  int64_t peak_step_kv = 0;         // most keys one Feed attended to (cache + chunk)
};

struct PerplexityReport {
  EvalMode mode = EvalMode::kMasked;
  model::PositionPolicy policy = model::PositionPolicy::kAbsolute;
  int64_t chunk = 0;
  int64_t window = 0;
  int64_t stride = 0;
  int64_t stream_tokens = 0;  // tokens available in the stream
  int64_t windows = 0;
  int64_t tokens_scored = 0;   // windows * (window - 1): every token of a window but its first
  int64_t anchor_targets = 0;  // scored tokens that are anchors
  // Window average (the reference's number): exp(mean over windows of the window's mean NLL).
  double window_average_nll = 0;
  double window_average_ppl = 0;
  // Token average: exp(sum of NLL / tokens scored). Equal to the window average when every
  // window scores the same number of tokens, up to rounding.
  double token_average_nll = 0;
  double token_average_ppl = 0;
  // Token average over targets that are not anchors (AC models: the text's own tokens).
  std::optional<double> non_anchor_token_ppl;
  double token_accuracy = 0;    // share of targets that are the argmax of their row
  std::optional<KvSummary> kv;  // kAnchor only
  double seconds = 0;
};

// Scores every window of `tokens` independently (a fresh forward or a fresh AnchorSequence per
// window, as the reference does). `progress` (may be empty) is called after each window.
// Errors: InvalidArgument for window < 2, stride < 1 or a stream shorter than one window;
// whatever ScoreSequence returns.
absl::StatusOr<PerplexityReport> EvaluatePerplexity(
    const model::LlamaModel& model, absl::Span<const int32_t> tokens,
    const PerplexityOptions& options,
    const std::function<void(const PerplexityProgress&)>& progress = {});

}  // namespace anchorserve::eval

#endif  // ANCHORSERVE_EVAL_PPL_H_
