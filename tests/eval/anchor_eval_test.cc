// Black-box tests of the anchor-eval binary: the public debugging surface others use to
// check us, so its JSON must equal the HF reference and its errors must be clean.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/eval/anchor_eval_runner.h"
#include "tests/model/test_util.h"

namespace anchorserve::eval {
namespace {

using ::anchorserve::testing::MaxAbsDiff;
using ::anchorserve::testing::ReadJson;
using ::anchorserve::testing::TestData;

using ::anchorserve::testing::AnchorEval;
using ::anchorserve::testing::Outcome;

std::string Ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s.push_back(',');
    s.append(std::to_string(id));
  }
  return s;
}

std::vector<float> Flatten(const nlohmann::json& rows) {
  std::vector<float> out;
  for (const auto& row : rows) {
    for (const auto& v : row) out.push_back(v.get<float>());
  }
  return out;
}

TEST(AnchorEvalTest, LogitsJsonMatchesTransformersInBothModes) {
  const std::string dir = TestData("hf_tiny_mha");  // no tokenizer.model: --token-ids works
  const nlohmann::json fixture = ReadJson(dir + "/logits.json");
  const auto ids = fixture["causal_token_ids"].get<std::vector<int32_t>>();
  for (const std::string& mode : std::vector<std::string>{"full", "anchor"}) {
    const Outcome run = AnchorEval("logits --model " + dir + " --token-ids " + Ids(ids) +
                                   " --mode " + mode + " --anchor-ids 5 --json");
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const nlohmann::json got = nlohmann::json::parse(run.out);
    ASSERT_EQ(got["logits"].size(), ids.size());
    const std::vector<float> want =
        Flatten(mode == "full" ? fixture["causal_logits"] : fixture["ansan_logits"]);
    std::vector<float> want_rows(want.begin(), want.begin() + ids.size() * 128);
    EXPECT_LE(MaxAbsDiff(Flatten(got["logits"]), want_rows), 1e-4) << mode;
    const auto kv = got["kv_tokens"].get<std::vector<int64_t>>();
    ASSERT_EQ(kv.size(), ids.size());
    if (mode == "full") {
      for (size_t i = 0; i < kv.size(); ++i) EXPECT_EQ(kv[i], static_cast<int64_t>(i + 1));
    } else {
      // After the first anchor (position 4) only anchors and the current sentence remain.
      EXPECT_EQ(kv[3], 4);
      EXPECT_EQ(kv[4], 1);
      EXPECT_LT(kv.back(), static_cast<int64_t>(ids.size()));
    }
  }
}

TEST(AnchorEvalTest, BadArgumentsExitTwoWithOneLine) {
  const std::string dir = TestData("hf_tiny_mha");
  for (const std::string& args : std::vector<std::string>{
           "", "frobnicate", "logits --model " + dir, "logits --model " + dir + " --token-ids 1,x",
           "logits --model " + dir + " --token-ids 1,2 --mode sideways",
           "logits --model " + dir + " --token-ids 1,2 --policy nope",
           "logits --model " + dir + " --token-ids 1,2 --dtype int8",
           "logits --model " + dir + " --token-ids 1,2 --device tpu",
           "logits --model " + dir + " --token-ids 1,999999",
           "logits --model " + dir + " --token-ids 1,2 --bogus 3"}) {
    const Outcome run = AnchorEval(args);
    EXPECT_EQ(run.exit_code, 2) << args << "\n" << run.err;
    EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << args << "\n" << run.err;
    EXPECT_TRUE(run.out.empty()) << args;
  }
}

TEST(AnchorEvalTest, MissingModelIsARuntimeFailure) {
  const Outcome run = AnchorEval("logits --model /nonexistent/model --token-ids 1,2");
  EXPECT_EQ(run.exit_code, 1) << run.err;
  EXPECT_NE(run.err.find("/nonexistent/model"), std::string::npos) << run.err;
}

TEST(AnchorEvalTest, TextWithoutTokenizerIsAClearError) {
  const Outcome run = AnchorEval("logits --model " + TestData("hf_tiny_mha") + " --text hello");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("tokenizer.model"), std::string::npos) << run.err;
}

}  // namespace
}  // namespace anchorserve::eval
