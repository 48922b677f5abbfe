// Building blocks of the cache's durable encodings (session snapshots, session files): explicit
// little-endian integers, length-prefixed strings, a bounds-checked reader and CRC-32C.
// Internal to cache/; nothing here knows what a snapshot is.
#ifndef ANCHORSERVE_CACHE_DURABLE_CODING_H_
#define ANCHORSERVE_CACHE_DURABLE_CODING_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace anchorserve::cache {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as in iSCSI, ext4 and LevelDB's
// crc32c::Value: Crc32c("123456789") == 0xE3069283. `Crc32cExtend(Crc32c(a), b)` equals
// Crc32c(a + b).
uint32_t Crc32cExtend(uint32_t crc, absl::string_view data);
inline uint32_t Crc32c(absl::string_view data) { return Crc32cExtend(0, data); }

// Appends little-endian encodings to a string it does not own. Never fails.
class LittleEndianWriter {
 public:
  explicit LittleEndianWriter(std::string* out) : out_(out) {}

  void U8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void U32(uint32_t v) { Fixed(v, 4); }
  void U64(uint64_t v) { Fixed(v, 8); }
  void I32(int32_t v) { U32(static_cast<uint32_t>(v)); }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void Raw(absl::string_view bytes) { out_->append(bytes.data(), bytes.size()); }
  // u32 byte length, then the bytes. Strings here are identifiers, far below 4 GiB.
  void String(absl::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    Raw(s);
  }

 private:
  void Fixed(uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out_->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }

  std::string* out_;
};

// Reads what LittleEndianWriter wrote from a view it does not own. Every method returns false
// (and consumes nothing) when the input is too short, so a caller that checks each result
// never reads out of bounds.
class LittleEndianReader {
 public:
  explicit LittleEndianReader(absl::string_view data) : data_(data) {}

  size_t remaining() const { return data_.size(); }

  bool U8(uint8_t* v) {
    uint64_t x;
    if (!Fixed(1, &x)) return false;
    *v = static_cast<uint8_t>(x);
    return true;
  }
  bool U32(uint32_t* v) {
    uint64_t x;
    if (!Fixed(4, &x)) return false;
    *v = static_cast<uint32_t>(x);
    return true;
  }
  bool U64(uint64_t* v) { return Fixed(8, v); }
  bool I32(int32_t* v) {
    uint32_t x;
    if (!U32(&x)) return false;
    *v = static_cast<int32_t>(x);
    return true;
  }
  bool I64(int64_t* v) {
    uint64_t x;
    if (!U64(&x)) return false;
    *v = static_cast<int64_t>(x);
    return true;
  }
  // The next `n` bytes, as a view into the input.
  bool Raw(uint64_t n, absl::string_view* bytes) {
    if (n > data_.size()) return false;
    *bytes = data_.substr(0, static_cast<size_t>(n));
    data_.remove_prefix(static_cast<size_t>(n));
    return true;
  }
  // A u32-length-prefixed string of at most `max_bytes` bytes.
  bool String(uint32_t max_bytes, std::string* s) {
    absl::string_view saved = data_;
    uint32_t n;
    absl::string_view bytes;
    if (!U32(&n) || n > max_bytes || !Raw(n, &bytes)) {
      data_ = saved;
      return false;
    }
    s->assign(bytes.data(), bytes.size());
    return true;
  }

 private:
  bool Fixed(int bytes, uint64_t* v) {
    if (data_.size() < static_cast<size_t>(bytes)) return false;
    uint64_t x = 0;
    for (int i = 0; i < bytes; ++i) {
      x |= static_cast<uint64_t>(static_cast<uint8_t>(data_[i])) << (8 * i);
    }
    data_.remove_prefix(static_cast<size_t>(bytes));
    *v = x;
    return true;
  }

  absl::string_view data_;
};

}  // namespace anchorserve::cache

#endif  // ANCHORSERVE_CACHE_DURABLE_CODING_H_
