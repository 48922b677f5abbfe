// Shared by the fuzz targets: property checks and the fixture directory.
#ifndef ANCHORSERVE_FUZZ_FUZZ_CHECK_H_
#define ANCHORSERVE_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"

// A property of the code under test that failed. Aborting makes libFuzzer report a crash and
// keep the input, so a broken contract is found like a memory error.
#define FUZZ_CHECK(condition)                                                                 \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)

namespace anchorserve::fuzz {

// fuzz/data: the default model's tokenizer.model, config.json and anchor_config.json.
inline std::string DataDir() {
  const char* dir = std::getenv("ANCHORSERVE_FUZZ_DATA_DIR");
  return dir != nullptr ? dir : ANCHORSERVE_FUZZ_DATA_DIR;
}

// A copy of some bytes in a heap block of exactly their size, so that ASan reports a read one
// past the end (the spare capacity of a std::string would hide it).
class ExactCopy {
 public:
  explicit ExactCopy(absl::string_view bytes) : size_(bytes.size()), data_(new char[size_]) {
    if (size_ > 0) std::memcpy(data_.get(), bytes.data(), size_);
  }
  absl::string_view view() const { return absl::string_view(data_.get(), size_); }

 private:
  size_t size_;
  std::unique_ptr<char[]> data_;
};

// Every byte sequence of `text` is well-formed UTF-8 (no overlong forms, surrogates or values
// past U+10FFFF): what the tokenizer promises for decoded text.
inline bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    int trail = 0;
    unsigned char low = 0x80, high = 0xBF;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if (lead >= 0xC2 && lead <= 0xDF) {
      trail = 1;
    } else if (lead == 0xE0) {
      trail = 2, low = 0xA0;
    } else if (lead == 0xED) {
      trail = 2, high = 0x9F;
    } else if (lead >= 0xE1 && lead <= 0xEF) {
      trail = 2;
    } else if (lead == 0xF0) {
      trail = 3, low = 0x90;
    } else if (lead >= 0xF1 && lead <= 0xF3) {
      trail = 3;
    } else if (lead == 0xF4) {
      trail = 3, high = 0x8F;
    } else {
      return false;
    }
    if (i + static_cast<size_t>(trail) >= text.size()) return false;  // truncated
    for (int k = 1; k <= trail; ++k) {
      const auto byte = static_cast<unsigned char>(text[i + k]);
      if (byte < (k == 1 ? low : 0x80) || byte > (k == 1 ? high : 0xBF)) return false;
    }
    i += trail + 1;
  }
  return true;
}

}  // namespace anchorserve::fuzz

#endif  // ANCHORSERVE_FUZZ_FUZZ_CHECK_H_
