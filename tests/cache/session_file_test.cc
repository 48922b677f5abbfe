#include "cache/session_file.h"

#include <cstdint>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "cache/durable_coding.h"
#include "cache/session_snapshot.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/session_test_util.h"

namespace anchorserve::cache {
namespace {

using ::anchorserve::cache::testing::RandomSnapshot;
using ::testing::HasSubstr;

SessionFileHeader Header(bool has_state) {
  SessionFileHeader h;
  h.tenant = "tenant-a";
  h.session_id = "chat-1";
  h.model_fingerprint = "fingerprint";
  h.created_us = 1'700'000'000'000'000;
  h.last_used_us = 1'700'000'000'500'000;
  h.turns = has_state ? 3 : 0;
  h.accounting = {5, 40, 4, 12, 64};
  h.has_state = has_state;
  return h;
}

TEST(SessionFileTest, HeaderRoundTripsAndLocatesTheSnapshot) {
  std::mt19937_64 rng(1);
  const std::string snapshot = EncodeSnapshot(RandomSnapshot(rng, 5));
  const std::string file = EncodeSessionFile(Header(true), snapshot);
  absl::StatusOr<SessionFileHeader> h = DecodeSessionFileHeader(file, "a.session");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->tenant, "tenant-a");
  EXPECT_EQ(h->session_id, "chat-1");
  EXPECT_EQ(h->model_fingerprint, "fingerprint");
  EXPECT_EQ(h->created_us, 1'700'000'000'000'000);
  EXPECT_EQ(h->last_used_us, 1'700'000'000'500'000);
  EXPECT_EQ(h->turns, 3);
  EXPECT_EQ(h->accounting, (KvAccounting{5, 40, 4, 12, 64}));
  EXPECT_TRUE(h->has_state);
  EXPECT_EQ(h->snapshot_bytes, snapshot.size());
  EXPECT_EQ(absl::string_view(file).substr(h->header_bytes), snapshot);
  // The header alone decodes: a restart reads only a prefix of each file.
  EXPECT_TRUE(DecodeSessionFileHeader(file.substr(0, h->header_bytes), "a.session").ok());
  EXPECT_LE(h->header_bytes, kMaxSessionFileHeaderBytes);

  absl::StatusOr<SessionFileHeader> empty =
      DecodeSessionFileHeader(EncodeSessionFile(Header(false), ""), "b.session");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_FALSE(empty->has_state);
  EXPECT_EQ(empty->snapshot_bytes, 0u);
}

TEST(SessionFileTest, EveryTruncatedOrFlippedHeaderIsDataLoss) {
  const std::string file = EncodeSessionFile(Header(false), "");
  for (size_t n = 0; n < file.size(); ++n) {
    const absl::Status status = DecodeSessionFileHeader(file.substr(0, n), "cut.session").status();
    EXPECT_TRUE(absl::IsDataLoss(status)) << n << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr("cut.session"));
  }
  std::mt19937_64 rng(2);
  for (size_t i = 0; i < file.size(); ++i) {
    std::string damaged = file;
    damaged[i] = static_cast<char>(damaged[i] ^ static_cast<char>(1 + rng() % 255));
    EXPECT_TRUE(absl::IsDataLoss(DecodeSessionFileHeader(damaged, "flip").status())) << i;
  }
}

TEST(SessionFileTest, InconsistentFieldsBehindAValidChecksumAreDataLoss) {
  // Re-encoding with fields the decoder must refuse; the checksum is right, so only the field
  // checks stand between these and the store.
  SessionFileHeader no_id = Header(false);
  no_id.session_id.clear();
  SessionFileHeader negative_turns = Header(false);
  negative_turns.turns = -1;
  SessionFileHeader state_without_bytes = Header(true);
  for (const std::string& file :
       {EncodeSessionFile(no_id, ""), EncodeSessionFile(negative_turns, ""),
        EncodeSessionFile(state_without_bytes, ""), EncodeSessionFile(Header(false), "x")}) {
    const absl::Status status = DecodeSessionFileHeader(file, "bad.session").status();
    EXPECT_TRUE(absl::IsDataLoss(status)) << status;
    EXPECT_THAT(status.message(), HasSubstr("inconsistent header fields"));
  }
  SessionFileHeader long_id = Header(false);
  long_id.session_id.assign(kMaxSessionIdBytes + 1, 'x');
  EXPECT_TRUE(absl::IsDataLoss(
      DecodeSessionFileHeader(EncodeSessionFile(long_id, ""), "long.session").status()));
}

}  // namespace
}  // namespace anchorserve::cache
