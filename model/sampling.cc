#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace anchorserve::model {
namespace {

// splitmix64: tiny, well-distributed, fully specified (reproducible everywhere).
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

int32_t Argmax(absl::Span<const float> v) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(v.size()); ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

void ApplyRepetitionPenalty(std::vector<double>& scores, absl::Span<const int32_t> history,
                            float penalty) {
  if (penalty == 1.0f) return;
  std::vector<int32_t> ids(history.begin(), history.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(scores.size())) continue;
    double& s = scores[id];
    s = s > 0 ? s / penalty : s * penalty;
  }
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", p.temperature));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", p.top_k));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (!(p.min_p >= 0.0f && p.min_p < 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1), got ", p.min_p));
  }
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be a finite number > 0, got ", p.repetition_penalty));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), state_(params.seed) {}

double Sampler::NextUniform() { return static_cast<double>(SplitMix64(state_) >> 11) * 0x1.0p-53; }

std::vector<double> Sampler::Distribution(absl::Span<const float> logits,
                                          absl::Span<const int32_t> history) const {
  const size_t n = logits.size();
  std::vector<double> scores(logits.begin(), logits.end());
  ApplyRepetitionPenalty(scores, history, params_.repetition_penalty);
  std::vector<double> probs(n, 0.0);
  if (params_.temperature == 0.0f) {
    size_t best = 0;
    for (size_t i = 1; i < n; ++i) {
      if (scores[i] > scores[best]) best = i;
    }
    probs[best] = 1.0;
    return probs;
  }
  for (double& s : scores) s /= params_.temperature;
  // Candidates sorted by score (descending, ties by id) so every cut is deterministic.
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  size_t keep = n;
  if (params_.top_k > 0) keep = std::min<size_t>(keep, params_.top_k);
  const double max_score = scores[order[0]];
  std::vector<double> p(keep);
  double total = 0;
  for (size_t r = 0; r < keep; ++r) {
    p[r] = std::exp(scores[order[r]] - max_score);
    total += p[r];
  }
  for (double& x : p) x /= total;
  if (params_.top_p < 1.0f) {
    // HF keeps the smallest prefix whose mass reaches top_p (at least one token).
    double cumulative = 0;
    size_t cut = keep;
    for (size_t r = 0; r < keep; ++r) {
      cumulative += p[r];
      if (cumulative >= params_.top_p) {
        cut = r + 1;
        break;
      }
    }
    keep = cut;
  }
  if (params_.min_p > 0.0f) {
    const double threshold = params_.min_p * p[0];
    size_t cut = 1;
    while (cut < keep && p[cut] >= threshold) ++cut;
    keep = cut;
  }
  double kept_total = 0;
  for (size_t r = 0; r < keep; ++r) kept_total += p[r];
  for (size_t r = 0; r < keep; ++r) probs[order[r]] = p[r] / kept_total;
  return probs;
}

int32_t Sampler::Sample(absl::Span<const float> logits, absl::Span<const int32_t> history) {
  if (params_.temperature == 0.0f && params_.repetition_penalty == 1.0f) return Argmax(logits);
  const std::vector<double> probs = Distribution(logits, history);
  const double u = NextUniform();
  double cumulative = 0;
  int32_t last_nonzero = 0;
  for (int32_t i = 0; i < static_cast<int32_t>(probs.size()); ++i) {
    if (probs[i] <= 0) continue;
    cumulative += probs[i];
    last_nonzero = i;
    if (u < cumulative) return i;
  }
  return last_nonzero;  // rounding left u above the total
}

}  // namespace anchorserve::model
