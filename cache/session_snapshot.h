// The portable, torch-free form of one sequence's kept KV state: what survives between turns
// of a session, what the host and disk tiers hold, and what export/import move between
// processes. Produced and consumed by the paged cache (cache/sequence_kv.h).
#ifndef ANCHORSERVE_CACHE_SESSION_SNAPSHOT_H_
#define ANCHORSERVE_CACHE_SESSION_SNAPSHOT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace anchorserve::cache {

// What a kept entry is: an anchor slot, a token of the current (unfinished) sentence, or a
// token of a kept-full span (kept at full attention alongside the anchors).
enum class EntryKind : uint8_t { kAnchor = 0, kSentence = 1, kKeptFull = 2 };

struct SnapshotEntry {
  int32_t token = 0;
  int64_t position = 0;  // RoPE position its key was rotated with
  EntryKind kind = EntryKind::kSentence;
  friend bool operator==(const SnapshotEntry&, const SnapshotEntry&) = default;
};

// Accounting of one sequence or session: kept vs what a full cache would hold.
struct KvAccounting {
  int64_t kept_tokens = 0;         // entries kept now
  int64_t full_tokens = 0;         // full-equivalent: every token the history contains
  int64_t anchors = 0;             // anchors so far
  int64_t peak_kept_tokens = 0;    // max kept during any step (before its REDUCTION)
  int64_t bytes_per_token = 0;     // K+V bytes of one token over all layers
  int64_t kept_bytes() const { return kept_tokens * bytes_per_token; }
  int64_t full_bytes() const { return full_tokens * bytes_per_token; }
  // C-down = 1 - kept / full-equivalent (0 when nothing was seen).
  double reduction() const {
    return full_tokens == 0 ? 0.0 : 1.0 - static_cast<double>(kept_tokens) / full_tokens;
  }
  friend bool operator==(const KvAccounting&, const KvAccounting&) = default;
};

struct SessionSnapshot {
  // Identifies the model the KV belongs to (config + weights digest); importing into a
  // process serving another model is refused.
  std::string model_fingerprint;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  std::string dtype;  // "float32" | "bfloat16"
  std::string mode;   // "anchor" | "full"
  std::string position_policy;  // "absolute" | "compact"
  int64_t next_position = 0;    // the position counter (absolute: tokens seen)
  KvAccounting accounting;
  std::vector<SnapshotEntry> entries;
  // Keys (rotated) and values of the kept entries, layer-major: for each layer, K as
  // [num_kv_heads, entries, head_dim] then V likewise, in `dtype`, little-endian.
  std::vector<uint8_t> kv;

  int64_t ExpectedKvBytes() const;
  friend bool operator==(const SessionSnapshot&, const SessionSnapshot&) = default;
};

// Durable encoding: magic "ANKV", format version, payload, CRC-32C of everything before it.
// Encode never fails. Decode returns DataLoss naming `source` for a wrong magic, an unknown
// version, a checksum mismatch, truncation or inconsistent sizes (never crashes, never reads
// out of bounds), so a corrupt persisted file is a clear error for its session only.
std::string EncodeSnapshot(const SessionSnapshot& snapshot);
absl::StatusOr<SessionSnapshot> DecodeSnapshot(absl::string_view bytes, absl::string_view source);

inline constexpr uint32_t kSnapshotFormatVersion = 1;

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_SESSION_SNAPSHOT_H_
