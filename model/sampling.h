// Next-token selection from logits: greedy, temperature, top-k, top-p, min-p, repetition
// penalty, seeded and reproducible.
#ifndef ANCHORSERVE_MODEL_SAMPLING_H_
#define ANCHORSERVE_MODEL_SAMPLING_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace anchorserve::model {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax; ties -> lowest id)
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // (0, 1]; 1 = off
  float min_p = 0.0f;               // [0, 1); 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off (HF/CTRL rule over prompt + output ids)
  uint64_t seed = 0;
};

// OK, or InvalidArgument naming the offending field ("temperature", "top_p", ...).
absl::Status ValidateSamplingParams(const SamplingParams& params);

// Applies the processors in HF transformers' order: repetition penalty, temperature, top-k,
// top-p, min-p; then samples. The same params, seed and inputs give the same tokens on every
// platform (own RNG, no std:: distributions). Not thread-safe; one per sequence.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // `logits` has one entry per vocabulary id; `history` holds the ids the repetition
  // penalty applies to. Precondition: ValidateSamplingParams(params) is OK, logits non-empty.
  int32_t Sample(absl::Span<const float> logits, absl::Span<const int32_t> history);

  // The probability distribution Sample draws from (after all processors), for tests.
  std::vector<double> Distribution(absl::Span<const float> logits,
                                   absl::Span<const int32_t> history) const;

 private:
  double NextUniform();  // [0, 1)

  SamplingParams params_;
  uint64_t state_;
};

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_SAMPLING_H_
