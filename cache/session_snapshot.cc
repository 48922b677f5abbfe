#include "cache/session_snapshot.h"

#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/durable_coding.h"

namespace anchorserve::cache {
namespace {

// Layout (all integers little-endian; str = u32 byte length + bytes):
//   "ANKV" | u32 version | str model_fingerprint | i32 num_layers | i32 num_kv_heads |
//   i32 head_dim | str dtype | str mode | str position_policy | i64 next_position |
//   i64 kept_tokens | i64 full_tokens | i64 anchors | i64 peak_kept_tokens |
//   i64 bytes_per_token | u64 entry count | entries (i32 token, i64 position, u8 kind) |
//   u64 kv byte length | kv bytes | u32 CRC-32C of every byte before it
constexpr absl::string_view kMagic = "ANKV";
constexpr size_t kChecksumBytes = 4;
constexpr size_t kEncodedEntryBytes = 4 + 8 + 1;
// Identifiers, never payload: a bound keeps a corrupt length from allocating much.
constexpr uint32_t kMaxStringBytes = 64 * 1024;

int64_t DTypeBytes(absl::string_view dtype) {
  if (dtype == "float32") return 4;
  if (dtype == "bfloat16") return 2;
  return -1;
}

bool ValidMode(absl::string_view mode) { return mode == "anchor" || mode == "full"; }
bool ValidPolicy(absl::string_view policy) { return policy == "absolute" || policy == "compact"; }

absl::Status Corrupt(absl::string_view source, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(source, ": corrupt session snapshot: ", what));
}

}  // namespace

// -1 when the shape cannot describe any data: an unknown dtype, a negative dimension, or a
// product beyond int64 (only a corrupt snapshot gets there).
int64_t SessionSnapshot::ExpectedKvBytes() const {
  const int64_t dtype_bytes = DTypeBytes(dtype);
  if (dtype_bytes < 0 || num_layers < 0 || num_kv_heads < 0 || head_dim < 0) return -1;
  int64_t total = 2 * dtype_bytes;
  for (const int64_t factor :
       {static_cast<int64_t>(num_layers), static_cast<int64_t>(num_kv_heads),
        static_cast<int64_t>(entries.size()), static_cast<int64_t>(head_dim)}) {
    if (__builtin_mul_overflow(total, factor, &total)) return -1;
  }
  return total;
}

std::string EncodeSnapshot(const SessionSnapshot& snapshot) {
  std::string out;
  out.reserve(128 + snapshot.model_fingerprint.size() +
              snapshot.entries.size() * kEncodedEntryBytes + snapshot.kv.size());
  LittleEndianWriter w(&out);
  w.Raw(kMagic);
  w.U32(kSnapshotFormatVersion);
  w.String(snapshot.model_fingerprint);
  w.I32(snapshot.num_layers);
  w.I32(snapshot.num_kv_heads);
  w.I32(snapshot.head_dim);
  w.String(snapshot.dtype);
  w.String(snapshot.mode);
  w.String(snapshot.position_policy);
  w.I64(snapshot.next_position);
  const KvAccounting& a = snapshot.accounting;
  w.I64(a.kept_tokens);
  w.I64(a.full_tokens);
  w.I64(a.anchors);
  w.I64(a.peak_kept_tokens);
  w.I64(a.bytes_per_token);
  w.U64(snapshot.entries.size());
  for (const SnapshotEntry& e : snapshot.entries) {
    w.I32(e.token);
    w.I64(e.position);
    w.U8(static_cast<uint8_t>(e.kind));
  }
  w.U64(snapshot.kv.size());
  w.Raw(absl::string_view(reinterpret_cast<const char*>(snapshot.kv.data()), snapshot.kv.size()));
  w.U32(Crc32c(out));
  return out;
}

absl::StatusOr<SessionSnapshot> DecodeSnapshot(absl::string_view bytes, absl::string_view source) {
  if (bytes.size() < kMagic.size() + 4 + kChecksumBytes) {
    return Corrupt(source, absl::StrCat("only ", bytes.size(), " bytes (truncated)"));
  }
  if (bytes.substr(0, kMagic.size()) != kMagic) {
    return Corrupt(source, "wrong magic (not a session snapshot)");
  }
  LittleEndianReader header(bytes.substr(kMagic.size()));
  uint32_t version = 0;
  header.U32(&version);
  if (version != kSnapshotFormatVersion) {
    return Corrupt(source, absl::StrCat("unknown format version ", version, " (this build reads ",
                                        kSnapshotFormatVersion, ")"));
  }
  // The checksum first: a truncated or bit-flipped snapshot is reported as such rather than
  // as whichever field the damage happened to land in.
  const absl::string_view body = bytes.substr(0, bytes.size() - kChecksumBytes);
  uint32_t stored_crc = 0;
  LittleEndianReader(bytes.substr(body.size())).U32(&stored_crc);
  const uint32_t actual_crc = Crc32c(body);
  if (stored_crc != actual_crc) {
    return Corrupt(source, absl::StrFormat("checksum mismatch (stored %08x, computed %08x): the "
                                           "data is damaged or truncated",
                                           stored_crc, actual_crc));
  }

  LittleEndianReader r(body.substr(kMagic.size() + 4));
  SessionSnapshot s;
  KvAccounting& a = s.accounting;
  if (!r.String(kMaxStringBytes, &s.model_fingerprint) || !r.I32(&s.num_layers) ||
      !r.I32(&s.num_kv_heads) || !r.I32(&s.head_dim) || !r.String(kMaxStringBytes, &s.dtype) ||
      !r.String(kMaxStringBytes, &s.mode) || !r.String(kMaxStringBytes, &s.position_policy) ||
      !r.I64(&s.next_position) || !r.I64(&a.kept_tokens) || !r.I64(&a.full_tokens) ||
      !r.I64(&a.anchors) || !r.I64(&a.peak_kept_tokens) || !r.I64(&a.bytes_per_token)) {
    return Corrupt(source, "header fields truncated");
  }
  if (s.num_layers <= 0 || s.num_kv_heads <= 0 || s.head_dim <= 0) {
    return Corrupt(source, absl::StrCat("invalid shape: ", s.num_layers, " layers, ",
                                        s.num_kv_heads, " kv heads, head_dim ", s.head_dim));
  }
  if (DTypeBytes(s.dtype) < 0) {
    return Corrupt(source, absl::StrCat("unknown dtype \"", s.dtype, "\""));
  }
  if (!ValidMode(s.mode)) return Corrupt(source, absl::StrCat("unknown mode \"", s.mode, "\""));
  if (!ValidPolicy(s.position_policy)) {
    return Corrupt(source, absl::StrCat("unknown position policy \"", s.position_policy, "\""));
  }
  if (s.next_position < 0 || a.kept_tokens < 0 || a.full_tokens < 0 || a.anchors < 0 ||
      a.peak_kept_tokens < 0 || a.bytes_per_token < 0) {
    return Corrupt(source, "negative position counter or accounting field");
  }

  uint64_t entry_count = 0;
  if (!r.U64(&entry_count)) return Corrupt(source, "entry count truncated");
  // Bounded by the bytes present before anything is allocated.
  if (entry_count > r.remaining() / kEncodedEntryBytes) {
    return Corrupt(source, absl::StrCat(entry_count, " entries do not fit in the ", r.remaining(),
                                        " bytes left"));
  }
  s.entries.resize(static_cast<size_t>(entry_count));
  for (SnapshotEntry& e : s.entries) {
    uint8_t kind = 0;
    r.I32(&e.token);  // cannot fail: the count was checked against the bytes left
    r.I64(&e.position);
    r.U8(&kind);
    if (kind > static_cast<uint8_t>(EntryKind::kKeptFull)) {
      return Corrupt(source, absl::StrCat("entry kind ", kind, " out of range"));
    }
    if (e.token < 0 || e.position < 0) {
      return Corrupt(source, "negative token id or position in an entry");
    }
    e.kind = static_cast<EntryKind>(kind);
  }

  uint64_t kv_bytes = 0;
  absl::string_view kv;
  if (!r.U64(&kv_bytes) || !r.Raw(kv_bytes, &kv)) return Corrupt(source, "kv bytes truncated");
  const int64_t expected = s.ExpectedKvBytes();
  if (expected < 0 || static_cast<uint64_t>(expected) != kv_bytes) {
    return Corrupt(source,
                   absl::StrCat("kv holds ", kv_bytes, " bytes, the shape needs ", expected));
  }
  if (r.remaining() != 0) {
    return Corrupt(source, absl::StrCat(r.remaining(), " unexpected bytes after the kv data"));
  }
  s.kv.assign(reinterpret_cast<const uint8_t*>(kv.data()),
              reinterpret_cast<const uint8_t*>(kv.data()) + kv.size());
  return s;
}

}  // namespace anchorserve::cache
