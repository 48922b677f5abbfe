#include "cache/session_file.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cache/durable_coding.h"

namespace anchorserve::cache {
namespace {

constexpr absl::string_view kEnvelopeMagic = "ANSE";
constexpr uint32_t kEnvelopeVersion = 1;
// Far above any real snapshot; keeps a corrupt header from declaring an absurd size.
constexpr uint64_t kMaxSnapshotBytes = uint64_t{1} << 40;

}  // namespace

std::string EncodeSessionFile(const SessionFileHeader& h, absl::string_view encoded_snapshot) {
  std::string fields;
  LittleEndianWriter f(&fields);
  f.String(h.tenant);
  f.String(h.session_id);
  f.String(h.model_fingerprint);
  f.I64(h.created_us);
  f.I64(h.last_used_us);
  f.I64(h.turns);
  f.I64(h.accounting.kept_tokens);
  f.I64(h.accounting.full_tokens);
  f.I64(h.accounting.anchors);
  f.I64(h.accounting.peak_kept_tokens);
  f.I64(h.accounting.bytes_per_token);
  f.U8(h.has_state ? 1 : 0);
  f.U64(encoded_snapshot.size());

  std::string out;
  out.reserve(16 + fields.size() + encoded_snapshot.size());
  LittleEndianWriter w(&out);
  w.Raw(kEnvelopeMagic);
  w.U32(kEnvelopeVersion);
  w.U32(static_cast<uint32_t>(fields.size()));
  w.Raw(fields);
  w.U32(Crc32c(out));
  w.Raw(encoded_snapshot);
  return out;
}

absl::StatusOr<SessionFileHeader> DecodeSessionFileHeader(absl::string_view prefix,
                                                          absl::string_view source) {
  auto corrupt = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat(source, ": corrupt session file: ", what));
  };
  LittleEndianReader r(prefix);
  absl::string_view magic;
  uint32_t version = 0;
  uint32_t field_bytes = 0;
  if (!r.Raw(kEnvelopeMagic.size(), &magic) || !r.U32(&version) || !r.U32(&field_bytes)) {
    return corrupt("truncated header");
  }
  if (magic != kEnvelopeMagic) return corrupt("wrong magic (not a session file)");
  if (version != kEnvelopeVersion) {
    return corrupt(absl::StrCat("unknown format version ", version, " (this build reads ",
                                kEnvelopeVersion, ")"));
  }
  absl::string_view fields;
  uint32_t stored_crc = 0;
  if (field_bytes > kMaxSessionFileHeaderBytes || !r.Raw(field_bytes, &fields) ||
      !r.U32(&stored_crc)) {
    return corrupt("truncated header");
  }
  const size_t checked = kEnvelopeMagic.size() + 8 + field_bytes;
  if (Crc32c(prefix.substr(0, checked)) != stored_crc) {
    return corrupt("header checksum mismatch");
  }
  SessionFileHeader h;
  LittleEndianReader f(fields);
  uint8_t has_state = 0;
  if (!f.String(kMaxSessionIdBytes, &h.tenant) || !f.String(kMaxSessionIdBytes, &h.session_id) ||
      !f.String(kMaxFingerprintBytes, &h.model_fingerprint) || !f.I64(&h.created_us) ||
      !f.I64(&h.last_used_us) || !f.I64(&h.turns) || !f.I64(&h.accounting.kept_tokens) ||
      !f.I64(&h.accounting.full_tokens) || !f.I64(&h.accounting.anchors) ||
      !f.I64(&h.accounting.peak_kept_tokens) || !f.I64(&h.accounting.bytes_per_token) ||
      !f.U8(&has_state) || !f.U64(&h.snapshot_bytes) || f.remaining() != 0) {
    return corrupt("malformed header fields");
  }
  if (h.session_id.empty() || has_state > 1 || h.turns < 0 ||
      h.snapshot_bytes > kMaxSnapshotBytes || (has_state == 0) != (h.snapshot_bytes == 0)) {
    return corrupt("inconsistent header fields");
  }
  h.has_state = has_state == 1;
  h.header_bytes = checked + 4;
  return h;
}

}  // namespace anchorserve::cache
