// Helpers shared by the model tests.
#ifndef ANCHORSERVE_TESTS_MODEL_TEST_UTIL_H_
#define ANCHORSERVE_TESTS_MODEL_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace anchorserve::testing {

inline std::string TestData(const std::string& name) {
  return std::string(ANCHORSERVE_TEST_DATA_DIR) + "/" + name;
}

inline nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return nlohmann::json::parse(buffer.str());
}

// Row `row` of a row-major [rows, vocab] buffer.
inline std::vector<float> Row(const std::vector<float>& all, int64_t vocab, int64_t row) {
  return std::vector<float>(all.begin() + row * vocab, all.begin() + (row + 1) * vocab);
}

inline double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(d <= worst)) worst = d;  // NaN propagates as a failure
  }
  return worst;
}

inline std::vector<int32_t> Positions(size_t n) {
  std::vector<int32_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  return p;
}

}  // namespace anchorserve::testing

#endif  // ANCHORSERVE_TESTS_MODEL_TEST_UTIL_H_
