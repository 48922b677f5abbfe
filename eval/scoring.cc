#include "eval/scoring.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/ansan_mask.h"

namespace anchorserve::eval {

absl::StatusOr<EvalMode> ParseEvalMode(absl::string_view name) {
  if (name == "full") return EvalMode::kFull;
  if (name == "masked") return EvalMode::kMasked;
  if (name == "anchor") return EvalMode::kAnchor;
  return absl::InvalidArgumentError(
      absl::StrCat("mode must be full, masked or anchor, got \"", name, "\""));
}

absl::string_view EvalModeName(EvalMode mode) {
  switch (mode) {
    case EvalMode::kFull:
      return "full";
    case EvalMode::kMasked:
      return "masked";
    case EvalMode::kAnchor:
      return "anchor";
  }
  return "?";
}

double NextTokenNll(absl::Span<const float> row, int32_t target) {
  double max = -INFINITY;
  for (float v : row) max = std::max(max, static_cast<double>(v));
  double sum = 0;
  for (float v : row) sum += std::exp(static_cast<double>(v) - max);
  // (max - target) first: with huge logits, log(sum) + max would round log(sum) away.
  return (max - static_cast<double>(row[target])) + std::log(sum);
}

int32_t ArgMax(absl::Span<const float> row) {
  return static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

std::vector<int64_t> KeptAfterEachToken(absl::Span<const int32_t> ids,
                                        const model::AnchorSpec& anchors) {
  std::vector<int64_t> kept(ids.size());
  int64_t anchors_so_far = 0, open_sentence = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    if (anchors.IsAnchor(ids[t])) {
      ++anchors_so_far;
      open_sentence = 0;
    } else {
      ++open_sentence;
    }
    kept[t] = anchors_so_far + open_sentence;
  }
  return kept;
}

int64_t CountAnchors(absl::Span<const int32_t> ids, const model::AnchorSpec& anchors) {
  return std::count_if(ids.begin(), ids.end(), [&](int32_t id) { return anchors.IsAnchor(id); });
}

namespace {

// Appends the scores of the targets predicted by `rows` (logit rows for sequence positions
// first_row, first_row + 1, ...): row r predicts ids[r + 1].
void ScoreRows(const std::vector<float>& rows, int64_t vocab, int64_t first_row,
               absl::Span<const int32_t> ids, int64_t first_target, SequenceScores* out) {
  const int64_t num_rows = static_cast<int64_t>(rows.size()) / vocab;
  for (int64_t k = 0; k < num_rows; ++k) {
    const int64_t r = first_row + k;
    const int64_t target = r + 1;
    if (target < first_target || target >= static_cast<int64_t>(ids.size())) continue;
    absl::Span<const float> row(rows.data() + k * vocab, static_cast<size_t>(vocab));
    out->nll.push_back(NextTokenNll(row, ids[target]));
    out->greedy.push_back(ArgMax(row) == ids[target] ? 1 : 0);
  }
}

absl::StatusOr<SequenceScores> ScoreFullForward(const model::LlamaModel& model,
                                                absl::Span<const int32_t> ids, int64_t first_target,
                                                const ScoringOptions& options) {
  const int64_t length = static_cast<int64_t>(ids.size());
  const model::ModelConfig& config = model.config();
  if (length > config.max_position_embeddings) {
    return absl::OutOfRangeError(absl::StrCat("sequence of ", length,
                                              " tokens exceeds max_position_embeddings (",
                                              config.max_position_embeddings, ")"));
  }
  std::vector<int32_t> positions(ids.size());
  std::iota(positions.begin(), positions.end(), 0);
  const model::AttentionMask mask = options.mode == EvalMode::kFull
                                        ? model::BuildCausalMask(length)
                                        : model::BuildAnsanMask(ids, options.sequence.anchors);
  ASSIGN_OR_RETURN(std::vector<float> logits, model.ForwardFull(ids, positions, mask));
  SequenceScores out;
  out.nll.reserve(ids.size() - first_target);
  out.greedy.reserve(ids.size() - first_target);
  ScoreRows(logits, config.vocab_size, 0, ids, first_target, &out);
  return out;
}

// Feeds ids[begin, L) into `sequence` (which holds ids[0, begin)) in the cuts of `breaks` and
// `options.chunk`, scoring targets and checking the anchor cache's size after every Feed.
absl::StatusOr<SequenceScores> ContinueAnchorCached(model::AnchorSequence& sequence,
                                                    const model::LlamaModel& model,
                                                    absl::Span<const int32_t> ids, int64_t begin,
                                                    int64_t first_target,
                                                    const ScoringOptions& options,
                                                    absl::Span<const int64_t> breaks) {
  const int64_t length = static_cast<int64_t>(ids.size());
  const bool anchor_mode = sequence.options().mode == model::AttentionMode::kAnchor;
  std::vector<int64_t> cuts = {length};
  for (int64_t b : breaks) {
    if (b > begin && b < length) cuts.push_back(b);
  }
  if (options.chunk > 0) {
    for (int64_t c = options.chunk; c < length; c += options.chunk) {
      if (c > begin) cuts.push_back(c);
    }
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

  SequenceScores out;
  if (anchor_mode) out.kept_after = KeptAfterEachToken(ids, sequence.options().anchors);
  const int64_t vocab = model.config().vocab_size;
  for (int64_t end : cuts) {
    const int64_t kv_before = sequence.kv_tokens();
    // Rows begin..end-1 predict tokens begin+1..end; ask for all of them only when one of
    // those is a target.
    const bool wanted = end >= first_target;
    ASSIGN_OR_RETURN(std::vector<float> rows,
                     sequence.Feed(ids.subspan(begin, end - begin), /*all_logits=*/wanted));
    if (wanted) ScoreRows(rows, vocab, begin, ids, first_target, &out);
    out.peak_step_kv = std::max(out.peak_step_kv, kv_before + (end - begin));
    if (anchor_mode && sequence.kv_tokens() != out.kept_after[end - 1]) {
      return absl::InternalError(
          absl::StrCat("anchor cache holds ", sequence.kv_tokens(), " entries after ", end,
                       " tokens, expected anchors + open sentence = ", out.kept_after[end - 1]));
    }
    begin = end;
  }
  return out;
}

absl::StatusOr<SequenceScores> ScoreAnchorCached(const model::LlamaModel& model,
                                                 absl::Span<const int32_t> ids,
                                                 int64_t first_target,
                                                 const ScoringOptions& options,
                                                 absl::Span<const int64_t> breaks) {
  model::SequenceOptions sequence_options = options.sequence;
  sequence_options.mode = model::AttentionMode::kAnchor;
  ASSIGN_OR_RETURN(std::unique_ptr<model::AnchorSequence> sequence,
                   model::AnchorSequence::Create(&model, sequence_options));
  return ContinueAnchorCached(*sequence, model, ids, 0, first_target, options, breaks);
}

}  // namespace

absl::StatusOr<SequenceScores> ScoreSequence(const model::LlamaModel& model,
                                             absl::Span<const int32_t> ids, int64_t first_target,
                                             const ScoringOptions& options,
                                             absl::Span<const int64_t> breaks) {
  const int64_t length = static_cast<int64_t>(ids.size());
  if (first_target < 1 || first_target >= length) {
    return absl::InvalidArgumentError(
        absl::StrCat("first scored token ", first_target, " must be in [1, ", length, ")"));
  }
  if (options.chunk < 0) return absl::InvalidArgumentError("chunk must not be negative");
  // Checked up front: a chunked Feed would only see a bad id after scoring rows against it.
  const int64_t vocab = model.config().vocab_size;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (options.mode == EvalMode::kAnchor) {
    return ScoreAnchorCached(model, ids, first_target, options, breaks);
  }
  return ScoreFullForward(model, ids, first_target, options);
}

absl::StatusOr<PrefixState> FeedPrefix(const model::LlamaModel& model,
                                       absl::Span<const int32_t> prefix,
                                       const ScoringOptions& options, model::AttentionMode mode) {
  if (prefix.empty()) return absl::InvalidArgumentError("the prefix is empty");
  model::SequenceOptions sequence_options = options.sequence;
  sequence_options.mode = mode;
  PrefixState state;
  ASSIGN_OR_RETURN(state.sequence, model::AnchorSequence::Create(&model, sequence_options));
  // Cut as ScoreSequence cuts the same tokens, so every later logit is bit-identical.
  const int64_t length = static_cast<int64_t>(prefix.size());
  int64_t begin = 0;
  while (begin < length) {
    int64_t end = length;
    if (options.chunk > 0) end = std::min(length, (begin / options.chunk + 1) * options.chunk);
    ASSIGN_OR_RETURN(std::vector<float> rows,
                     state.sequence->Feed(prefix.subspan(begin, end - begin), false));
    begin = end;
  }
  state.length = length;
  return state;
}

absl::StatusOr<SequenceScores> ScoreAfterPrefix(const model::LlamaModel& model,
                                                const PrefixState& prefix,
                                                absl::Span<const int32_t> ids,
                                                int64_t first_target,
                                                const ScoringOptions& options) {
  if (!prefix.sequence) return absl::InvalidArgumentError("no prefix state");
  if (first_target <= prefix.length || first_target >= static_cast<int64_t>(ids.size())) {
    return absl::InvalidArgumentError(absl::StrCat("first scored token ", first_target,
                                                   " must be in (", prefix.length, ", ",
                                                   ids.size(), ")"));
  }
  std::unique_ptr<model::AnchorSequence> sequence = prefix.sequence->Fork();
  return ContinueAnchorCached(*sequence, model, ids, prefix.length, first_target, options, {});
}

}  // namespace anchorserve::eval
