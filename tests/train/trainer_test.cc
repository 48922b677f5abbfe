#include "train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/remove_tree.h"
#include "gtest/gtest.h"
#include "model/ansan_mask.h"
#include "model/anchors.h"
#include "model/default_model.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "train/prepare.h"
#include "train/token_dataset.h"

namespace anchorserve::train {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A tiny model directory and corpus, shared by the tests of this file.
class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(::testing::TempDir() + "/trainer_" + std::to_string(getpid()));
    anchorserve::RemoveTree(*dir_);
    model::DefaultModelOptions model;
    model.out_dir = *dir_ + "/model";
    model.hidden_size = 64;
    model.num_layers = 2;
    model.num_heads = 4;
    model.num_kv_heads = 2;
    model.intermediate_size = 128;
    model.tokenizer_vocab_size = 512;
    status_ = new absl::Status(model::WriteDefaultModel(model));
    if (!status_->ok()) return;
    std::ofstream corpus(*dir_ + "/corpus.txt");
    // Several documents of repetitive text: a handful of steps visibly lowers the loss.
    for (int d = 0; d < 6; ++d) {
      corpus << model::SyntheticCorpus(static_cast<uint64_t>(d), 6000) << "\n<|endoftext|>\n";
    }
  }
  static void TearDownTestSuite() {
    anchorserve::RemoveTree(*dir_);
    delete dir_;
    delete status_;
  }
  void SetUp() override {
    if (!status_->ok() && status_->message().find("spm_train") != std::string::npos) {
      GTEST_SKIP() << "spm_train is not installed";
    }
    ASSERT_TRUE(status_->ok()) << *status_;
  }

  static std::string Prepare(const std::string& anchors) {
    const std::string out = *dir_ + "/data-" + anchors;
    if (fs::exists(out + "/index.json")) return out;
    PrepareOptions o;
    o.input_files = {*dir_ + "/corpus.txt"};
    o.tokenizer_dir = *dir_ + "/model";
    o.output_dir = out;
    o.anchors = anchors;
    auto result = PrepareCorpus(o);
    EXPECT_TRUE(result.ok()) << result.status();
    return out;
  }

  static TrainOptions Tiny(const std::string& out) {
    TrainOptions o;
    o.data_dir = Prepare("none");
    o.out_dir = out;
    o.tokenizer_dir = *dir_ + "/model";
    auto config = model::LoadModelConfig(*dir_ + "/model");
    EXPECT_TRUE(config.ok());
    o.config = *config;
    o.seq_len = 64;
    o.batch_size = 4;
    o.max_steps = 30;
    o.warmup_steps = 3;
    o.lr = 3e-3;
    o.log_every = 5;
    o.eval_every = 0;
    o.save_bf16 = false;
    o.log = [](const std::string&) {};
    return o;
  }

  static std::string* dir_;
  static absl::Status* status_;
};
std::string* TrainerTest::dir_ = nullptr;
absl::Status* TrainerTest::status_ = nullptr;

// Windows with anchors, and pads closing the second row: every non-pad logit of the training
// forward must equal the serving forward under the model core's AnSAN mask.
TEST_F(TrainerTest, TrainingForwardEqualsServingForwardUnderTheAnsanMask) {
  const std::string dir = *dir_ + "/model";
  auto tokenizer = model::Tokenizer::Load(dir);
  ASSERT_TRUE(tokenizer.ok());
  const int32_t ac = *(*tokenizer)->TokenToId("<AC>");
  const int32_t pad = (*tokenizer)->pad_id();
  std::vector<int32_t> a = (*tokenizer)->Encode("The captain read the letter. <AC> He sat by the "
                                                "window. <AC> The river was quiet", true);
  std::vector<int32_t> b = (*tokenizer)->Encode("Anna smiled. <AC> Tom", true);
  ASSERT_GT(a.size(), b.size() + 3);
  const size_t real_b = b.size();
  b.resize(a.size(), pad);
  ASSERT_GE(std::count(a.begin(), a.end(), ac), 2);

  auto config = model::LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  auto serving = model::LlamaModel::Load(dir, {});
  ASSERT_TRUE(serving.ok());
  auto spec = model::DetectAnchors(dir, *config, tokenizer->get());
  ASSERT_TRUE(spec.ok());
  const int64_t vocab = config->vocab_size;
  const int64_t len = static_cast<int64_t>(a.size());

  for (AttentionImpl impl : {AttentionImpl::kEager, AttentionImpl::kFused}) {
    for (const std::string anchors : {"ac", "none"}) {
      auto logits = TrainingLogits(dir, {a, b}, anchors, impl);
      ASSERT_TRUE(logits.ok()) << logits.status();
      ASSERT_EQ(static_cast<int64_t>(logits->size()), 2 * len * vocab);
      for (int row = 0; row < 2; ++row) {
        const std::vector<int32_t>& ids = row == 0 ? a : b;
        const int64_t real = row == 0 ? len : static_cast<int64_t>(real_b);
        std::vector<int32_t> positions(ids.size());
        for (size_t i = 0; i < ids.size(); ++i) positions[i] = static_cast<int32_t>(i);
        const model::AttentionMask mask =
            anchors == "ac" ? model::BuildAnsanMask(ids, *spec) : model::BuildCausalMask(len);
        auto want = (*serving)->ForwardFull(ids, positions, mask);
        ASSERT_TRUE(want.ok()) << want.status();
        double worst = 0;
        for (int64_t i = 0; i < real; ++i) {
          for (int64_t v = 0; v < vocab; ++v) {
            worst = std::max<double>(worst, std::abs((*logits)[(row * len + i) * vocab + v] -
                                                     (*want)[i * vocab + v]));
          }
        }
        EXPECT_LT(worst, 1e-4) << "row " << row << " anchors " << anchors;
      }
    }
    // The mask matters: after the first anchor, AC and causal logits differ.
    auto ac_logits = TrainingLogits(dir, {a, b}, "ac", impl);
    auto causal_logits = TrainingLogits(dir, {a, b}, "none", impl);
    ASSERT_TRUE(ac_logits.ok() && causal_logits.ok());
    const int64_t last = (len - 1) * vocab;
    EXPECT_GT(std::abs((*ac_logits)[last] - (*causal_logits)[last]), 1e-4);
  }
}

TEST_F(TrainerTest, PretrainLowersTheLossAndWritesALoadableModel) {
  TrainOptions o = Tiny(*dir_ + "/pretrained");
  o.eval_data_dir = Prepare("none");
  o.eval_windows = 4;
  auto result = Train(o);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_GE(result->curve.size(), 2u);
  EXPECT_EQ(result->steps, 30);
  EXPECT_LT(result->curve.back().loss, result->curve.front().loss - 0.5);
  EXPECT_GT(result->final_eval_loss, 0);
  EXPECT_GT(result->parameters, 0);
  auto loaded = model::LlamaModel::Load(o.out_dir, {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(fs::exists(o.out_dir + "/tokenizer.model"));
  EXPECT_NE(ReadFile(o.out_dir + "/anchor_config.json").find("\"none\""), std::string::npos);
  // One JSON line per logged step.
  const std::string log = ReadFile(o.out_dir + "/train_log.jsonl");
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), static_cast<long>(result->curve.size()));
}

TEST_F(TrainerTest, ContinueWithAcAnchorsStartsFromTheBaseAndWritesAnAcModel) {
  TrainOptions base = Tiny(*dir_ + "/base-for-ac");
  base.max_steps = 5;
  ASSERT_TRUE(Train(base).ok());
  TrainOptions o = Tiny(*dir_ + "/ac");
  o.init_dir = base.out_dir;
  o.tokenizer_dir.clear();
  o.anchors = "ac";
  o.data_dir = Prepare("ac");
  o.max_steps = 5;
  std::vector<std::string> lines;
  o.log = [&](const std::string& line) { lines.push_back(line); };
  auto result = Train(o);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(std::isfinite(result->final_loss));
  EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
    return l.find("initialised from") != std::string::npos;
  }));
  EXPECT_NE(ReadFile(o.out_dir + "/anchor_config.json").find("\"ac\""), std::string::npos);
  // AC training on data without <AC> is refused, naming the flag.
  o.data_dir = Prepare("none");
  o.out_dir = *dir_ + "/ac-wrong";
  auto wrong = Train(o);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("--anchors ac"), std::string::npos);
}

TEST_F(TrainerTest, AResumedRunEqualsAnUninterruptedOne) {
  TrainOptions straight = Tiny(*dir_ + "/straight");
  straight.max_steps = 6;
  straight.log_every = 1;
  ASSERT_TRUE(Train(straight).ok());
  TrainOptions pieces = Tiny(*dir_ + "/pieces");
  pieces.max_steps = 6;
  pieces.log_every = 1;
  pieces.stop_after = 3;
  auto first = Train(pieces);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->steps, 3);
  auto second = Train(pieces);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->steps, 6);
  EXPECT_EQ(ReadFile(straight.out_dir + "/model.safetensors"),
            ReadFile(pieces.out_dir + "/model.safetensors"));
}

TEST_F(TrainerTest, WritesShardsOfAtMostTheLimitAsBf16) {
  TrainOptions o = Tiny(*dir_ + "/sharded");
  o.max_steps = 1;
  o.save_bf16 = true;
  o.save_shard_bytes = 64 << 10;
  ASSERT_TRUE(Train(o).ok());
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(o.out_dir)) {
    if (entry.path().extension() == ".safetensors") {
      ++shards;
      EXPECT_LE(entry.file_size(), (64u << 10) + 4096u) << entry.path();  // + header
    }
  }
  EXPECT_GT(shards, 1);
  EXPECT_TRUE(fs::exists(o.out_dir + "/model.safetensors.index.json"));
  auto loaded = model::LlamaModel::Load(o.out_dir, {});
  EXPECT_TRUE(loaded.ok()) << loaded.status();
}

TEST(TrainingFlopsTest, CountsMatmulParametersAndAttention) {
  model::ModelConfig c;
  c.vocab_size = 100;
  c.hidden_size = 8;
  c.intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  // per layer: qkv 8*(8+4+4)=128, o 64, mlp 3*8*16=384 -> 576; x2 = 1152; head 800.
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(c, 10), 6.0 * (1152 + 800) + 12.0 * 2 * 8 * 10);
}

TEST(LearningScheduleTest, TimingRunsOnTheCpu) {
  model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 128;
  auto timings = TimeTrainingSteps(c, "ac", 4, 2, 32, 8, 2, model::Device::kCpu, false, 0);
  ASSERT_TRUE(timings.ok()) << timings.status();
  ASSERT_FALSE(timings->empty());
  for (const StepTiming& t : *timings) EXPECT_GT(t.tokens_per_second, 0);
}

}  // namespace
}  // namespace anchorserve::train
