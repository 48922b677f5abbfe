// The durable form of one persisted session (SessionStore's disk tier): a small checksummed
// header that says whose session it is, then the session's EncodeSnapshot bytes. Torch-free and
// pure, so the store, its tests and the fuzzer (fuzz/session_decoder_fuzzer.cc) share one
// decoder.
//
// Layout (little-endian; str = u32 length + bytes):
//   "ANSE" | u32 version | u32 header field bytes |
//   str tenant | str session id | str model fingerprint | i64 created (unix us) |
//   i64 last used (unix us) | i64 turns | i64 x5 accounting | u8 has state |
//   u64 snapshot bytes |
//   u32 CRC-32C of everything above |
//   the EncodeSnapshot bytes (self-checksummed; absent when the session has no state)
// The header is checksummed on its own so that a restart can index sessions by reading only
// each file's header; the snapshot is read and verified when the session is restored.
#ifndef ANCHORSERVE_CACHE_SESSION_FILE_H_
#define ANCHORSERVE_CACHE_SESSION_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cache/session_snapshot.h"

namespace anchorserve::cache {

// Tenant and session id each; longer ones are refused before a file is written.
inline constexpr uint32_t kMaxSessionIdBytes = 1024;
inline constexpr uint32_t kMaxFingerprintBytes = 4096;
// A prefix of this many bytes holds the header of any session file.
inline constexpr size_t kMaxSessionFileHeaderBytes = size_t{16} * 1024;

struct SessionFileHeader {
  std::string tenant;
  std::string session_id;
  std::string model_fingerprint;
  int64_t created_us = 0;
  int64_t last_used_us = 0;
  int64_t turns = 0;
  KvAccounting accounting;
  bool has_state = false;
  uint64_t snapshot_bytes = 0;
  size_t header_bytes = 0;  // everything before the snapshot, checksum included (decode only)
};

// The whole file: `header`, then `encoded_snapshot` (EncodeSnapshot bytes; empty exactly when
// `header.has_state` is false). snapshot_bytes is taken from `encoded_snapshot`, header_bytes
// is ignored. Never fails.
std::string EncodeSessionFile(const SessionFileHeader& header, absl::string_view encoded_snapshot);

// Parses and verifies the header from `prefix`, a prefix of a session file (the whole file
// will do). Does not look at the snapshot bytes: the caller checks that the file holds exactly
// header_bytes + snapshot_bytes and decodes the rest with DecodeSnapshot. DataLoss naming
// `source` for a wrong magic, an unknown version, truncation, a checksum mismatch or
// inconsistent fields; never reads outside `prefix`.
absl::StatusOr<SessionFileHeader> DecodeSessionFileHeader(absl::string_view prefix,
                                                          absl::string_view source);

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_SESSION_FILE_H_
