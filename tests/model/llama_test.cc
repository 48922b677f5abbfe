// HF parity: our forward against transformers' LlamaForCausalLM (eager, fp32) on tiny random
// models made by scripts/device/make_hf_fixtures.py, with causal and AnSAN 4-D masks.
#include "model/llama.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "model/anchor_sequence.h"
#include "model/ansan_mask.h"
#include "model/checkpoint_convert.h"
#include "model/safetensors.h"
#include "tests/model/test_util.h"

namespace anchorserve::model {
namespace {

using ::anchorserve::testing::MaxAbsDiff;
using ::anchorserve::testing::Positions;
using ::anchorserve::testing::ReadJson;
using ::anchorserve::testing::Row;
using ::anchorserve::testing::TestData;

constexpr double kHfTolerance = 1e-4;

std::vector<float> Flatten(const nlohmann::json& rows) {
  std::vector<float> out;
  for (const auto& row : rows) {
    for (const auto& v : row) out.push_back(v.get<float>());
  }
  return out;
}

void ExpectParity(const LlamaModel& model, const nlohmann::json& fixture) {
  const auto causal_ids = fixture["causal_token_ids"].get<std::vector<int32_t>>();
  auto causal = model.ForwardFull(causal_ids, Positions(causal_ids.size()),
                                  BuildCausalMask(causal_ids.size()));
  ASSERT_TRUE(causal.ok()) << causal.status();
  EXPECT_LE(MaxAbsDiff(*causal, Flatten(fixture["causal_logits"])), kHfTolerance);

  ASSERT_TRUE(fixture.contains("ansan_logits"));
  const auto ids = fixture["token_ids"].get<std::vector<int32_t>>();
  const AnchorSpec spec =
      CustomAnchors(fixture["anchor_ids"].get<std::vector<int32_t>>(), fixture["pad_id"].get<int32_t>());
  auto ansan = model.ForwardFull(ids, Positions(ids.size()), BuildAnsanMask(ids, spec));
  ASSERT_TRUE(ansan.ok()) << ansan.status();
  // Pad rows included: both sides turn a fully blocked row into uniform attention.
  EXPECT_LE(MaxAbsDiff(*ansan, Flatten(fixture["ansan_logits"])), kHfTolerance);
  // The AnSAN mask must matter, or this comparison proves nothing.
  const std::vector<float> hf_ansan = Flatten(fixture["ansan_logits"]);
  const std::vector<float> hf_causal = Flatten(fixture["causal_logits"]);
  const int64_t vocab = model.config().vocab_size;
  EXPECT_GT(MaxAbsDiff(Row(hf_ansan, vocab, 10), Row(hf_causal, vocab, 10)), 1e-2);
}

class HfParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParityTest, ForwardMatchesTransformers) {
  const std::string dir = TestData(GetParam());
  auto model = LlamaModel::Load(dir, LoadOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectParity(**model, ReadJson(dir + "/logits.json"));
}

TEST_P(HfParityTest, IncrementalPathsMatchTransformers) {
  const std::string dir = TestData(GetParam());
  auto model = LlamaModel::Load(dir, LoadOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  const nlohmann::json fixture = ReadJson(dir + "/logits.json");
  const int64_t vocab = (*model)->config().vocab_size;
  const auto causal_ids = fixture["causal_token_ids"].get<std::vector<int32_t>>();
  const std::vector<float> hf_causal = Flatten(fixture["causal_logits"]);
  const std::vector<float> hf_ansan = Flatten(fixture["ansan_logits"]);
  for (AttentionMode mode : {AttentionMode::kFull, AttentionMode::kAnchor}) {
    SequenceOptions options;
    options.mode = mode;
    options.anchors = CustomAnchors(fixture["anchor_ids"].get<std::vector<int32_t>>(), 1);
    auto seq = AnchorSequence::Create(model->get(), options);
    ASSERT_TRUE(seq.ok());
    for (size_t i = 0; i < causal_ids.size(); ++i) {
      auto logits = (*seq)->Feed({&causal_ids[i], 1}, false);
      ASSERT_TRUE(logits.ok()) << logits.status();
      const auto& want = mode == AttentionMode::kFull ? hf_causal : hf_ansan;
      EXPECT_LE(MaxAbsDiff(*logits, Row(want, vocab, i)), kHfTolerance)
          << AttentionModeName(mode) << " position " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TinyModels, HfParityTest,
                         ::testing::Values("hf_tiny_mha", "hf_tiny_gqa"));

TEST(CheckpointConvertTest, ReleasedBinLayoutConvertsAndMatches) {
  const std::string out = ::testing::TempDir() + "/converted_bin";
  std::filesystem::remove_all(out);
  ASSERT_TRUE(ConvertTorchCheckpoint(TestData("hf_tiny_bin"), out, 1 << 20).ok());
  ASSERT_TRUE(std::filesystem::exists(out + "/config.json"));
  auto checkpoint = Checkpoint::Open(out);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto embed = (*checkpoint)->Get("model.embed_tokens.weight");
  ASSERT_TRUE(embed.ok());
  EXPECT_EQ(embed->dtype, DType::kBF16);  // dtype kept
  auto model = LlamaModel::Load(out, LoadOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectParity(**model, ReadJson(TestData("hf_tiny_bin/logits.json")));
}

TEST(CheckpointConvertTest, GarbageBinIsAClearError) {
  const std::string dir = ::testing::TempDir() + "/garbage_bin";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/pytorch_model.bin") << "not a zip archive";
  auto status = ConvertTorchCheckpoint(dir, dir + "/out", 1 << 20);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("pytorch_model.bin"), std::string::npos) << status;
}

// Copies hf_tiny_mha into a temp dir, dropping or reshaping one tensor.
std::string BrokenCopy(const std::string& name, const std::string& drop, bool reshape) {
  const std::string src = TestData("hf_tiny_mha");
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
  auto file = SafetensorsFile::Open(src + "/model.safetensors");
  EXPECT_TRUE(file.ok());
  std::vector<TensorData> tensors;
  for (const std::string& tensor : (*file)->TensorNames()) {
    if (tensor == drop && !reshape) continue;
    TensorView v = *(*file)->Get(tensor);
    TensorData t{tensor, v.dtype, v.shape, std::vector<uint8_t>(v.data, v.data + v.nbytes)};
    if (tensor == drop) t.shape = {v.shape[0] * v.shape[1]};
    tensors.push_back(std::move(t));
  }
  std::vector<const TensorData*> refs;
  for (const auto& t : tensors) refs.push_back(&t);
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", refs).ok());
  return dir;
}

TEST(LlamaLoadTest, MissingTensorIsNamed) {
  const std::string dir = BrokenCopy("missing_tensor", "model.layers.1.mlp.up_proj.weight", false);
  auto model = LlamaModel::Load(dir, LoadOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("model.layers.1.mlp.up_proj.weight"), std::string::npos)
      << model.status();
}

TEST(LlamaLoadTest, WrongShapeIsNamed) {
  const std::string dir = BrokenCopy("bad_shape", "model.layers.0.self_attn.k_proj.weight", true);
  auto model = LlamaModel::Load(dir, LoadOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("model.layers.0.self_attn.k_proj.weight"),
            std::string::npos)
      << model.status();
}

TEST(LlamaLoadTest, MissingDirectoryIsAnError) {
  auto model = LlamaModel::Load(::testing::TempDir() + "/no_such_model", LoadOptions{});
  EXPECT_FALSE(model.ok());
}

TEST(LlamaLoadTest, CudaWithoutGpuIsFailedPrecondition) {
  if (CudaAvailable()) GTEST_SKIP() << "a GPU is present";
  LoadOptions options;
  options.device = Device::kCuda;
  auto model = LlamaModel::Load(TestData("hf_tiny_mha"), options);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(LlamaForwardTest, RejectsIdsOutsideVocabulary) {
  auto model = LlamaModel::Load(TestData("hf_tiny_mha"), LoadOptions{});
  ASSERT_TRUE(model.ok());
  const std::vector<int32_t> ids = {1, 128};
  auto logits = (*model)->ForwardFull(ids, Positions(2), BuildCausalMask(2));
  ASSERT_FALSE(logits.ok());
  EXPECT_EQ(logits.status().code(), absl::StatusCode::kInvalidArgument);
}

// bf16 on the device against the fp32 CPU result (runs only where a GPU is visible).
TEST(LlamaForwardTest, Bf16OnGpuTracksFp32Cpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no GPU in this build or machine";
  const std::string dir = TestData("hf_tiny_mha");
  auto cpu = LlamaModel::Load(dir, LoadOptions{});
  LoadOptions gpu_options;
  gpu_options.device = Device::kCuda;
  gpu_options.precision = Precision::kBFloat16;
  auto gpu = LlamaModel::Load(dir, gpu_options);
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  const nlohmann::json fixture = ReadJson(dir + "/logits.json");
  const auto ids = fixture["token_ids"].get<std::vector<int32_t>>();
  const AnchorSpec spec = CustomAnchors({5}, 1);
  const AttentionMask mask = BuildAnsanMask(ids, spec);
  auto a = (*cpu)->ForwardFull(ids, Positions(ids.size()), mask);
  auto b = (*gpu)->ForwardFull(ids, Positions(ids.size()), mask);
  ASSERT_TRUE(a.ok() && b.ok());
  double scale = 0;
  for (float v : *a) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  EXPECT_LE(MaxAbsDiff(*a, *b), 2e-2 * std::max(1.0, scale));
}

// bf16 on the GPU through the anchor-cached incremental path against the fp32 CPU masked
// forward: the 2e-2 bound, on the fixture model whose logits are O(1).
TEST(LlamaForwardTest, Bf16GpuAnchorPathTracksFp32Cpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no GPU in this build or machine";
  const std::string dir = TestData("hf_tiny_mha");
  auto cpu = LlamaModel::Load(dir, LoadOptions{});
  LoadOptions gpu_options;
  gpu_options.device = Device::kCuda;
  gpu_options.precision = Precision::kBFloat16;
  auto gpu = LlamaModel::Load(dir, gpu_options);
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  const nlohmann::json fixture = ReadJson(dir + "/logits.json");
  const auto ids = fixture["causal_token_ids"].get<std::vector<int32_t>>();
  SequenceOptions options;
  options.anchors = CustomAnchors({5}, 1);
  auto reference = (*cpu)->ForwardFull(ids, Positions(ids.size()), BuildAnsanMask(ids, options.anchors));
  ASSERT_TRUE(reference.ok());
  auto seq = AnchorSequence::Create(gpu->get(), options);
  const int64_t vocab = (*cpu)->config().vocab_size;
  double worst = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto logits = (*seq)->Feed({&ids[i], 1}, false);
    ASSERT_TRUE(logits.ok()) << logits.status();
    worst = std::max(worst, MaxAbsDiff(*logits, Row(*reference, vocab, i)));
  }
  RecordProperty("max_abs_diff", std::to_string(worst));
  std::printf("bf16 GPU anchor path vs fp32 CPU: max |diff| = %.4g\n", worst);
  EXPECT_LE(worst, 2e-2);
}

}  // namespace
}  // namespace anchorserve::model
