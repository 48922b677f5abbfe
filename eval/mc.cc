#include "eval/mc.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace anchorserve::eval {

absl::StatusOr<ChoiceTokens> EncodeChoice(const model::Tokenizer& tokenizer,
                                          absl::string_view context,
                                          absl::string_view continuation) {
  ChoiceTokens out;
  out.context = tokenizer.Encode(context, /*add_bos=*/false);
  const std::vector<int32_t> whole =
      tokenizer.Encode(absl::StrCat(context, continuation), /*add_bos=*/false);
  if (whole.size() <= out.context.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("continuation \"", continuation, "\" encodes to no tokens"));
  }
  out.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(out.context.size()),
                          whole.end());
  return out;
}

std::string DemonstrationsText(const std::vector<McItem>& items, int64_t shots,
                               absl::string_view demo_anchor) {
  std::string text;
  for (int64_t i = 0; i < shots && i < static_cast<int64_t>(items.size()); ++i) {
    absl::StrAppend(&text, items[i].DemonstrationText());
    if (!demo_anchor.empty()) absl::StrAppend(&text, " ", demo_anchor);
    absl::StrAppend(&text, "\n\n");
  }
  return text;
}

int PickChoice(const std::vector<double>& values) {
  int best = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    if (values[i] > values[best]) best = static_cast<int>(i);
  }
  return best;
}

absl::StatusOr<ItemScores> ScoreChoices(const model::LlamaModel& model,
                                        absl::Span<const int32_t> prefix,
                                        const std::vector<ChoiceTokens>& choices,
                                        const ScoringOptions& options) {
  ItemScores out;
  const int64_t prefix_size = static_cast<int64_t>(prefix.size());
  for (const ChoiceTokens& choice : choices) {
    if (prefix.empty() && choice.context.empty()) {
      return absl::InvalidArgumentError("a choice has neither a prefix nor a context");
    }
    std::vector<int32_t> ids(prefix.begin(), prefix.end());
    ids.insert(ids.end(), choice.context.begin(), choice.context.end());
    const int64_t first_target = static_cast<int64_t>(ids.size());
    ids.insert(ids.end(), choice.continuation.begin(), choice.continuation.end());
    const int64_t breaks[] = {prefix_size};
    ASSIGN_OR_RETURN(SequenceScores scores,
                     ScoreSequence(model, ids, first_target, options, breaks));
    ChoiceScore score;
    score.tokens = static_cast<int64_t>(scores.nll.size());
    score.greedy = true;
    for (size_t k = 0; k < scores.nll.size(); ++k) {
      score.loglik -= scores.nll[k];
      score.greedy = score.greedy && scores.greedy[k] != 0;
    }
    out.choices.push_back(score);
    out.tokens_forwarded += static_cast<int64_t>(ids.size());
    if (options.mode == EvalMode::kAnchor && prefix_size > 0) {
      out.kv_after_prefix = scores.kept_after[prefix_size - 1];
    }
  }
  return out;
}

absl::StatusOr<McReport> EvaluateMultipleChoice(
    const model::LlamaModel& model, const model::Tokenizer& tokenizer, const McTask& task,
    const std::vector<McItem>& items, const McOptions& options,
    const std::function<void(const McProgress&)>& progress) {
  const int64_t num_items = static_cast<int64_t>(items.size());
  if (options.shots < 0) return absl::InvalidArgumentError("shots must not be negative");
  int64_t end = num_items;
  if (options.limit >= 0) end = std::min(end, options.shots + options.limit);
  if (options.shots >= end) {
    return absl::InvalidArgumentError(
        absl::StrCat("no item left to score: the file has ", num_items, " items, ", options.shots,
                     " are demonstrations", options.limit == 0 ? " and the limit is 0" : ""));
  }
  const auto t0 = std::chrono::steady_clock::now();
  const bool lm_task = task.format == McFormat::kLanguageModeling;

  std::vector<int32_t> prefix;
  bool prefix_has_bos = false;
  if (options.shots > 0) {
    prefix = tokenizer.Encode(DemonstrationsText(items, options.shots, options.demo_anchor),
                              options.add_bos);
    prefix_has_bos = options.add_bos && tokenizer.bos_id() >= 0;
  } else if (options.add_bos && tokenizer.bos_id() >= 0) {
    prefix = {tokenizer.bos_id()};
    prefix_has_bos = true;
  }
  const absl::Span<const int32_t> demos =
      absl::MakeConstSpan(prefix).subspan(prefix_has_bos ? 1 : 0);

  McReport report;
  report.task = task.name;
  report.mode = options.scoring.mode;
  report.policy = options.scoring.sequence.policy;
  report.shots = options.shots;
  report.demo_tokens = static_cast<int64_t>(demos.size());
  report.demo_anchors = CountAnchors(demos, options.scoring.sequence.anchors);
  if (report.demo_tokens > 0) {
    report.compression =
        1.0 - static_cast<double>(report.demo_anchors) / static_cast<double>(report.demo_tokens);
  }

  // T-up (anchor mode with demonstrations): the demonstrations' states, fed once.
  const bool time_caching = options.scoring.mode == EvalMode::kAnchor && !demos.empty() &&
                            static_cast<int64_t>(prefix.size()) > 0;
  PrefixState anchor_prefix, full_prefix;
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  if (time_caching) {
    auto t = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(anchor_prefix,
                     FeedPrefix(model, prefix, options.scoring, model::AttentionMode::kAnchor));
    report.seconds_anchor_cached += seconds_since(t);
    t = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(full_prefix,
                     FeedPrefix(model, prefix, options.scoring, model::AttentionMode::kFull));
    report.seconds_full_cached += seconds_since(t);
    report.cached_max_diff = 0.0;
  }

  int64_t correct = 0, correct_norm = 0;
  double loglik_sum = 0;
  for (int64_t i = options.shots; i < end; ++i) {
    const McItem& item = items[i];
    const std::string where = absl::StrCat("item on line ", item.line, ": ");
    std::vector<ChoiceTokens> choices;
    for (size_t c = 0; c < item.num_choices(); ++c) {
      auto encoded = EncodeChoice(tokenizer, item.contexts[c], item.continuations[c]);
      if (!encoded.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where, encoded.status().message()));
      }
      choices.push_back(*std::move(encoded));
    }
    auto t_item = std::chrono::steady_clock::now();
    auto scored = ScoreChoices(model, prefix, choices, options.scoring);
    if (!scored.ok()) {
      return absl::Status(scored.status().code(), absl::StrCat(where, scored.status().message()));
    }
    report.seconds_recompute += seconds_since(t_item);
    if (time_caching) {
      for (const PrefixState* state : {&anchor_prefix, &full_prefix}) {
        const auto t = std::chrono::steady_clock::now();
        for (size_t c = 0; c < choices.size(); ++c) {
          std::vector<int32_t> ids(prefix.begin(), prefix.end());
          ids.insert(ids.end(), choices[c].context.begin(), choices[c].context.end());
          const int64_t first_target = static_cast<int64_t>(ids.size());
          ids.insert(ids.end(), choices[c].continuation.begin(), choices[c].continuation.end());
          auto cached = ScoreAfterPrefix(model, *state, ids, first_target, options.scoring);
          if (!cached.ok()) {
            return absl::Status(cached.status().code(),
                                absl::StrCat(where, cached.status().message()));
          }
          if (state == &anchor_prefix) {
            double loglik = 0;
            for (double nll : cached->nll) loglik -= nll;
            report.cached_max_diff = std::max(
                *report.cached_max_diff, std::abs(loglik - scored->choices[c].loglik));
          }
        }
        (state == &anchor_prefix ? report.seconds_anchor_cached : report.seconds_full_cached) +=
            seconds_since(t);
      }
    }
    report.choices_scored += static_cast<int64_t>(choices.size());
    report.tokens_forwarded += scored->tokens_forwarded;
    if (scored->kv_after_prefix >= 0) report.kv_after_demos = scored->kv_after_prefix;
    if (lm_task) {
      correct += scored->choices[0].greedy ? 1 : 0;
      loglik_sum += scored->choices[0].loglik;
    } else {
      std::vector<double> raw, normalized;
      for (size_t c = 0; c < choices.size(); ++c) {
        raw.push_back(scored->choices[c].loglik);
        const int64_t chars = std::max<int64_t>(1, NormalizationLength(item.continuations[c]));
        normalized.push_back(scored->choices[c].loglik / static_cast<double>(chars));
      }
      correct += PickChoice(raw) == item.gold ? 1 : 0;
      correct_norm += PickChoice(normalized) == item.gold ? 1 : 0;
    }
    ++report.items;
    if (progress) {
      McProgress p;
      p.items_done = report.items;
      p.items_total = end - options.shots;
      p.accuracy = static_cast<double>(correct) / static_cast<double>(report.items);
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress(p);
    }
  }
  const double n = static_cast<double>(report.items);
  report.accuracy = static_cast<double>(correct) / n;
  if (lm_task) {
    report.continuation_ppl = std::exp(-loglik_sum / n);
  } else {
    report.accuracy_norm = static_cast<double>(correct_norm) / n;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (time_caching && report.seconds_anchor_cached > 0) {
    report.speedup = report.seconds_recompute / report.seconds_anchor_cached;
    report.speedup_vs_full = report.seconds_full_cached / report.seconds_anchor_cached;
    report.speedup_note =
        "recompute / anchor-cached demonstrations (one-time feed of the demonstrations included)";
  }
  return report;
}

}  // namespace anchorserve::eval
