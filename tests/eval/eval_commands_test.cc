// Black-box tests of `anchor-eval ppl` and `anchor-eval mc` on the default model: JSON shape,
// masked == anchor perplexity through the binary, and clean errors. An optional pass over the
// real shared/data files runs when ../shared/data exists.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "tests/eval/anchor_eval_runner.h"

namespace anchorserve::eval {
namespace {

using ::anchorserve::testing::AnchorEval;
using ::anchorserve::testing::Outcome;

nlohmann::json Json(const Outcome& run) {
  try {
    return nlohmann::json::parse(run.out);
  } catch (const nlohmann::json::exception& e) {
    ADD_FAILURE() << "not JSON: " << run.out << "\n" << run.err;
    return nlohmann::json::object();
  }
}

std::string QaFixture(const std::string& name) {
  return std::string(ANCHORSERVE_TEST_DATA_DIR) + "/qa/" + name;
}

constexpr char kHeldOut[] =
    "The morning was cold and the river was quiet. A boat moved slowly past the old mill. "
    "Nobody on the bank said a word.\n"
    "\n"
    "By noon the sun had come out. The children ran down to the water, and their dog followed "
    "them. It barked at the ducks until they flew away.\n"
    "<|endoftext|>\n"
    "In the city the shops opened early. Mr. Brown sold bread, milk and eggs. His wife kept the "
    "books and counted the coins every evening.\n";

class EvalCommandsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(::testing::TempDir() + "/eval_commands_" + std::to_string(getpid()));
    anchorserve::RemoveTree(*root_);
    std::filesystem::create_directories(*root_);
    init_ = new Outcome(AnchorEval("init-model --out " + Model()));
    std::ofstream(Text()) << kHeldOut;
  }
  static void TearDownTestSuite() {
    anchorserve::RemoveTree(*root_);
    delete root_;
    delete init_;
  }
  void SetUp() override {
    if (init_->exit_code != 0 && init_->err.find("spm_train") != std::string::npos) {
      GTEST_SKIP() << "spm_train (Debian package sentencepiece) is not installed: " << init_->err;
    }
    ASSERT_EQ(init_->exit_code, 0) << init_->err;
  }
  static std::string Model() { return *root_ + "/model"; }
  static std::string Text() { return *root_ + "/held_out.txt"; }
  static std::string* root_;
  static Outcome* init_;
};

std::string* EvalCommandsTest::root_ = nullptr;
Outcome* EvalCommandsTest::init_ = nullptr;

TEST_F(EvalCommandsTest, PplJsonMaskedEqualsAnchorAndReportsTheCache) {
  const std::string base =
      "ppl --model " + Model() + " --data " + Text() + " --window 24 --stride 12 --json";
  const Outcome masked = AnchorEval(base + " --mode masked");
  ASSERT_EQ(masked.exit_code, 0) << masked.err;
  const Outcome anchor = AnchorEval(base + " --mode anchor --chunk 5");
  ASSERT_EQ(anchor.exit_code, 0) << anchor.err;
  const nlohmann::json m = Json(masked), a = Json(anchor);
  EXPECT_EQ(m["mode"], "masked");
  EXPECT_EQ(a["mode"], "anchor");
  EXPECT_EQ(a["policy"], "absolute");
  EXPECT_EQ(a["chunk"], 5);
  EXPECT_EQ(m["anchor_insertion"], true);  // the default model is AC
  EXPECT_EQ(m["anchor_ids"], nlohmann::json::array({4}));
  const int64_t stream = m["stream_tokens"].get<int64_t>();
  const int64_t windows = m["windows"].get<int64_t>();
  EXPECT_GT(stream, 24);
  EXPECT_EQ(windows, (stream - 24) / 12 + 1);
  EXPECT_EQ(m["tokens_scored"].get<int64_t>(), windows * 23);
  EXPECT_GT(m["anchor_targets"].get<int64_t>(), 0);
  EXPECT_NEAR(a["window_average_ppl"].get<double>(), m["window_average_ppl"].get<double>(),
              1e-4 * m["window_average_ppl"].get<double>());
  EXPECT_NEAR(a["token_average_ppl"].get<double>(), m["token_average_ppl"].get<double>(),
              1e-4 * m["token_average_ppl"].get<double>());
  EXPECT_TRUE(m["kv"].is_null());
  ASSERT_TRUE(a["kv"].is_object());
  EXPECT_NEAR(a["kv"]["mean_full_equivalent"].get<double>(), 12.5, 1e-9);
  EXPECT_LT(a["kv"]["mean_kept"].get<double>(), 12.5);
  EXPECT_GT(a["kv"]["c_down"].get<double>(), 0.0);
  EXPECT_LT(a["kv"]["c_down"].get<double>(), 1.0);
  EXPECT_LE(a["kv"]["peak_kept"].get<int64_t>(), 24);
  for (const char* key : {"window_average_nll", "token_average_nll", "token_accuracy",
                          "non_anchor_token_ppl", "seconds", "stride", "window"}) {
    EXPECT_TRUE(m.contains(key)) << key;
  }
}

TEST_F(EvalCommandsTest, PplTableAndLimit) {
  const Outcome run = AnchorEval("ppl --model " + Model() + " --data " + Text() +
                                 " --window 16 --stride 8 --limit 2 --mode anchor");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.out.find("ppl, window average"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("ppl, token average"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("C-down"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("2 x 16 tokens"), std::string::npos) << run.out;
}

TEST_F(EvalCommandsTest, McJsonReportsAccuracyAndDemonstrationCompression) {
  const Outcome run =
      AnchorEval("mc --model " + Model() + " --data " + QaFixture("query_choices.jsonl") +
                 " --task arc_easy --shots 1 --mode anchor --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json j = Json(run);
  EXPECT_EQ(j["task"], "arc_easy");
  EXPECT_EQ(j["items"], 3);
  EXPECT_EQ(j["choices_scored"], 2 + 2 + 4);
  EXPECT_EQ(j["shots"], 1);
  EXPECT_EQ(j["demo_anchor"], "<AC>");
  EXPECT_EQ(j["L_kv"], 1);
  EXPECT_EQ(j["kv_after_demos"], 1);
  const double l_d = j["L_d"].get<double>();
  EXPECT_GT(l_d, 5);
  EXPECT_NEAR(j["c_down"].get<double>(), 1 - 1 / l_d, 1e-12);
  EXPECT_GE(j["acc"].get<double>(), 0);
  EXPECT_LE(j["acc"].get<double>(), 1);
  EXPECT_TRUE(j["acc_norm"].is_number());
  EXPECT_TRUE(j["continuation_ppl"].is_null());
  EXPECT_GT(j["t_up"].get<double>(), 0);
  EXPECT_GT(j["t_up_vs_full_cache"].get<double>(), 0);
  EXPECT_EQ(j["cached_max_diff"].get<double>(), 0.0);

  // The masked forward gives the same accuracy as the anchor-cached path.
  const Outcome masked =
      AnchorEval("mc --model " + Model() + " --data " + QaFixture("query_choices.jsonl") +
                 " --task arc_easy --shots 1 --mode masked --json");
  ASSERT_EQ(masked.exit_code, 0) << masked.err;
  EXPECT_EQ(Json(masked)["acc"], j["acc"]);
  EXPECT_EQ(Json(masked)["acc_norm"], j["acc_norm"]);
  EXPECT_TRUE(Json(masked)["kv_after_demos"].is_null());
}

TEST_F(EvalCommandsTest, McEveryFixtureFormat) {
  for (const std::string& args :
       {std::string("--task winogrande --data ") + QaFixture("schema.jsonl"),
        std::string("--task lambada --data ") + QaFixture("language_modeling.jsonl"),
        std::string("--task hellaswag --data ") + QaFixture("hellaswag.txt")}) {
    const Outcome run = AnchorEval("mc --model " + Model() + " " + args + " --json");
    ASSERT_EQ(run.exit_code, 0) << args << "\n" << run.err;
    const nlohmann::json j = Json(run);
    EXPECT_GT(j["items"].get<int64_t>(), 0) << args;
  }
}

TEST_F(EvalCommandsTest, BadArgumentsExitTwoWithOneLine) {
  const std::string ppl = "ppl --model " + Model() + " --data " + Text();
  const std::string mc =
      "mc --model " + Model() + " --data " + QaFixture("query_choices.jsonl") + " --task copa";
  for (const std::string& args : std::vector<std::string>{
           "ppl --model " + Model(), ppl + " --mode sideways", ppl + " --policy compact",
           ppl + " --window 1", ppl + " --stride 0", ppl + " --chunk -1", ppl + " --limit x",
           ppl + " --window 100000", ppl + " --bogus 1", ppl + " --anchor-insertion some",
           mc + " --task mmlu", "mc --model " + Model() + " --data x.jsonl", mc + " --shots -1",
           mc + " --mode anchor --policy nope", mc + " --json=1"}) {
    const Outcome run = AnchorEval(args);
    EXPECT_EQ(run.exit_code, 2) << args << "\n" << run.err;
    EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << args << "\n" << run.err;
    EXPECT_TRUE(run.out.empty()) << args;
  }
}

TEST_F(EvalCommandsTest, DataErrorsExitOneNamingTheFile) {
  const Outcome missing = AnchorEval("ppl --model " + Model() + " --data /nonexistent/t.txt");
  EXPECT_EQ(missing.exit_code, 1) << missing.err;
  EXPECT_NE(missing.err.find("/nonexistent/t.txt"), std::string::npos) << missing.err;

  const Outcome malformed = AnchorEval("mc --model " + Model() + " --task arc_easy --data " +
                                       QaFixture("malformed.jsonl"));
  EXPECT_EQ(malformed.exit_code, 1) << malformed.err;
  EXPECT_NE(malformed.err.find("malformed.jsonl:3:"), std::string::npos) << malformed.err;

  const Outcome too_many_shots =
      AnchorEval("mc --model " + Model() + " --task copa --shots 9 --data " +
                 QaFixture("query_choices.jsonl"));
  EXPECT_EQ(too_many_shots.exit_code, 1) << too_many_shots.err;
  EXPECT_NE(too_many_shots.err.find("no item left"), std::string::npos) << too_many_shots.err;

  const Outcome short_text =
      AnchorEval("ppl --model " + Model() + " --data " + Text() + " --window 4000");
  EXPECT_EQ(short_text.exit_code, 1) << short_text.err;
  EXPECT_NE(short_text.err.find("fewer than one window"), std::string::npos) << short_text.err;
}

// A --limit 2 pass over the real files (shared/data), when this checkout has them.
TEST_F(EvalCommandsTest, RealDataSmokeWhenSharedDataIsPresent) {
  const std::string data = ANCHORSERVE_SHARED_DATA_DIR;
  if (!std::filesystem::exists(data + "/qa") || !std::filesystem::exists(data + "/heldout")) {
    GTEST_SKIP() << data << " is not present (the shared data set is optional)";
  }
  const Outcome ppl = AnchorEval("ppl --model " + Model() + " --data " + data +
                                 "/heldout/wikitext-2-raw-v1_test.raw --window 64 --stride 64 "
                                 "--limit 2 --mode anchor --json");
  ASSERT_EQ(ppl.exit_code, 0) << ppl.err;
  EXPECT_EQ(Json(ppl)["windows"], 2);
  const std::vector<std::pair<std::string, std::string>> tasks = {
      {"arc_easy", "arc_easy_test.jsonl"},
      {"arc_challenge", "arc_challenge_test.jsonl"},
      {"piqa", "piqa_validation.jsonl"},
      {"boolq", "boolq_dev.jsonl"},
      {"obqa", "openbookqa_test.jsonl"},
      {"csqa", "commonsense_qa_dev.jsonl"},
      {"siqa", "siqa_dev.jsonl"},
      {"copa", "copa_dev.jsonl"},
      {"winogrande", "winogrande_xl_dev.jsonl"},
      {"lambada", "lambada_openai_test.jsonl"},
      {"hellaswag", "hellaswag_val_llamacpp.txt"}};
  for (const auto& [task, file] : tasks) {
    // BoolQ passages are long; its demonstration would dominate the suite's time on CPU.
    const int shots = task == "boolq" ? 0 : 1;
    const Outcome run =
        AnchorEval("mc --model " + Model() + " --data " + data + "/qa/" + file + " --task " + task +
                   " --shots " + std::to_string(shots) + " --limit 2 --json");
    ASSERT_EQ(run.exit_code, 0) << task << "\n" << run.err;
    const nlohmann::json j = Json(run);
    EXPECT_EQ(j["items"], 2) << task;
    EXPECT_EQ(j["L_kv"], shots) << task;  // one <AC> per demonstration
  }
}

}  // namespace
}  // namespace anchorserve::eval
