#include "model/anchors.h"

#include <filesystem>
#include <fstream>

#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "model/model_config.h"
#include "model/tokenizer.h"

namespace anchorserve::model {
namespace {

// Minimal protobuf wire encoding, enough to write a SentencePiece BPE model by hand.
std::string Varint(uint64_t v) {
  std::string out;
  do {
    uint8_t b = v & 0x7F;
    v >>= 7;
    if (v) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (v);
  return out;
}
std::string Field(int number, const std::string& bytes) {
  return Varint(static_cast<uint64_t>(number) << 3 | 2) + Varint(bytes.size()) + bytes;
}
std::string IntField(int number, uint64_t v) {
  return Varint(static_cast<uint64_t>(number) << 3) + Varint(v);
}

// A Llama-like SentencePiece model: <unk> <s> </s>, byte pieces, then a few normal pieces
// including the bare ".".
std::string LlamaLikeModel() {
  std::string model;
  auto piece = [&](const std::string& text, int type) {
    model += Field(1, Field(1, text) + IntField(3, type));
  };
  piece("<unk>", 2);
  piece("<s>", 3);
  piece("</s>", 3);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    piece(name, 6);
  }
  for (const char* p : {"\xE2\x96\x81", ".", "a", "b",
                        "\xE2\x96\x81"
                        "a"})
    piece(p, 1);
  model += Field(2, IntField(3, 2) + IntField(35, 1) + IntField(40, 0) + IntField(41, 1) +
                        IntField(42, 2) + IntField(43, static_cast<uint64_t>(-1)));
  model += Field(3, Field(1, "identity") + IntField(3, 1) + IntField(4, 0));
  return model;
}

std::string MakeDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/anchors_" + name;
  anchorserve::RemoveTree(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

void Write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

ModelConfig ConfigWithVocab(int64_t vocab) {
  ModelConfig c;
  c.vocab_size = vocab;
  return c;
}

constexpr int kSpSize = 3 + 256 + 5;

TEST(DetectAnchorsTest, ReleasedAcLayout) {
  const std::string dir = MakeDir("ac");
  Write(dir + "/tokenizer.model", LlamaLikeModel());
  Write(dir + "/added_tokens.json", "{\"[PAD]\": " + std::to_string(kSpSize) +
                                        ", \"<AC>\": " + std::to_string(kSpSize + 1) + "}");
  auto tokenizer = Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto spec = DetectAnchors(dir, ConfigWithVocab(kSpSize + 2), tokenizer->get());
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind, AnchorKind::kAc);
  EXPECT_EQ(spec->token_ids, std::vector<int32_t>{kSpSize + 1});
  EXPECT_EQ(spec->pad_id, kSpSize);
}

TEST(DetectAnchorsTest, ReleasedEpLayoutUsesTheBareDotOnly) {
  const std::string dir = MakeDir("ep");
  Write(dir + "/tokenizer.model", LlamaLikeModel());
  Write(dir + "/added_tokens.json", "{\"[PAD]\": " + std::to_string(kSpSize) + "}");
  auto tokenizer = Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto spec = DetectAnchors(dir, ConfigWithVocab(kSpSize + 1), tokenizer->get());
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->kind, AnchorKind::kEp);
  EXPECT_EQ(spec->token_ids, std::vector<int32_t>{*(*tokenizer)->TokenToId(".")});
  EXPECT_EQ(spec->pad_id, kSpSize);
}

TEST(DetectAnchorsTest, PlainLlamaHasNoAnchors) {
  const std::string dir = MakeDir("plain");
  Write(dir + "/tokenizer.model", LlamaLikeModel());
  auto tokenizer = Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok());
  auto spec = DetectAnchors(dir, ConfigWithVocab(kSpSize), tokenizer->get());
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->kind, AnchorKind::kNone);
  EXPECT_FALSE(spec->has_anchors());
  // Without a tokenizer at all, too.
  auto none = DetectAnchors(dir, ConfigWithVocab(kSpSize), nullptr);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_anchors());
}

TEST(DetectAnchorsTest, AnchorConfigFileWinsAndRoundTrips) {
  const std::string dir = MakeDir("config");
  AnchorSpec written = CustomAnchors({29889, 13}, 32000);
  written.kind = AnchorKind::kEp;
  written.anchor_token = ".";
  Write(dir + "/" + kAnchorConfigFile, AnchorSpecToJson(written));
  auto spec = DetectAnchors(dir, ConfigWithVocab(32001), nullptr);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind, AnchorKind::kEp);
  EXPECT_EQ(spec->token_ids, (std::vector<int32_t>{13, 29889}));
  EXPECT_EQ(spec->pad_id, 32000);
  EXPECT_TRUE(spec->IsAnchor(13));
  EXPECT_FALSE(spec->IsAnchor(14));
}

TEST(DetectAnchorsTest, MalformedAnchorConfigNamesFileAndField) {
  const std::string dir = MakeDir("bad");
  for (const std::string text :
       {"not json", "{\"anchor_type\": \"sideways\"}", "{\"anchor_type\": \"ac\"}",
        "{\"anchor_type\": \"ac\", \"anchor_token_ids\": [-1]}",
        "{\"anchor_type\": \"ac\", \"anchor_token_ids\": [4], \"pad_token_id\": \"x\"}"}) {
    Write(dir + "/" + kAnchorConfigFile, text);
    auto spec = DetectAnchors(dir, ConfigWithVocab(10), nullptr);
    ASSERT_FALSE(spec.ok()) << text;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(kAnchorConfigFile), std::string::npos) << spec.status();
  }
}

TEST(ParseIdListTest, AcceptsListsAndNamesTheFieldOnJunk) {
  EXPECT_EQ(*ParseIdList("13, 29889,", "anchor-ids"), (std::vector<int32_t>{13, 29889}));
  EXPECT_TRUE(ParseIdList("", "anchor-ids")->empty());
  auto bad = ParseIdList("1,-2", "anchor-ids");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("anchor-ids"), std::string::npos);
  EXPECT_FALSE(ParseIdList("1,x", "token-ids").ok());
  EXPECT_FALSE(ParseIdList("99999999999", "token-ids").ok());
}

}  // namespace
}  // namespace anchorserve::model
