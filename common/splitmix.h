// splitmix64 (Steele, Lea, Flood 2014): tiny, well distributed and fully specified, so seeded
// streams are identical on every machine and library version.
#ifndef ANCHORSERVE_COMMON_SPLITMIX_H_
#define ANCHORSERVE_COMMON_SPLITMIX_H_

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace anchorserve::common {

class SplitMix {
 public:
  explicit SplitMix(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  size_t Below(size_t n) { return static_cast<size_t>(Next() % n); }
  double Normal() {  // Box-Muller; deterministic everywhere
    const double u1 = 1.0 - Uniform();
    const double u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

 private:
  uint64_t state_;
};

}  // namespace anchorserve::common

#endif  // ANCHORSERVE_COMMON_SPLITMIX_H_
