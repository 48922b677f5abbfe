#include "cache/session_snapshot.h"

#include <cstdint>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "cache/durable_coding.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/session_test_util.h"

namespace anchorserve::cache {
namespace {

using ::anchorserve::cache::testing::RandomSnapshot;
using ::testing::HasSubstr;

// Recomputes the trailing checksum so that a deliberately malformed body reaches the field
// validation instead of stopping at the checksum.
std::string Reseal(std::string bytes) {
  bytes.resize(bytes.size() - 4);
  const uint32_t crc = Crc32c(bytes);
  LittleEndianWriter(&bytes).U32(crc);
  return bytes;
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);    // RFC 3720 B.4
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);  // RFC 3720 B.4
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);  // RFC 3720 B.4
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  std::mt19937_64 rng(7);
  std::string data(1000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t split = 0; split <= data.size(); split += 37) {
    const absl::string_view all(data);
    EXPECT_EQ(Crc32cExtend(Crc32c(all.substr(0, split)), all.substr(split)), Crc32c(all));
  }
}

TEST(LittleEndianTest, ExplicitByteOrder) {
  std::string out;
  LittleEndianWriter w(&out);
  w.U32(0x01020304u);
  w.I64(-2);
  w.String("ab");
  ASSERT_EQ(out.size(), 4u + 8u + 4u + 2u);
  EXPECT_EQ(out.substr(0, 4), std::string("\x04\x03\x02\x01", 4));
  EXPECT_EQ(out.substr(4, 8), std::string("\xfe\xff\xff\xff\xff\xff\xff\xff", 8));
  EXPECT_EQ(out.substr(12), std::string("\x02\0\0\0ab", 6));

  LittleEndianReader r(out);
  uint32_t u = 0;
  int64_t i = 0;
  std::string s;
  ASSERT_TRUE(r.U32(&u) && r.I64(&i) && r.String(10, &s));
  EXPECT_EQ(u, 0x01020304u);
  EXPECT_EQ(i, -2);
  EXPECT_EQ(s, "ab");
  EXPECT_FALSE(r.U8(nullptr));  // nothing left: fails before touching the output
}

TEST(LittleEndianTest, StringLongerThanItsLimitConsumesNothing) {
  std::string out;
  LittleEndianWriter(&out).String("abcdef");
  LittleEndianReader r(out);
  std::string s;
  EXPECT_FALSE(r.String(5, &s));
  EXPECT_EQ(r.remaining(), out.size());
}

TEST(SessionSnapshotTest, ExpectedKvBytes) {
  SessionSnapshot s;
  s.num_layers = 3;
  s.num_kv_heads = 2;
  s.head_dim = 8;
  s.entries.resize(5);
  s.dtype = "float32";
  EXPECT_EQ(s.ExpectedKvBytes(), 2 * 3 * 2 * 5 * 8 * 4);
  s.dtype = "bfloat16";
  EXPECT_EQ(s.ExpectedKvBytes(), 2 * 3 * 2 * 5 * 8 * 2);
  s.dtype = "float16";
  EXPECT_EQ(s.ExpectedKvBytes(), -1);
  s.dtype = "float32";
  s.num_layers = -1;
  EXPECT_EQ(s.ExpectedKvBytes(), -1);
  s.num_layers = 1 << 30;
  s.num_kv_heads = 1 << 30;
  s.head_dim = 1 << 30;
  EXPECT_EQ(s.ExpectedKvBytes(), -1);  // overflow, not a wrapped product
}

TEST(SessionSnapshotTest, RandomRoundTripsAreBitExact) {
  std::mt19937_64 rng(20240611);
  for (int i = 0; i < 300; ++i) {
    const int entries = static_cast<int>(rng() % 40);
    const SessionSnapshot s = RandomSnapshot(
        rng, entries, rng() % 2 ? "float32" : "bfloat16", 1 + static_cast<int32_t>(rng() % 4),
        1 + static_cast<int32_t>(rng() % 4), 1 + static_cast<int32_t>(rng() % 16));
    const std::string bytes = EncodeSnapshot(s);
    absl::StatusOr<SessionSnapshot> decoded = DecodeSnapshot(bytes, "round trip");
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, s);
    EXPECT_EQ(EncodeSnapshot(*decoded), bytes);
  }
}

TEST(SessionSnapshotTest, LayoutStartsWithMagicAndVersion) {
  std::mt19937_64 rng(1);
  const std::string bytes = EncodeSnapshot(RandomSnapshot(rng, 3));
  EXPECT_EQ(bytes.substr(0, 8), std::string("ANKV\x01\0\0\0", 8));
  // The checksum covers everything before it, little-endian.
  LittleEndianReader r(absl::string_view(bytes).substr(bytes.size() - 4));
  uint32_t crc = 0;
  ASSERT_TRUE(r.U32(&crc));
  EXPECT_EQ(crc, Crc32c(absl::string_view(bytes).substr(0, bytes.size() - 4)));
}

TEST(SessionSnapshotTest, EveryTruncationIsDataLoss) {
  std::mt19937_64 rng(2);
  const std::string bytes = EncodeSnapshot(RandomSnapshot(rng, 6));
  for (size_t n = 0; n < bytes.size(); ++n) {
    const absl::Status status = DecodeSnapshot(bytes.substr(0, n), "cut.ankv").status();
    EXPECT_TRUE(absl::IsDataLoss(status)) << n << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr("cut.ankv"));
  }
}

TEST(SessionSnapshotTest, EverySingleByteFlipIsDataLoss) {
  std::mt19937_64 rng(3);
  const std::string bytes = EncodeSnapshot(RandomSnapshot(rng, 4));
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int trial = 0; trial < 4; ++trial) {
      std::string damaged = bytes;
      damaged[i] = static_cast<char>(damaged[i] ^ static_cast<char>(1 + rng() % 255));
      const absl::Status status = DecodeSnapshot(damaged, "flip").status();
      EXPECT_TRUE(absl::IsDataLoss(status)) << "byte " << i << ": " << status;
    }
  }
}

TEST(SessionSnapshotTest, RandomDamageBehindAValidChecksumNeverCrashes) {
  // With the checksum recomputed, damage reaches the field parser: it must either reject the
  // bytes or accept exactly a snapshot that encodes back to them.
  std::mt19937_64 rng(4);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string bytes = EncodeSnapshot(RandomSnapshot(rng, static_cast<int>(rng() % 5)));
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = 8 + rng() % (bytes.size() - 12);  // past magic+version, before the crc
      bytes[at] = static_cast<char>(rng());
    }
    bytes = Reseal(bytes);
    absl::StatusOr<SessionSnapshot> decoded = DecodeSnapshot(bytes, "fuzz");
    if (decoded.ok()) {
      ++accepted;
      EXPECT_EQ(EncodeSnapshot(*decoded), bytes);
    } else {
      EXPECT_TRUE(absl::IsDataLoss(decoded.status())) << decoded.status();
    }
  }
  EXPECT_GT(accepted, 0);  // e.g. a flipped token id or kv byte is still a valid snapshot
}

TEST(SessionSnapshotTest, RejectsInconsistentFields) {
  std::mt19937_64 rng(5);
  const SessionSnapshot good = RandomSnapshot(rng, 3);

  SessionSnapshot s = good;
  s.kv.pop_back();
  EXPECT_THAT(DecodeSnapshot(EncodeSnapshot(s), "x").status().message(), HasSubstr("kv holds"));

  s = good;
  s.entries[1].kind = static_cast<EntryKind>(3);
  EXPECT_THAT(DecodeSnapshot(EncodeSnapshot(s), "x").status().message(), HasSubstr("entry kind 3"));

  s = good;
  s.dtype = "float16";
  EXPECT_THAT(DecodeSnapshot(EncodeSnapshot(s), "x").status().message(),
              HasSubstr("unknown dtype"));

  s = good;
  s.mode = "sparse";
  EXPECT_THAT(DecodeSnapshot(EncodeSnapshot(s), "x").status().message(), HasSubstr("mode"));

  s = good;
  s.position_policy = "relative";
  EXPECT_THAT(DecodeSnapshot(EncodeSnapshot(s), "x").status().message(),
              HasSubstr("position policy"));

  s = good;
  s.num_kv_heads = 0;
  s.kv.clear();
  EXPECT_THAT(DecodeSnapshot(EncodeSnapshot(s), "x").status().message(),
              HasSubstr("invalid shape"));

  s = good;
  s.accounting.kept_tokens = -1;
  EXPECT_TRUE(absl::IsDataLoss(DecodeSnapshot(EncodeSnapshot(s), "x").status()));
}

TEST(SessionSnapshotTest, HugeEntryCountIsRejectedBeforeAllocating) {
  std::mt19937_64 rng(6);
  SessionSnapshot s = RandomSnapshot(rng, 0);
  std::string bytes = EncodeSnapshot(s);
  // The entry count sits right before the kv length (u64) and the checksum (u32).
  const size_t count_at = bytes.size() - 4 - 8 - 8;
  for (int i = 0; i < 8; ++i) bytes[count_at + i] = '\xff';
  const absl::Status status = DecodeSnapshot(Reseal(bytes), "huge").status();
  EXPECT_TRUE(absl::IsDataLoss(status));
  EXPECT_THAT(status.message(), HasSubstr("do not fit"));
}

TEST(SessionSnapshotTest, WrongMagicAndVersion) {
  std::mt19937_64 rng(8);
  std::string bytes = EncodeSnapshot(RandomSnapshot(rng, 1));
  std::string other = bytes;
  other[0] = 'X';
  EXPECT_THAT(DecodeSnapshot(other, "m").status().message(), HasSubstr("wrong magic"));
  other = bytes;
  other[4] = 2;
  EXPECT_THAT(DecodeSnapshot(Reseal(other), "v").status().message(),
              HasSubstr("unknown format version 2"));
}

}  // namespace
}  // namespace anchorserve::cache
