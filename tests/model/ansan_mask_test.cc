#include "model/ansan_mask.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace anchorserve::model {
namespace {

constexpr int32_t kAnchor = 5;
constexpr int32_t kPad = 0;

AnchorSpec Spec() { return CustomAnchors({kAnchor}, kPad); }

std::vector<std::string> Render(const AttentionMask& m, size_t n) {
  std::vector<std::string> rows;
  for (size_t i = 0; i < n; ++i) {
    std::string row;
    for (size_t j = 0; j < n; ++j) row += m[i * n + j] ? '.' : 'x';
    rows.push_back(row);
  }
  return rows;
}

// anllm-reference.md §2.5: tokens <s> a b A c d A e f P P.
TEST(AnsanMaskTest, ReproducesReferenceTable) {
  const std::vector<int32_t> ids = {1, 10, 11, kAnchor, 12, 13, kAnchor, 14, 15, kPad, kPad};
  const std::vector<std::string> expected = {
      ".xxxxxxxxxx",  // <s>
      "..xxxxxxxxx",  // a
      "...xxxxxxxx",  // b
      "....xxxxxxx",  // A
      "xxx..xxxxxx",  // c
      "xxx...xxxxx",  // d
      "xxxx...xxxx",  // A: own sentence only, not the earlier anchor
      "xxx.xx..xxx",  // e
      "xxx.xx...xx",  // f
      "xxxxxxxxxxx",  // P
      "xxxxxxxxxxx",  // P
  };
  EXPECT_EQ(Render(BuildAnsanMask(ids, Spec()), ids.size()), expected);
}

TEST(AnsanMaskTest, NoAnchorsIsCausal) {
  const std::vector<int32_t> ids = {1, 10, 11, 12, 13};
  EXPECT_EQ(BuildAnsanMask(ids, Spec()), BuildCausalMask(5));
}

TEST(AnsanMaskTest, PadsAreMaskedEvenWithoutAnchors) {
  const std::vector<int32_t> ids = {1, 10, kPad, 12};
  const std::vector<std::string> expected = {".xxx", "..xx", "xxxx", "..x."};
  EXPECT_EQ(Render(BuildAnsanMask(ids, Spec()), 4), expected);
}

TEST(AnsanMaskTest, ConsecutiveAnchorsSeeOnlyThemselves) {
  const std::vector<int32_t> ids = {10, kAnchor, kAnchor, 11};
  const std::vector<std::string> expected = {".xxx", "..xx", "xx.x", "x..."};
  EXPECT_EQ(Render(BuildAnsanMask(ids, Spec()), 4), expected);
}

TEST(AnsanMaskTest, EmptyAnchorSetIsCausalWithoutPadMasking) {
  const std::vector<int32_t> ids = {1, 0, 2};
  EXPECT_EQ(BuildAnsanMask(ids, CustomAnchors({}, -1)), BuildCausalMask(3));
}

// Brute-force restatement of Eq. 4 over random sequences: the loop in BuildAnsanMask must
// agree with "non-anchor: earlier anchors + own sentence; anchor: own sentence".
TEST(AnsanMaskTest, MatchesSentenceDefinitionOnRandomSequences) {
  uint64_t state = 42;
  auto next = [&] {
    return (state = state * 6364136223846793005ULL + 1442695040888963407ULL) >> 33;
  };
  for (int round = 0; round < 200; ++round) {
    const size_t n = 1 + next() % 40;
    std::vector<int32_t> ids(n);
    for (auto& id : ids) id = static_cast<int32_t>(1 + next() % 8);  // 5 is the anchor
    const AttentionMask m = BuildAnsanMask(ids, CustomAnchors({kAnchor}, -1));
    std::vector<int> sentence(n);  // sentence index of each token; an anchor ends its sentence
    int current = 0;
    for (size_t i = 0; i < n; ++i) {
      sentence[i] = current;
      if (ids[i] == kAnchor) ++current;
    }
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        bool want = false;
        if (j <= i) {
          const bool same = sentence[i] == sentence[j];
          want = ids[i] == kAnchor ? same : (same || ids[j] == kAnchor);
        }
        ASSERT_EQ(m[i * n + j], want ? 1 : 0) << "round " << round << " i=" << i << " j=" << j;
      }
    }
  }
}

}  // namespace
}  // namespace anchorserve::model
