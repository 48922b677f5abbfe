// The embedded default model end to end through the real anchor-eval binary: written
// deterministically, loadable, and served by generate/logits/tokenize.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "tests/eval/anchor_eval_runner.h"

namespace anchorserve::eval {
namespace {

using ::anchorserve::testing::AnchorEval;
using ::anchorserve::testing::Outcome;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class DefaultModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(::testing::TempDir() + "/default_model_" + std::to_string(getpid()));
    anchorserve::RemoveTree(*dir_);
    init_ = new Outcome(AnchorEval("init-model --out " + *dir_));
  }
  static void TearDownTestSuite() {
    anchorserve::RemoveTree(*dir_);
    delete dir_;
    delete init_;
  }
  void SetUp() override {
    if (init_->exit_code != 0 && init_->err.find("spm_train") != std::string::npos) {
      GTEST_SKIP() << "spm_train (Debian package sentencepiece) is not installed: " << init_->err;
    }
    ASSERT_EQ(init_->exit_code, 0) << init_->err;
  }
  static std::string* dir_;
  static Outcome* init_;
};

std::string* DefaultModelTest::dir_ = nullptr;
Outcome* DefaultModelTest::init_ = nullptr;

TEST_F(DefaultModelTest, WritesAnAcModelDeterministically) {
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.model", "anchor_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(*dir_ + "/" + f)) << f;
  }
  const std::string again = *dir_ + "_again";
  ASSERT_EQ(AnchorEval("init-model --out " + again).exit_code, 0);
  // tokenizer.model records the training corpus's path (SentencePiece does), so it is
  // compared by what it does; every other file byte for byte.
  for (const char* f : {"config.json", "model.safetensors", "anchor_config.json"}) {
    EXPECT_TRUE(ReadAll(*dir_ + "/" + f) == ReadAll(again + "/" + f)) << f << " differs";
  }
  const std::string text = " --text 'The quiet island, 1849. <AC> Caf\xC3\xA9 \xE6\x9D\xB1!'";
  EXPECT_EQ(AnchorEval("tokenize --model " + *dir_ + text).out,
            AnchorEval("tokenize --model " + again + text).out);
  anchorserve::RemoveTree(again);
  const nlohmann::json anchors = nlohmann::json::parse(ReadAll(*dir_ + "/anchor_config.json"));
  EXPECT_EQ(anchors["anchor_type"], "ac");
}

TEST_F(DefaultModelTest, RelativeOutputDirectoryWorks) {
  const std::string relative = "default_model_relative_" + std::to_string(getpid());
  const Outcome run = AnchorEval("init-model --out " + relative);
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(std::filesystem::exists(relative + "/tokenizer.model"));
  anchorserve::RemoveTree(relative);
}

TEST_F(DefaultModelTest, TokenizeSplitsOnTheAnchorToken) {
  const Outcome run = AnchorEval("tokenize --model " + *dir_ + " --text 'A. <AC> \nB'");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json j = nlohmann::json::parse(run.out);
  const auto pieces = j["pieces"].get<std::vector<std::string>>();
  ASSERT_FALSE(pieces.empty());
  EXPECT_EQ(pieces.front(), "<s>");
  EXPECT_NE(std::find(pieces.begin(), pieces.end(), "<AC>"), pieces.end());
}

TEST_F(DefaultModelTest, GenerateIsReproducibleAndReportsTheCache) {
  const std::string args = "generate --model " + *dir_ +
                           " --text 'The old captain opened the letter. He read it twice.'"
                           " --anchor-insertion auto --max-tokens 12 --temperature 0.9 --seed 5";
  const Outcome a = AnchorEval(args);
  const Outcome b = AnchorEval(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.err.find("kv kept"), std::string::npos) << a.err;
  EXPECT_NE(a.err.find("anchors 2"), std::string::npos) << a.err;  // two inserted <AC>
}

TEST_F(DefaultModelTest, LogitsFromTextMatchTokenIds) {
  const Outcome tok = AnchorEval("tokenize --model " + *dir_ + " --text 'Hello there. <AC> Yes'");
  ASSERT_EQ(tok.exit_code, 0);
  std::string ids;
  const nlohmann::json tokens = nlohmann::json::parse(tok.out);
  for (int id : tokens["token_ids"]) {
    if (!ids.empty()) ids.push_back(',');
    ids.append(std::to_string(id));
  }
  const Outcome by_text =
      AnchorEval("logits --model " + *dir_ + " --text 'Hello there. <AC> Yes' --json");
  const Outcome by_ids = AnchorEval("logits --model " + *dir_ + " --token-ids " + ids + " --json");
  ASSERT_EQ(by_text.exit_code, 0) << by_text.err;
  ASSERT_EQ(by_ids.exit_code, 0) << by_ids.err;
  EXPECT_EQ(nlohmann::json::parse(by_text.out)["logits"],
            nlohmann::json::parse(by_ids.out)["logits"]);
}

}  // namespace
}  // namespace anchorserve::eval
