#include "model/ansan_mask.h"

namespace anchorserve::model {

AttentionMask BuildCausalMask(int64_t length) {
  AttentionMask mask(static_cast<size_t>(length * length), 0);
  for (int64_t i = 0; i < length; ++i) {
    for (int64_t j = 0; j <= i; ++j) mask[i * length + j] = 1;
  }
  return mask;
}

AttentionMask BuildAnsanMask(absl::Span<const int32_t> ids, const AnchorSpec& anchors) {
  const int64_t n = static_cast<int64_t>(ids.size());
  AttentionMask mask = BuildCausalMask(n);
  // Mirrors the reference loop: for each anchor a (in order), rows after a lose the
  // non-anchor tokens [start, a) of a's sentence, and row a loses every earlier anchor.
  std::vector<int64_t> seen_anchors;
  int64_t start = 0;
  for (int64_t a = 0; a < n; ++a) {
    if (!anchors.IsAnchor(ids[a])) continue;
    for (int64_t i = a + 1; i < n; ++i) {
      for (int64_t j = start; j < a; ++j) mask[i * n + j] = 0;
    }
    start = a + 1;
    for (int64_t prev : seen_anchors) mask[a * n + prev] = 0;
    seen_anchors.push_back(a);
  }
  if (anchors.pad_id >= 0) {
    for (int64_t p = 0; p < n; ++p) {
      if (ids[p] != anchors.pad_id) continue;
      for (int64_t j = 0; j < n; ++j) mask[p * n + j] = 0;
      for (int64_t i = 0; i < n; ++i) mask[i * n + p] = 0;
    }
  }
  return mask;
}

}  // namespace anchorserve::model
