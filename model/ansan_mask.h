// AnSAN attention masks (paper Eq. 4; the `_new` variant the released models were trained
// with, anllm-reference.md §2.2).
#ifndef ANCHORSERVE_MODEL_ANSAN_MASK_H_
#define ANCHORSERVE_MODEL_ANSAN_MASK_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "model/anchors.h"

namespace anchorserve::model {

// Row-major L x L: allowed[i * L + j] == 1 when query i may attend key j.
using AttentionMask = std::vector<uint8_t>;

// Causal mask: j <= i.
AttentionMask BuildCausalMask(int64_t length);

// The AnSAN mask over `ids`, exactly as the authors' training forward builds it:
//  - non-anchor token i of sentence k: all earlier anchors + its own sentence up to i;
//  - anchor a_k: its own sentence (a_{k-1}, a_k] only, no earlier anchor;
//  - tokens with id == anchors.pad_id: row and column fully blocked (also without anchors);
//  - no anchors: plain causal (plus pad blocking).
// A fully blocked pad row is left all-zero; the forward turns it into uniform attention like
// HF's clamped additive mask does.
AttentionMask BuildAnsanMask(absl::Span<const int32_t> ids, const AnchorSpec& anchors);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_ANSAN_MASK_H_
