#include "eval/ppl.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "model/sentence_splitter.h"

namespace anchorserve::eval {

std::string InsertAnchorsPerLine(absl::string_view document, absl::string_view anchor) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(document, '\n')) {
    lines.push_back(model::JoinSentencesWithAnchor(line, anchor));
  }
  return absl::StrJoin(lines, "\n");
}

namespace {

bool IsBlank(absl::string_view line) { return absl::StripAsciiWhitespace(line).empty(); }

// Appends the ids of one document (its lines) to `out`.
void EncodeDocument(const std::vector<absl::string_view>& lines, const model::Tokenizer& tokenizer,
                    const HeldOutTextOptions& options, std::vector<int32_t>* out) {
  size_t first = 0, last = lines.size();
  while (first < last && IsBlank(lines[first])) ++first;
  while (last > first && IsBlank(lines[last - 1])) --last;
  if (first == last) return;
  std::string document = absl::StrJoin(lines.begin() + first, lines.begin() + last, "\n");
  if (options.insert_anchors) document = InsertAnchorsPerLine(document, options.anchor_token);
  const std::vector<int32_t> ids = tokenizer.Encode(document, /*add_bos=*/true);
  out->insert(out->end(), ids.begin(), ids.end());
}

}  // namespace

std::vector<int32_t> TokenizeHeldOutText(absl::string_view text, const model::Tokenizer& tokenizer,
                                         const HeldOutTextOptions& options) {
  std::vector<int32_t> out;
  std::vector<absl::string_view> document;
  auto enough = [&] {
    return options.min_tokens >= 0 && static_cast<int64_t>(out.size()) >= options.min_tokens;
  };
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StripTrailingAsciiWhitespace(line) == kDocumentSeparator) {
      EncodeDocument(document, tokenizer, options, &out);
      document.clear();
      if (enough()) return out;
      continue;
    }
    document.push_back(line);
  }
  EncodeDocument(document, tokenizer, options, &out);
  return out;
}

std::vector<int64_t> WindowStarts(int64_t num_tokens, int64_t window, int64_t stride,
                                  int64_t limit) {
  std::vector<int64_t> starts;
  if (window <= 0 || stride <= 0) return starts;
  for (int64_t start = 0; start + window <= num_tokens; start += stride) {
    if (limit >= 0 && static_cast<int64_t>(starts.size()) >= limit) break;
    starts.push_back(start);
  }
  return starts;
}

absl::StatusOr<PerplexityReport> EvaluatePerplexity(
    const model::LlamaModel& model, absl::Span<const int32_t> tokens,
    const PerplexityOptions& options,
    const std::function<void(const PerplexityProgress&)>& progress) {
  if (options.window < 2) return absl::InvalidArgumentError("window must be at least 2 tokens");
  if (options.stride < 1) return absl::InvalidArgumentError("stride must be at least 1 token");
  const int64_t num_tokens = static_cast<int64_t>(tokens.size());
  const std::vector<int64_t> starts =
      WindowStarts(num_tokens, options.window, options.stride, options.limit);
  if (starts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the data has ", num_tokens, " tokens, fewer than one window of ",
                     options.window, options.limit == 0 ? " (or --limit is 0)" : ""));
  }
  const auto t0 = std::chrono::steady_clock::now();
  const bool anchor_mode = options.scoring.mode == EvalMode::kAnchor;
  const model::AnchorSpec& anchors = options.scoring.sequence.anchors;

  PerplexityReport report;
  report.mode = options.scoring.mode;
  report.policy = options.scoring.sequence.policy;
  report.chunk = options.scoring.chunk;
  report.window = options.window;
  report.stride = options.stride;
  report.stream_tokens = num_tokens;
  double window_nll_sum = 0, total_nll = 0, non_anchor_nll = 0;
  int64_t correct = 0, non_anchor_targets = 0;
  double kept_sum = 0, full_sum = 0;
  KvSummary kv;
  for (int64_t start : starts) {
    absl::Span<const int32_t> ids = tokens.subspan(start, options.window);
    ASSIGN_OR_RETURN(SequenceScores scores,
                     ScoreSequence(model, ids, /*first_target=*/1, options.scoring));
    double nll = 0;
    for (size_t k = 0; k < scores.nll.size(); ++k) {
      nll += scores.nll[k];
      correct += scores.greedy[k];
      if (anchors.IsAnchor(ids[k + 1])) {
        ++report.anchor_targets;
      } else {
        non_anchor_nll += scores.nll[k];
        ++non_anchor_targets;
      }
    }
    const int64_t scored = static_cast<int64_t>(scores.nll.size());
    window_nll_sum += nll / static_cast<double>(scored);
    total_nll += nll;
    report.tokens_scored += scored;
    ++report.windows;
    if (anchor_mode) {
      for (size_t t = 0; t < scores.kept_after.size(); ++t) {
        kept_sum += static_cast<double>(scores.kept_after[t]);
        full_sum += static_cast<double>(t + 1);
        kv.peak_kept = std::max(kv.peak_kept, scores.kept_after[t]);
      }
      kv.peak_step_kv = std::max(kv.peak_step_kv, scores.peak_step_kv);
    }
    if (progress) {
      PerplexityProgress p;
      p.windows_done = report.windows;
      p.windows_total = static_cast<int64_t>(starts.size());
      p.tokens_scored = report.tokens_scored;
      p.token_average_ppl = std::exp(total_nll / static_cast<double>(report.tokens_scored));
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress(p);
    }
  }
  report.window_average_nll = window_nll_sum / static_cast<double>(report.windows);
  report.window_average_ppl = std::exp(report.window_average_nll);
  report.token_average_nll = total_nll / static_cast<double>(report.tokens_scored);
  report.token_average_ppl = std::exp(report.token_average_nll);
  if (report.anchor_targets > 0 && non_anchor_targets > 0) {
    report.non_anchor_token_ppl =
        std::exp(non_anchor_nll / static_cast<double>(non_anchor_targets));
  }
  report.token_accuracy = static_cast<double>(correct) / static_cast<double>(report.tokens_scored);
  if (anchor_mode) {
    const double positions = static_cast<double>(report.windows * options.window);
    kv.mean_kept = kept_sum / positions;
    kv.mean_full_equivalent = full_sum / positions;
    kv.compression = 1.0 - kept_sum / full_sum;
    report.kv = kv;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace anchorserve::eval
