// The committed default model (models/anllm-ac-20m) is a trained AnLLM-AC, not noise: it
// loads, declares <AC> anchors, predicts held-out English far better than chance in full and
// in anchor mode, and closes sentences with <AC> when it generates.
#include <cmath>
#include <string>
#include <vector>

#include "eval/ppl.h"
#include "eval/scoring.h"
#include "gtest/gtest.h"
#include "model/anchor_sequence.h"
#include "model/anchors.h"
#include "model/llama.h"
#include "model/tokenizer.h"

namespace anchorserve::eval {
namespace {

const std::string kModel = std::string(ANCHORSERVE_TEST_DATA_DIR) + "/../../models/anllm-ac-20m";

// Two paragraphs in the style of the training books, written for this test (not in the data).
constexpr char kText[] =
    "The rain had stopped by the time the coach reached the village. The driver climbed down, "
    "opened the door, and helped the old lady to the ground. She thanked him, looked about "
    "her for a moment, and then walked slowly towards the inn.\n"
    "\"I have been here before,\" she said to the landlord, who came out to meet her. \"It was "
    "many years ago, when I was a little girl, and my father kept the mill by the river.\" The "
    "landlord bowed and said that he remembered the mill very well.\n";

TEST(EmbeddedModelTest, IsATrainedAcModel) {
  auto tokenizer = model::Tokenizer::Load(kModel);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto config = model::LoadModelConfig(kModel);
  ASSERT_TRUE(config.ok()) << config.status();
  auto anchors = model::DetectAnchors(kModel, *config, tokenizer->get());
  ASSERT_TRUE(anchors.ok()) << anchors.status();
  EXPECT_EQ(anchors->kind, model::AnchorKind::kAc);
  auto model = model::LlamaModel::Load(kModel, {});
  ASSERT_TRUE(model.ok()) << model.status();

  const std::string text = InsertAnchorsPerLine(kText, "<AC>");
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text, /*add_bos=*/true);
  ASSERT_GT(ids.size(), 100u);
  for (EvalMode mode : {EvalMode::kFull, EvalMode::kAnchor}) {
    ScoringOptions options;
    options.mode = mode;
    options.sequence.anchors = *anchors;
    options.chunk = 8;
    auto scores = ScoreSequence(**model, ids, 1, options);
    ASSERT_TRUE(scores.ok()) << scores.status();
    double nll = 0;
    for (double v : scores->nll) nll += v;
    const double ppl = std::exp(nll / static_cast<double>(scores->nll.size()));
    // Uniform over 8192 pieces would be 8192; the trained model is near 50 on held-out books.
    EXPECT_LT(ppl, 150) << EvalModeName(mode);
  }

  // It learned where anchors go: after a finished sentence <AC> is its first choice.
  model::SequenceOptions sequence;
  sequence.mode = model::AttentionMode::kAnchor;
  sequence.anchors = *anchors;
  for (const char* prompt : {"The captain opened the letter and read it twice.",
                             "She thanked him and walked slowly towards the inn."}) {
    auto seq = model::AnchorSequence::Create(model->get(), sequence);
    ASSERT_TRUE(seq.ok());
    auto logits = (*seq)->Feed((*tokenizer)->Encode(prompt, true), false);
    ASSERT_TRUE(logits.ok());
    int32_t best = 0;
    for (int32_t v = 1; v < config->vocab_size; ++v) {
      if ((*logits)[v] > (*logits)[best]) best = v;
    }
    EXPECT_TRUE(anchors->IsAnchor(best)) << prompt << " -> " << (*tokenizer)->IdToPiece(best);
  }
}

}  // namespace
}  // namespace anchorserve::eval
