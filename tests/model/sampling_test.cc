#include "model/sampling.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace anchorserve::model {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f};

std::vector<double> Softmax(const std::vector<float>& v, double temperature) {
  std::vector<double> p(v.size());
  double total = 0;
  for (size_t i = 0; i < v.size(); ++i) total += (p[i] = std::exp(v[i] / temperature));
  for (double& x : p) x /= total;
  return p;
}

TEST(SamplingTest, GreedyTakesArgmaxAndLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p);
  EXPECT_EQ(s.Sample(kLogits, {}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{2, 5, 5, 1}, {}), 1);
}

TEST(SamplingTest, TopKOneIsGreedy) {
  SamplingParams p;
  p.top_k = 1;
  p.seed = 7;
  Sampler s(p);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.Sample(kLogits, {}), 1);
}

TEST(SamplingTest, SameSeedSameTokensDifferentSeedDiffers) {
  SamplingParams p;
  p.seed = 123;
  Sampler a(p), b(p);
  p.seed = 124;
  Sampler c(p);
  std::vector<int32_t> sa, sb, sc;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.Sample(kLogits, {}));
    sb.push_back(b.Sample(kLogits, {}));
    sc.push_back(c.Sample(kLogits, {}));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
}

TEST(SamplingTest, FrequenciesFollowTheTemperedSoftmax) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.seed = 99;
  Sampler s(p);
  const int n = 200000;
  std::vector<int> counts(kLogits.size());
  for (int i = 0; i < n; ++i) ++counts[s.Sample(kLogits, {})];
  const std::vector<double> want = Softmax(kLogits, 1.5);
  for (size_t i = 0; i < want.size(); ++i) {
    // 5 standard deviations of a binomial proportion.
    const double sd = std::sqrt(want[i] * (1 - want[i]) / n);
    EXPECT_NEAR(counts[i] / static_cast<double>(n), want[i], 5 * sd + 1e-4) << "id " << i;
  }
}

TEST(SamplingTest, TopPKeepsSmallestPrefixReachingMass) {
  SamplingParams p;
  p.top_p = 0.5f;
  const std::vector<double> soft = Softmax(kLogits, 1.0);
  // Sorted: id1 (3.0), id4 (2.9), id2 (2.0) ...; id1 alone is below 0.5, id1 + id4 above.
  ASSERT_LT(soft[1], 0.5);
  ASSERT_GE(soft[1] + soft[4], 0.5);
  const std::vector<double> d = Sampler(p).Distribution(kLogits, {});
  EXPECT_NEAR(d[1], soft[1] / (soft[1] + soft[4]), 1e-12);
  EXPECT_NEAR(d[4], soft[4] / (soft[1] + soft[4]), 1e-12);
  for (int id : {0, 2, 3, 5}) EXPECT_EQ(d[id], 0.0);
}

TEST(SamplingTest, MinPDropsTokensBelowFractionOfTop) {
  SamplingParams p;
  p.min_p = 0.3f;
  const std::vector<double> soft = Softmax(kLogits, 1.0);
  const std::vector<double> d = Sampler(p).Distribution(kLogits, {});
  for (size_t i = 0; i < soft.size(); ++i) {
    EXPECT_EQ(d[i] > 0, soft[i] >= 0.3 * soft[1]) << "id " << i;
  }
}

TEST(SamplingTest, TopKLimitsCandidates) {
  SamplingParams p;
  p.top_k = 3;
  const std::vector<double> d = Sampler(p).Distribution(kLogits, {});
  int nonzero = 0;
  for (double x : d) nonzero += x > 0;
  EXPECT_EQ(nonzero, 3);
  EXPECT_GT(d[1], 0);
  EXPECT_GT(d[4], 0);
  EXPECT_GT(d[2], 0);
}

TEST(SamplingTest, RepetitionPenaltyFollowsHfRule) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  // id1: 3.0 -> 1.5, so id4 (2.9) wins; negative logits are multiplied.
  EXPECT_EQ(s.Sample(kLogits, std::vector<int32_t>{1, 1, 1}), 4);
  const std::vector<float> negative = {-1.0f, -1.5f};
  EXPECT_EQ(s.Sample(negative, std::vector<int32_t>{0}), 1);  // -1 -> -2 < -1.5
}

TEST(SamplingTest, ValidationNamesTheField) {
  auto bad = [](auto mutate) {
    SamplingParams p;
    mutate(p);
    return std::string(ValidateSamplingParams(p).message());
  };
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
  EXPECT_NE(bad([](SamplingParams& p) { p.temperature = -1; }).find("temperature"),
            std::string::npos);
  EXPECT_NE(bad([](SamplingParams& p) { p.temperature = NAN; }).find("temperature"),
            std::string::npos);
  EXPECT_NE(bad([](SamplingParams& p) { p.top_k = -2; }).find("top_k"), std::string::npos);
  EXPECT_NE(bad([](SamplingParams& p) { p.top_p = 0; }).find("top_p"), std::string::npos);
  EXPECT_NE(bad([](SamplingParams& p) { p.top_p = 1.5; }).find("top_p"), std::string::npos);
  EXPECT_NE(bad([](SamplingParams& p) { p.min_p = 1; }).find("min_p"), std::string::npos);
  EXPECT_NE(bad([](SamplingParams& p) { p.repetition_penalty = 0; }).find("repetition_penalty"),
            std::string::npos);
}

}  // namespace
}  // namespace anchorserve::model
