#include "train/prepare.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "model/default_model.h"
#include "model/tokenizer.h"

namespace anchorserve::train {
namespace {

TEST(AnchoredDocumentTest, JoinsSentencesWithAnchorsBetweenThem) {
  int64_t n = 0;
  EXPECT_EQ(AnchoredDocument("Mr. Smith came. He sat down.\n\nThe end", "ac", &n),
            "Mr. Smith came. <AC> He sat down. <AC> The end");
  EXPECT_EQ(n, 3);
  EXPECT_EQ(AnchoredDocument("One. Two.", "ep", &n), "One. Two.");
  EXPECT_EQ(n, 2);
}

class PrepareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/prepare_" + std::to_string(getpid());
    anchorserve::RemoveTree(dir_);
    model::DefaultModelOptions model;
    model.out_dir = dir_ + "/model";
    absl::Status written = model::WriteDefaultModel(model);
    if (!written.ok() && written.message().find("spm_train") != std::string::npos) {
      GTEST_SKIP() << "spm_train is not installed";
    }
    ASSERT_TRUE(written.ok()) << written;
    std::ofstream(dir_ + "/corpus.txt") << "The old captain opened the letter. He read it twice.\n"
                                           "<|endoftext|>\n"
                                           "Anna watched the river.\n\nThe bridge was long.\n"
                                           "<|endoftext|>\n"
                                           "Tom found the book.\n";
  }
  void TearDown() override { anchorserve::RemoveTree(dir_); }
  std::string dir_;
};

TEST_F(PrepareTest, WritesShardsDocumentsAndIndexThatDecodeBack) {
  PrepareOptions o;
  o.input_files = {dir_ + "/corpus.txt"};
  o.tokenizer_dir = dir_ + "/model";
  o.output_dir = dir_ + "/data";
  o.shard_tokens = 16;  // several shards
  auto result = PrepareCorpus(o);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->documents, 3);
  EXPECT_EQ(result->sentences, 5);
  EXPECT_EQ(result->anchors, 2);  // between sentences only: 1 + 1 + 0
  std::ifstream index_file(o.output_dir + "/index.json");
  const nlohmann::json index = nlohmann::json::parse(index_file);
  EXPECT_EQ(index["dtype"], "uint16");
  EXPECT_EQ(index["tokens"], result->tokens);
  // Read everything back and decode each document.
  std::vector<int32_t> all;
  int64_t total = 0;
  for (const auto& shard : index["shards"]) {
    std::ifstream in(o.output_dir + "/" + shard["file"].get<std::string>(), std::ios::binary);
    uint16_t v;
    int64_t n = 0;
    while (in.read(reinterpret_cast<char*>(&v), 2)) {
      all.push_back(v);
      ++n;
    }
    EXPECT_EQ(n, shard["tokens"].get<int64_t>());
    total += n;
  }
  EXPECT_EQ(total, result->tokens);
  EXPECT_GT(result->shards, 1);
  std::ifstream docs(o.output_dir + "/documents.bin", std::ios::binary);
  std::vector<uint64_t> starts(4);
  docs.read(reinterpret_cast<char*>(starts.data()), 32);
  ASSERT_EQ(starts.back(), static_cast<uint64_t>(result->tokens));
  auto tokenizer = model::Tokenizer::Load(o.tokenizer_dir);
  model::Tokenizer::DecodeOptions keep;
  const std::string first = (*tokenizer)->Decode(
      std::vector<int32_t>(all.begin() + starts[0], all.begin() + starts[1]), keep);
  EXPECT_EQ(first, "The old captain opened the letter.<AC>He read it twice.");
  EXPECT_EQ(all[starts[1]], (*tokenizer)->bos_id());
}

TEST_F(PrepareTest, BadInputsAreClearErrors) {
  PrepareOptions o;
  o.input_files = {dir_ + "/missing.txt"};
  o.tokenizer_dir = dir_ + "/model";
  o.output_dir = dir_ + "/data";
  auto missing = PrepareCorpus(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing.txt"), std::string::npos);
  o.input_files = {dir_ + "/corpus.txt"};
  o.anchors = "sideways";
  EXPECT_EQ(PrepareCorpus(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace anchorserve::train
