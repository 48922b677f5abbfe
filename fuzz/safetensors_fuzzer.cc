// Fuzzes the safetensors header parser (model/safetensors.h, ParseSafetensorsLayout: what
// SafetensorsFile::Open runs on every weights file). Each input is parsed twice: as a whole
// file, and as the JSON header of a file whose length prefix and 256-byte data section are made
// up here, so mutations of the JSON are not wasted on a length prefix that no longer matches.
//
// Properties: parsing never crashes (ASan, UBSan); a layout that parses keeps the promise
// Open's readers rely on: every tensor lies inside the file with exactly numel * dtype size
// bytes, and non-empty tensors do not overlap. The fuzzer reads every such byte, inside a
// buffer of exactly the file's size, so a wrong bound is an ASan report.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "fuzz/fuzz_check.h"
#include "model/safetensors.h"

namespace anchorserve::model {
namespace {

constexpr size_t kMadeUpDataBytes = 256;

void Check(absl::string_view file) {
  absl::StatusOr<SafetensorsLayout> layout = ParseSafetensorsLayout(file, "fuzz.safetensors");
  if (!layout.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(layout.status()) || absl::IsDataLoss(layout.status()));
    return;
  }
  FUZZ_CHECK(layout->data_start >= 8 && layout->data_start <= file.size());
  const size_t data_size = file.size() - layout->data_start;
  std::vector<std::pair<size_t, size_t>> ranges;
  uint8_t sum = 0;
  for (const auto& [name, entry] : layout->entries) {
    uint64_t numel = 1;
    for (int64_t dim : entry.shape) {
      FUZZ_CHECK(dim >= 0);
      FUZZ_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel));
    }
    uint64_t nbytes = 0;
    FUZZ_CHECK(!__builtin_mul_overflow(numel, DTypeSize(entry.dtype), &nbytes));
    FUZZ_CHECK(nbytes == entry.nbytes);
    FUZZ_CHECK(entry.begin <= data_size && entry.nbytes <= data_size - entry.begin);
    const char* bytes = file.data() + layout->data_start + entry.begin;
    for (size_t i = 0; i < entry.nbytes; ++i) sum += static_cast<uint8_t>(bytes[i]);
    if (entry.nbytes > 0) ranges.emplace_back(entry.begin, entry.begin + entry.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) FUZZ_CHECK(ranges[i].first >= ranges[i - 1].second);
  // Keep the reads from being optimised away.
  volatile uint8_t sink = sum;
  (void)sink;
}

}  // namespace
}  // namespace anchorserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The input as a whole file; libFuzzer's buffer ends exactly where the input does.
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  anchorserve::model::Check(input);

  // The input as the header: length prefix, header, made-up data section.
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((uint64_t{size} >> (8 * i)) & 0xff);
  file.append(input.data(), input.size());
  for (size_t i = 0; i < anchorserve::model::kMadeUpDataBytes; ++i) {
    file.push_back(static_cast<char>(i));
  }
  anchorserve::model::Check(anchorserve::fuzz::ExactCopy(file).view());
  return 0;
}
