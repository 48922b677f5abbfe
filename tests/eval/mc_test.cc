// eval/mc_data and eval/mc: the task file formats, their errors, choice scoring against an
// independent log-softmax over ForwardFull logits, and the k-shot report (L_d, L_kv, C-down).
#include "eval/mc.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "eval/mc_data.h"
#include "gtest/gtest.h"
#include "model/anchors.h"
#include "model/ansan_mask.h"
#include "model/tokenizer.h"
#include "tests/eval/eval_test_util.h"

namespace anchorserve::eval {
namespace {

using testing::DefaultModelDir;
using testing::kTinyAnchor;
using testing::ReferenceNlls;
using testing::TestDataPath;
using testing::TinyModel;

McTask Task(const std::string& name) {
  auto task = FindMcTask(name);
  EXPECT_TRUE(task.ok()) << task.status();
  return *task;
}

std::vector<McItem> Load(const std::string& file, const std::string& task) {
  auto items = LoadMcFile(TestDataPath("qa/" + file), Task(task));
  EXPECT_TRUE(items.ok()) << items.status();
  return items.ok() ? *items : std::vector<McItem>{};
}

TEST(FindMcTaskTest, KnownNamesAliasesAndDelimiters) {
  EXPECT_EQ(Task("arc_easy").delimiter, "\nAnswer: ");
  EXPECT_EQ(Task("boolq").delimiter, "\nAnswer: ");
  EXPECT_EQ(Task("obqa").name, "openbookqa");
  EXPECT_EQ(Task("csqa").name, "commonsense_qa");
  EXPECT_EQ(Task("winogrande").format, McFormat::kSchema);
  EXPECT_EQ(Task("lambada").format, McFormat::kLanguageModeling);
  EXPECT_EQ(Task("hellaswag").format, McFormat::kHellaswag);
  auto unknown = FindMcTask("mmlu");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("arc_easy"), std::string::npos);
}

TEST(ParseMcTest, QueryChoicesWithDelimiterWhitespaceMovedToTheContinuation) {
  const std::vector<McItem> items = Load("query_choices.jsonl", "arc_easy");
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].line, 1);
  EXPECT_EQ(items[1].line, 3);  // the blank line 2 is skipped
  EXPECT_EQ(items[0].num_choices(), 3u);
  EXPECT_EQ(items[0].contexts[0], "Question: Which color is the sky on a clear day?\nAnswer:");
  EXPECT_EQ(items[0].continuations[0], " blue");
  EXPECT_EQ(items[0].continuations[2], " red");
  EXPECT_EQ(items[0].gold, 0);
  // PIQA-style trailing newline in the query is stripped before the delimiter.
  EXPECT_EQ(items[1].contexts[1], "Question: What does water become when it boils?\nAnswer:");
  EXPECT_EQ(items[1].gold, 1);
  EXPECT_EQ(items[1].DemonstrationText(),
            "Question: What does water become when it boils?\nAnswer: steam");

  const std::vector<McItem> copa = Load("query_choices.jsonl", "copa");
  ASSERT_EQ(copa.size(), 4u);
  EXPECT_EQ(copa[2].contexts[0], "The cat was hungry, therefore");
  EXPECT_EQ(copa[2].continuations[1], " it ate the fish.");
}

TEST(ParseMcTest, SchemaScoresTheSharedContinuationAfterEachOption) {
  const std::vector<McItem> items = Load("schema.jsonl", "winogrande");
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].contexts[1], "Sarah was a better surgeon than Maria so Maria");
  EXPECT_EQ(items[0].continuations[0], " always got the easier cases.");
  EXPECT_EQ(items[0].continuations[1], " always got the easier cases.");
  EXPECT_EQ(items[0].gold, 1);
  EXPECT_EQ(items[1].DemonstrationText(),
            "The trophy did not fit in the suitcase because the trophy was too big.");
}

TEST(ParseMcTest, LanguageModelingHasOneChoice) {
  const std::vector<McItem> items = Load("language_modeling.jsonl", "lambada");
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[1].num_choices(), 1u);
  EXPECT_EQ(items[1].contexts[0], "She put the milk back in the");
  EXPECT_EQ(items[1].continuations[0], " fridge");
  EXPECT_EQ(items[1].gold, 0);
}

TEST(ParseMcTest, HellaswagSixLineItems) {
  const std::vector<McItem> items = Load("hellaswag.txt", "hellaswag");
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].num_choices(), 4u);
  EXPECT_EQ(items[0].contexts[3], "Cooking: A man stands in a kitchen. he");
  EXPECT_EQ(items[0].continuations[2], " cracks an egg into a bowl.");
  EXPECT_EQ(items[0].gold, 2);
  EXPECT_EQ(items[1].line, 7);
  EXPECT_EQ(items[1].gold, 0);
}

TEST(ParseMcTest, MalformedJsonLineNamesFileAndLine) {
  const std::string path = TestDataPath("qa/malformed.jsonl");
  auto items = LoadMcFile(path, Task("arc_easy"));
  ASSERT_EQ(items.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(items.status().message().find(path + ":3: not valid JSON"), std::string::npos)
      << items.status();
}

TEST(ParseMcTest, MissingFileIsNotFoundNamingThePath) {
  auto items = LoadMcFile("/nonexistent/arc.jsonl", Task("arc_easy"));
  EXPECT_EQ(items.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(items.status().message().find("/nonexistent/arc.jsonl"), std::string::npos);
}

TEST(ParseMcTest, BadRecordsNameSourceLineAndField) {
  struct Case {
    std::string task, text, want;
  };
  const std::vector<Case> cases = {
      {"arc_easy", "{\"choices\": [\"a\", \"b\"], \"gold\": 0}", "src:1: missing \"query\""},
      {"arc_easy", "\n{\"query\": \"q\", \"gold\": 0}", "src:2: missing \"choices\""},
      {"arc_easy", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"]}", "src:1: missing \"gold\""},
      {"arc_easy", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}",
       "src:1: \"gold\" 2 is outside [0, 2)"},
      {"arc_easy", "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": \"0\"}",
       "src:1: \"gold\" is not an integer"},
      {"arc_easy", "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 0}",
       "src:1: \"choices\" has 1 entries, need 2"},
      {"arc_easy", "{\"query\": \"q\", \"choices\": \"a\", \"gold\": 0}",
       "src:1: \"choices\" is not a list"},
      {"arc_easy", "{\"query\": \"  \", \"choices\": [\"a\", \"b\"], \"gold\": 0}",
       "src:1: \"query\" is empty"},
      {"arc_easy", "{\"query\": \"q\", \"choices\": [\"a\", 3], \"gold\": 0}",
       "src:1: \"choices\"[1] is not a string"},
      {"arc_easy", "[1, 2]", "src:1: not a JSON object"},
      {"winogrande", "{\"context_options\": [\"a\", \"b\"], \"gold\": 0}",
       "src:1: missing \"continuation\""},
      {"lambada", "{\"context\": \"a\"}", "src:1: missing \"continuation\""},
      {"hellaswag", "ctx\n1\na\nb\nc\n", "src:1: truncated item"},
      {"hellaswag", "ctx\n7\na\nb\nc\nd\n", "src:2: gold index must be 0..3"},
      {"hellaswag", "ctx\n1\na\n \nc\nd\n", "src:4: empty ending"},
  };
  for (const Case& c : cases) {
    auto items = ParseMcText(c.text, "src", Task(c.task));
    ASSERT_EQ(items.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(items.status().message().find(c.want), std::string::npos)
        << c.text << " -> " << items.status();
  }
}

TEST(NormalizationLengthTest, CountsCodePointsOfTheStrippedText) {
  EXPECT_EQ(NormalizationLength(" blue"), 4);
  EXPECT_EQ(NormalizationLength("  h\xC3\xA9llo \n"), 5);  // é is one character
  EXPECT_EQ(NormalizationLength(""), 0);
}

TEST(DemonstrationsTextTest, JoinsWithBlankLinesAndOptionalAnchor) {
  const std::vector<McItem> items = Load("schema.jsonl", "winogrande");
  EXPECT_EQ(DemonstrationsText(items, 0, "<AC>"), "");
  EXPECT_EQ(DemonstrationsText(items, 2, ""),
            "Sarah was a better surgeon than Maria so Maria always got the easier cases.\n\n"
            "The trophy did not fit in the suitcase because the trophy was too big.\n\n");
  EXPECT_EQ(DemonstrationsText(items, 1, "<AC>"),
            "Sarah was a better surgeon than Maria so Maria always got the easier cases. <AC>\n\n");
}

TEST(PickChoiceTest, FirstMaximumWins) {
  EXPECT_EQ(PickChoice({-3, -1, -1, -2}), 1);
  EXPECT_EQ(PickChoice({-5}), 0);
}

// Hand-computed micro example: loglik = -sum of NLLs of the continuation ids from one
// ForwardFull over prefix + context + continuation, with our own log-softmax.
TEST(ScoreChoicesTest, SumsContinuationLogProbsInEveryMode) {
  const auto& m = TinyModel();
  const model::AnchorSpec anchors = model::CustomAnchors({kTinyAnchor}, -1);
  const std::vector<int32_t> prefix = {1, 20, 21, kTinyAnchor, 22, 23, kTinyAnchor};
  const std::vector<ChoiceTokens> choices = {
      {{30, 31}, {40, 41, 42}}, {{30, 31}, {50}}, {{33}, {60, kTinyAnchor}}};
  for (EvalMode mode : {EvalMode::kFull, EvalMode::kMasked, EvalMode::kAnchor}) {
    ScoringOptions options;
    options.mode = mode;
    options.sequence.anchors = anchors;
    auto scored = ScoreChoices(m, prefix, choices, options);
    ASSERT_TRUE(scored.ok()) << scored.status();
    ASSERT_EQ(scored->choices.size(), choices.size());
    int64_t forwarded = 0;
    for (size_t c = 0; c < choices.size(); ++c) {
      std::vector<int32_t> ids = prefix;
      ids.insert(ids.end(), choices[c].context.begin(), choices[c].context.end());
      const int64_t first = static_cast<int64_t>(ids.size());
      ids.insert(ids.end(), choices[c].continuation.begin(), choices[c].continuation.end());
      forwarded += static_cast<int64_t>(ids.size());
      const auto mask = mode == EvalMode::kFull
                            ? model::BuildCausalMask(static_cast<int64_t>(ids.size()))
                            : model::BuildAnsanMask(ids, anchors);
      double want = 0;
      for (double nll : ReferenceNlls(m, ids, first, mask)) want -= nll;
      EXPECT_NEAR(scored->choices[c].loglik, want, 1e-4) << EvalModeName(mode) << " " << c;
      EXPECT_EQ(scored->choices[c].tokens, static_cast<int64_t>(choices[c].continuation.size()));
    }
    EXPECT_EQ(scored->tokens_forwarded, forwarded);
    // Anchor mode keeps the prefix's two anchors (it ends with one).
    EXPECT_EQ(scored->kv_after_prefix, mode == EvalMode::kAnchor ? 2 : -1);
  }
}

TEST(ScoreChoicesTest, NeedsSomethingToConditionOn) {
  ScoringOptions options;
  EXPECT_EQ(ScoreChoices(TinyModel(), {}, {{{}, {40}}}, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The k-shot pipeline on the default AC model (real tokenizer, <AC> = 4).
class EvaluateMultipleChoiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (DefaultModelDir().empty()) return;
    auto tokenizer = model::Tokenizer::Load(DefaultModelDir());
    auto llama = model::LlamaModel::Load(DefaultModelDir(), model::LoadOptions{});
    ASSERT_TRUE(tokenizer.ok() && llama.ok());
    tokenizer_ = tokenizer->release();
    model_ = llama->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete model_;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "spm_train is not installed";
  }
  static McOptions Options(EvalMode mode, int64_t shots, int64_t limit) {
    McOptions options;
    options.shots = shots;
    options.limit = limit;
    options.demo_anchor = "<AC>";
    options.scoring.mode = mode;
    options.scoring.sequence.anchors = model::CustomAnchors({4}, 3);
    return options;
  }
  static model::Tokenizer* tokenizer_;
  static model::LlamaModel* model_;
};

model::Tokenizer* EvaluateMultipleChoiceTest::tokenizer_ = nullptr;
model::LlamaModel* EvaluateMultipleChoiceTest::model_ = nullptr;

TEST_F(EvaluateMultipleChoiceTest, EncodeChoiceSplitsLikeLmEval) {
  auto pair = EncodeChoice(*tokenizer_, "The cat was hungry, therefore", " it ate the fish.");
  ASSERT_TRUE(pair.ok()) << pair.status();
  EXPECT_EQ(pair->context, tokenizer_->Encode("The cat was hungry, therefore", false));
  std::vector<int32_t> joined = pair->context;
  joined.insert(joined.end(), pair->continuation.begin(), pair->continuation.end());
  EXPECT_EQ(joined, tokenizer_->Encode("The cat was hungry, therefore it ate the fish.", false));
  EXPECT_FALSE(EncodeChoice(*tokenizer_, "context", "").ok());
}

TEST_F(EvaluateMultipleChoiceTest, AccuracyAndDemonstrationAccountingByHand) {
  const McTask task = Task("copa");
  const std::vector<McItem> items = Load("query_choices.jsonl", "copa");
  const std::vector<int32_t> prefix =
      tokenizer_->Encode(DemonstrationsText(items, 1, "<AC>"), false);
  ASSERT_EQ(prefix.back(), 4);  // the demonstration ends with its anchor
  // Independent argmax over hand-summed log-probs (masked forward) for items 1..3.
  int64_t correct = 0, correct_norm = 0;
  const model::AnchorSpec anchors = model::CustomAnchors({4}, 3);
  for (size_t i = 1; i < items.size(); ++i) {
    double best = -INFINITY, best_norm = -INFINITY;
    int pick = -1, pick_norm = -1;
    for (size_t c = 0; c < items[i].num_choices(); ++c) {
      auto pair = EncodeChoice(*tokenizer_, items[i].contexts[c], items[i].continuations[c]);
      ASSERT_TRUE(pair.ok());
      std::vector<int32_t> ids = prefix;
      ids.insert(ids.end(), pair->context.begin(), pair->context.end());
      const int64_t first = static_cast<int64_t>(ids.size());
      ids.insert(ids.end(), pair->continuation.begin(), pair->continuation.end());
      double loglik = 0;
      for (double nll : ReferenceNlls(*model_, ids, first, model::BuildAnsanMask(ids, anchors))) {
        loglik -= nll;
      }
      const double norm = loglik / NormalizationLength(items[i].continuations[c]);
      if (loglik > best) best = loglik, pick = static_cast<int>(c);
      if (norm > best_norm) best_norm = norm, pick_norm = static_cast<int>(c);
    }
    correct += pick == items[i].gold;
    correct_norm += pick_norm == items[i].gold;
  }
  for (EvalMode mode : {EvalMode::kMasked, EvalMode::kAnchor}) {
    auto report = EvaluateMultipleChoice(*model_, *tokenizer_, task, items, Options(mode, 1, -1));
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->items, 3);
    EXPECT_EQ(report->choices_scored, 2 + 2 + 4);
    EXPECT_DOUBLE_EQ(report->accuracy, static_cast<double>(correct) / 3);
    ASSERT_TRUE(report->accuracy_norm.has_value());
    EXPECT_DOUBLE_EQ(*report->accuracy_norm, static_cast<double>(correct_norm) / 3);
    EXPECT_EQ(report->demo_tokens, static_cast<int64_t>(prefix.size()));
    EXPECT_EQ(report->demo_anchors, 1);
    ASSERT_TRUE(report->compression.has_value());
    EXPECT_DOUBLE_EQ(*report->compression, 1.0 - 1.0 / static_cast<double>(prefix.size()));
    EXPECT_EQ(report->speedup.has_value(), mode == EvalMode::kAnchor);
    EXPECT_FALSE(report->continuation_ppl.has_value());
    if (mode == EvalMode::kAnchor) {
      // Scoring from a fork of the anchor-compressed demonstrations gives the same numbers.
      ASSERT_TRUE(report->cached_max_diff.has_value());
      EXPECT_EQ(*report->cached_max_diff, 0.0);
      EXPECT_GT(report->seconds_anchor_cached, 0);
      EXPECT_GT(report->seconds_full_cached, 0);
      ASSERT_TRUE(report->kv_after_demos.has_value());
      EXPECT_EQ(*report->kv_after_demos, 1);  // only the demonstration's anchor survives
    } else {
      EXPECT_FALSE(report->kv_after_demos.has_value());
    }
  }
}

TEST_F(EvaluateMultipleChoiceTest, LimitBosAndZeroShot) {
  const std::vector<McItem> items = Load("query_choices.jsonl", "arc_easy");
  McOptions options = Options(EvalMode::kMasked, 0, 2);
  options.add_bos = true;
  auto report = EvaluateMultipleChoice(*model_, *tokenizer_, Task("arc_easy"), items, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->items, 2);
  EXPECT_EQ(report->demo_tokens, 0);  // the BOS is not a demonstration token
  EXPECT_FALSE(report->compression.has_value());
}

TEST_F(EvaluateMultipleChoiceTest, LambadaIsGreedyMatchOfTheWholeContinuation) {
  const std::vector<McItem> items = Load("language_modeling.jsonl", "lambada");
  const model::AnchorSpec anchors = model::CustomAnchors({4}, 3);
  const int64_t vocab = model_->config().vocab_size;
  int64_t greedy = 0;
  double loglik_sum = 0;
  for (const McItem& item : items) {
    auto pair = EncodeChoice(*tokenizer_, item.contexts[0], item.continuations[0]);
    ASSERT_TRUE(pair.ok());
    std::vector<int32_t> ids = pair->context;
    ids.insert(ids.end(), pair->continuation.begin(), pair->continuation.end());
    std::vector<int32_t> positions(ids.size());
    std::iota(positions.begin(), positions.end(), 0);
    auto logits = model_->ForwardFull(ids, positions, model::BuildAnsanMask(ids, anchors));
    ASSERT_TRUE(logits.ok());
    bool all = true;
    for (size_t t = pair->context.size(); t < ids.size(); ++t) {
      const float* row = logits->data() + (t - 1) * vocab;
      all = all && std::max_element(row, row + vocab) - row == ids[t];
      loglik_sum -= testing::ReferenceNll(*logits, vocab, static_cast<int64_t>(t) - 1, ids[t]);
    }
    greedy += all ? 1 : 0;
  }
  auto report = EvaluateMultipleChoice(*model_, *tokenizer_, Task("lambada"), items,
                                       Options(EvalMode::kMasked, 0, -1));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->items, 3);
  EXPECT_DOUBLE_EQ(report->accuracy, static_cast<double>(greedy) / 3);
  EXPECT_FALSE(report->accuracy_norm.has_value());
  ASSERT_TRUE(report->continuation_ppl.has_value());
  EXPECT_NEAR(std::log(*report->continuation_ppl), -loglik_sum / 3, 1e-6);
}

TEST_F(EvaluateMultipleChoiceTest, NoItemLeftIsAnError) {
  const std::vector<McItem> items = Load("schema.jsonl", "winogrande");
  auto report = EvaluateMultipleChoice(*model_, *tokenizer_, Task("winogrande"), items,
                                       Options(EvalMode::kMasked, 3, -1));
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("3 items"), std::string::npos) << report.status();
}

}  // namespace
}  // namespace anchorserve::eval
