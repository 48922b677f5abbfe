// Fuzzes the decoders of persisted and imported sessions (cache/session_snapshot.h,
// cache/session_file.h): what a restart reads back from the disk tier and what ImportSession
// accepts from a client. Both formats end in a CRC-32C, which random mutations almost never
// satisfy, so each input is decoded as given (the checksum path) and again with its checksums
// recomputed (every path behind them).
//
// Properties: decoding never crashes or reads out of bounds (ASan); whatever decodes
// re-encodes to exactly the same bytes (the encodings are canonical, so nothing a corrupt file
// says is silently dropped); a session file's header never claims bytes it does not have.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cache/durable_coding.h"
#include "cache/session_file.h"
#include "cache/session_snapshot.h"
#include "fuzz/fuzz_check.h"

namespace anchorserve::cache {
namespace {

constexpr size_t kCrcBytes = 4;
// A session file's fixed start: "ANSE", u32 version, u32 header field bytes.
constexpr size_t kFileFixedBytes = 12;

void PutU32(uint32_t v, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t GetU32(const char* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(in[i])) << (8 * i);
  return v;
}

void CheckSnapshot(absl::string_view bytes) {
  absl::StatusOr<SessionSnapshot> snapshot = DecodeSnapshot(bytes, "fuzz");
  if (!snapshot.ok()) {
    FUZZ_CHECK(absl::IsDataLoss(snapshot.status()));
    return;
  }
  FUZZ_CHECK(snapshot->ExpectedKvBytes() == static_cast<int64_t>(snapshot->kv.size()));
  FUZZ_CHECK(EncodeSnapshot(*snapshot) == bytes);
}

// As SessionStore::ReadFromDisk: the header, then exactly snapshot_bytes of snapshot.
void CheckSessionFile(absl::string_view file) {
  absl::StatusOr<SessionFileHeader> header = DecodeSessionFileHeader(file, "fuzz.session");
  if (!header.ok()) {
    FUZZ_CHECK(absl::IsDataLoss(header.status()));
    return;
  }
  FUZZ_CHECK(header->header_bytes <= file.size());
  FUZZ_CHECK(header->has_state == (header->snapshot_bytes > 0));
  const absl::string_view snapshot = file.substr(header->header_bytes);
  if (snapshot.size() != header->snapshot_bytes) return;  // the store's size check refuses it
  FUZZ_CHECK(EncodeSessionFile(*header, snapshot) == file);
  if (header->has_state) CheckSnapshot(snapshot);
}

// `bytes` with its trailing snapshot checksum made right.
std::string WithSnapshotCrc(absl::string_view bytes) {
  std::string fixed(bytes);
  if (fixed.size() < kCrcBytes) return fixed;
  const size_t body = fixed.size() - kCrcBytes;
  PutU32(Crc32c(absl::string_view(fixed).substr(0, body)), &fixed[body]);
  return fixed;
}

// `file` with the header checksum, and the checksum of the snapshot behind it, made right.
std::string WithSessionFileCrcs(absl::string_view file) {
  std::string fixed(file);
  if (fixed.size() < kFileFixedBytes) return fixed;
  const uint64_t checked = kFileFixedBytes + uint64_t{GetU32(&fixed[8])};
  if (checked + kCrcBytes > fixed.size()) return fixed;
  PutU32(Crc32c(absl::string_view(fixed).substr(0, checked)), &fixed[checked]);
  const absl::string_view rest = absl::string_view(fixed).substr(checked + kCrcBytes);
  return fixed.substr(0, checked + kCrcBytes) + WithSnapshotCrc(rest);
}

}  // namespace
}  // namespace anchorserve::cache

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace anchorserve::cache;  // NOLINT(build/namespaces): a fuzz entry point
  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  using anchorserve::fuzz::ExactCopy;
  CheckSnapshot(input);
  CheckSnapshot(ExactCopy(WithSnapshotCrc(input)).view());
  CheckSessionFile(input);
  CheckSessionFile(ExactCopy(WithSessionFileCrcs(input)).view());
  return 0;
}
