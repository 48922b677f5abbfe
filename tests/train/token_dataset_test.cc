#include "train/token_dataset.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/remove_tree.h"
#include "gtest/gtest.h"

namespace anchorserve::train {
namespace {

namespace fs = std::filesystem;

// Writes a prepared corpus by hand: documents of the given lengths, token i = i % 50 + 10 and
// each document starting with BOS (1).
std::string WriteCorpus(const std::string& name, const std::vector<int64_t>& lengths) {
  const std::string dir = ::testing::TempDir() + "/" + name + "_" + std::to_string(getpid());
  anchorserve::RemoveTree(dir);
  fs::create_directories(dir);
  std::vector<uint16_t> tokens;
  std::vector<uint64_t> starts;
  for (int64_t n : lengths) {
    starts.push_back(tokens.size());
    tokens.push_back(1);
    for (int64_t i = 1; i < n; ++i) tokens.push_back(static_cast<uint16_t>(tokens.size() % 50 + 10));
  }
  starts.push_back(tokens.size());
  std::ofstream(dir + "/tokens-00000.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 2));
  std::ofstream(dir + "/documents.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(starts.data()), static_cast<std::streamsize>(starts.size() * 8));
  std::ofstream(dir + "/index.json")
      << R"({"format": "anchorserve-tokens-v1", "dtype": "uint16", "vocab_size": 64,
             "anchors": "none", "anchor_token_ids": [], "bos_token_id": 1,
             "tokens": )" << tokens.size()
      << R"(, "shards": [{"file": "tokens-00000.bin", "tokens": )" << tokens.size() << "}]}";
  return dir;
}

TEST(TokenDatasetTest, CutsDocumentsIntoWindowsThatEachStartWithBos) {
  const std::string dir = WriteCorpus("windows", {10, 3, 25});
  auto data = TokenDataset::Open(dir);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->num_tokens(), 38);
  EXPECT_EQ(data->num_documents(), 3);
  const std::vector<Window> windows = CutWindows(*data, 8, /*min_length=*/4);
  // doc 0: [0,8) then BOS+[8,10) (3 tokens, dropped); doc 1 (3 tokens) dropped;
  // doc 2 (13..38): [13,21), BOS+[21,28), BOS+[28,35), BOS+[35,38) (4 tokens, kept).
  ASSERT_EQ(windows.size(), 5u);
  EXPECT_EQ(windows[0].begin, 0);
  EXPECT_EQ(windows[0].end, 8);
  EXPECT_FALSE(windows[0].prepend_bos);
  EXPECT_EQ(windows[1].begin, 13);
  EXPECT_EQ(windows[2].begin, 21);
  EXPECT_TRUE(windows[2].prepend_bos);
  EXPECT_EQ(windows[2].length(), 8);
  EXPECT_EQ(windows[3].begin, 28);
  EXPECT_EQ(windows[4].length(), 4);
  const std::vector<int32_t> tokens = WindowTokens(*data, windows[4], 8, /*pad_id=*/3);
  EXPECT_EQ(tokens, (std::vector<int32_t>{1, data->tokens()[35], data->tokens()[36],
                                          data->tokens()[37], 3, 3, 3, 3}));
  anchorserve::RemoveTree(dir);
}

TEST(TokenDatasetTest, EpochOrderIsASeededPermutation) {
  const std::vector<int64_t> a = EpochOrder(100, 7, 0);
  EXPECT_EQ(a, EpochOrder(100, 7, 0));
  EXPECT_NE(a, EpochOrder(100, 7, 1));
  EXPECT_NE(a, EpochOrder(100, 8, 0));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 100; ++i) EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
}

TEST(TokenDatasetTest, ShardsThatDisagreeWithTheIndexAreDataLoss) {
  const std::string dir = WriteCorpus("truncated", {10, 10});
  fs::resize_file(dir + "/tokens-00000.bin", 30);
  auto data = TokenDataset::Open(dir);
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(data.status().message().find("tokens-00000.bin"), std::string::npos);
  EXPECT_EQ(TokenDataset::Open(dir + "/missing").status().code(), absl::StatusCode::kNotFound);
  anchorserve::RemoveTree(dir);
}

}  // namespace
}  // namespace anchorserve::train
