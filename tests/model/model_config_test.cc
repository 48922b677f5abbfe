#include "model/model_config.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/remove_tree.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace anchorserve::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// meta-llama/Llama-2-7b-hf config.json, as published.
constexpr char kLlama2_7B[] = R"({
  "_name_or_path": "meta-llama/Llama-2-7b-hf",
  "architectures": [
    "LlamaForCausalLM"
  ],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pad_token_id": 0,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}
)";

// A Llama-3-8B-Instruct style GQA config: 8 KV heads, large theta, eos list, no pad.
constexpr char kGqa[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "vocab_size": 128256
})";

// The smallest config that parses; tests edit it.
constexpr char kMinimal[] = R"({"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,)"
                            R"( "num_hidden_layers": 2, "num_attention_heads": 4})";

// kMinimal with `extra` (a `"key": value` list) spliced in.
std::string Minimal(const std::string& extra) {
  std::string text = kMinimal;
  text.pop_back();
  return absl::StrCat(text, ", ", extra, "}");
}

TEST(ModelConfigTest, Llama2_7B) {
  auto config = ParseModelConfig(kLlama2_7B, "llama2/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->vocab_size, 32000);
  EXPECT_EQ(config->hidden_size, 4096);
  EXPECT_EQ(config->intermediate_size, 11008);
  EXPECT_EQ(config->num_hidden_layers, 32);
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 32);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(config->pad_token_id, 0);
  EXPECT_EQ(config->torch_dtype, "float16");
}

TEST(ModelConfigTest, GroupedQueryAttention) {
  auto config = ParseModelConfig(kGqa, "gqa.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_attention_heads, 32);
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);
  EXPECT_EQ(config->bos_token_id, 128000);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(128001, 128009));
  EXPECT_EQ(config->pad_token_id, -1);
  EXPECT_EQ(config->torch_dtype, "bfloat16");
}

TEST(ModelConfigTest, DefaultsForOldConfigs) {
  auto config = ParseModelConfig(kMinimal, "old.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 4);  // = num_attention_heads
  EXPECT_EQ(config->head_dim, 16);            // = hidden / heads
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(config->rope_theta, 10000.0);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(config->pad_token_id, -1);
  EXPECT_EQ(config->torch_dtype, "");
}

TEST(ModelConfigTest, TokenIdSpellings) {
  auto config = ParseModelConfig(Minimal(R"("eos_token_id": [2, 7], "pad_token_id": null)"), "x");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2, 7));
  EXPECT_EQ(config->pad_token_id, -1);

  config = ParseModelConfig(Minimal(R"("eos_token_id": 5, "pad_token_id": -1)"), "x");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(5));
  EXPECT_EQ(config->pad_token_id, -1);

  config = ParseModelConfig(Minimal(R"("eos_token_id": [9], "bos_token_id": null)"), "x");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(9));
  EXPECT_EQ(config->bos_token_id, -1);
}

TEST(ModelConfigTest, ExplicitHeadDimNeedNotMatchHidden) {
  // Mistral-Nemo style: 5120 / 32 = 160 but head_dim 128.
  auto config = ParseModelConfig(
      R"({"vocab_size": 1000, "hidden_size": 5120, "intermediate_size": 128, "head_dim": 128,
          "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8})",
      "x");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 128);
}

// What transformers 5.17 save_pretrained writes (checked on the GPU machine).
constexpr char kTransformers5Saved[] = R"({
  "architectures": [
    "LlamaForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "dtype": "bfloat16",
  "eos_token_id": [
    2,
    3
  ],
  "head_dim": 16,
  "hidden_act": "silu",
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 128,
  "max_position_embeddings": 64,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "pad_token_id": null,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "rope_theta": 500000.0,
    "rope_type": "default"
  },
  "tie_word_embeddings": false,
  "transformers_version": "5.17.0",
  "use_cache": true,
  "vocab_size": 128
}
)";

TEST(ModelConfigTest, Transformers5SavedConfig) {
  auto config = ParseModelConfig(kTransformers5Saved, "t5/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  EXPECT_EQ(config->num_key_value_heads, 2);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2, 3));
  EXPECT_EQ(config->pad_token_id, -1);
}

TEST(ModelConfigTest, Transformers5RopeParametersAndDtype) {
  auto config = ParseModelConfig(
      Minimal(R"("rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},)"
              R"( "dtype": "bfloat16")"),
      "x");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rope_theta, 500000.0);
  EXPECT_EQ(config->torch_dtype, "bfloat16");

  // Both spellings, agreeing.
  config = ParseModelConfig(
      Minimal(R"("rope_theta": 20000, "rope_parameters": {"rope_theta": 20000.0}, )"
              R"("rope_scaling": {"rope_type": "default"})"),
      "x");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_DOUBLE_EQ(config->rope_theta, 20000.0);
}

struct ErrorCase {
  std::string text;
  std::string field;  // must appear in the message
};

TEST(ModelConfigTest, ErrorsNameFieldAndSource) {
  const std::vector<ErrorCase> cases = {
      // Missing required fields.
      {R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4})",
       "vocab_size"},
      {R"({"vocab_size": 10, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4})",
       "hidden_size"},
      {R"({"vocab_size": 10, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4})",
       "intermediate_size"},
      {R"({"vocab_size": 10, "hidden_size": 64, "intermediate_size": 128,
           "num_attention_heads": 4})",
       "num_hidden_layers"},
      {R"({"vocab_size": 10, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2})",
       "num_attention_heads"},
      {R"({"vocab_size": null, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4})",
       "vocab_size"},
      // Wrong types.
      {Minimal(R"("num_key_value_heads": "4")"), "num_key_value_heads"},
      {Minimal(R"("max_position_embeddings": 4096.5)"), "max_position_embeddings"},
      {Minimal(R"("tie_word_embeddings": "false")"), "tie_word_embeddings"},
      {Minimal(R"("rms_norm_eps": "1e-5")"), "rms_norm_eps"},
      {Minimal(R"("eos_token_id": "2")"), "eos_token_id"},
      {Minimal(R"("eos_token_id": [2, "x"])"), "eos_token_id"},
      {Minimal(R"("pad_token_id": 4294967296)"), "pad_token_id"},
      {Minimal(R"("torch_dtype": 16)"), "torch_dtype"},
      {Minimal(R"("head_dim": 99999999999999999999)"), "head_dim"},
      // Unsupported architecture features.
      {Minimal(R"("rope_scaling": {"type": "linear", "factor": 2.0})"), "rope_scaling"},
      {Minimal(R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0})"), "rope_scaling"},
      {Minimal(R"("rope_scaling": "yes")"), "rope_scaling"},
      {Minimal(R"("rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4})"),
       "rope_parameters"},
      {Minimal(R"("rope_parameters": {"full_attention": {"rope_type": "default"}})"),
       "rope_parameters"},
      {Minimal(R"("rope_parameters": 5)"), "rope_parameters"},
      {Minimal(R"("rope_theta": 10000, "rope_parameters": {"rope_theta": 500000})"),
       "rope_parameters"},
      {Minimal(R"("hidden_act": "gelu")"), "hidden_act"},
      {Minimal(R"("model_type": "mistral")"), "model_type"},
      {Minimal(R"("attention_bias": true)"), "attention_bias"},
      {Minimal(R"("mlp_bias": true)"), "mlp_bias"},
      {Minimal(R"("quantization_config": {"quant_method": "gptq"})"), "quantization_config"},
      // Values the model cannot run with.
      {Minimal(R"("num_key_value_heads": 3)"), "num_key_value_heads"},
      {Minimal(R"("num_key_value_heads": 0)"), "num_key_value_heads"},
      {Minimal(R"("head_dim": 15)"), "head_dim"},
      {Minimal(R"("max_position_embeddings": 0)"), "max_position_embeddings"},
      {Minimal(R"("rms_norm_eps": 0)"), "rms_norm_eps"},
      {Minimal(R"("rope_theta": -1)"), "rope_theta"},
      {Minimal(R"("eos_token_id": 1000)"), "eos_token_id"},
      {Minimal(R"("eos_token_id": [])"), "eos_token_id"},
      {Minimal(R"("eos_token_id": null)"), "eos_token_id"},
      {Minimal(R"("bos_token_id": -5)"), "bos_token_id"},
      {Minimal(R"("pad_token_id": 1000)"), "pad_token_id"},
      {absl::StrReplaceAll(kMinimal, {{"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 0"}}),
       "num_hidden_layers"},
      {absl::StrReplaceAll(kMinimal,
                           {{"\"num_attention_heads\": 4", "\"num_attention_heads\": 0"}}),
       "num_attention_heads"},
      {absl::StrReplaceAll(kMinimal, {{"\"hidden_size\": 64", "\"hidden_size\": 66"}}),
       "hidden_size"},
      {absl::StrReplaceAll(kMinimal, {{"\"vocab_size\": 1000", "\"vocab_size\": -1"}}),
       "vocab_size"},
  };
  for (const ErrorCase& c : cases) {
    auto config = ParseModelConfig(c.text, "/models/x/config.json");
    ASSERT_FALSE(config.ok()) << c.text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(config.status().message(), HasSubstr("/models/x/config.json")) << c.text;
    EXPECT_THAT(config.status().message(), HasSubstr("\"" + c.field + "\"")) << c.text;
  }
}

TEST(ModelConfigTest, NotAJsonObject) {
  const std::string nul_then_junk = std::string(kLlama2_7B) + std::string(1, '\0') + "junk";
  for (const std::string& text :
       {std::string(), std::string("{"), std::string("[1, 2]"), std::string("null"),
        std::string("{\"vocab_size\": 1,}"), nul_then_junk}) {
    auto config = ParseModelConfig(text, "bad.json");
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(config.status().message(), HasSubstr("bad.json")) << text;
  }
}

TEST(ModelConfigTest, ValidateDirectly) {
  ModelConfig config;
  EXPECT_EQ(ValidateModelConfig(config).code(), absl::StatusCode::kInvalidArgument);
  auto parsed = ParseModelConfig(kLlama2_7B, "x");
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(ValidateModelConfig(*parsed).ok());
  config = *parsed;
  config.num_key_value_heads = 5;
  EXPECT_THAT(ValidateModelConfig(config).message(), HasSubstr("num_key_value_heads"));
  config = *parsed;
  config.rope_theta = std::numeric_limits<double>::infinity();
  EXPECT_THAT(ValidateModelConfig(config).message(), HasSubstr("rope_theta"));
}

TEST(ModelConfigTest, ToJsonRoundTripsAndLooksLikeTransformers) {
  for (const std::string& text :
       {std::string(kLlama2_7B), std::string(kGqa),
        Minimal(R"("bos_token_id": null, "tie_word_embeddings": true)")}) {
    auto config = ParseModelConfig(text, "in");
    ASSERT_TRUE(config.ok()) << config.status();
    const std::string json = ModelConfigToJson(*config);
    auto again = ParseModelConfig(json, "out");
    ASSERT_TRUE(again.ok()) << again.status() << "\n" << json;
    EXPECT_EQ(*again, *config) << json;
  }
  auto config = ParseModelConfig(kLlama2_7B, "in");
  ASSERT_TRUE(config.ok());
  const std::string json = ModelConfigToJson(*config);
  for (const char* expected :
       {"{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n  \"attention_bias\": false,",
        "\"model_type\": \"llama\"", "\"hidden_act\": \"silu\"", "\"mlp_bias\": false",
        "\"rope_scaling\": null", "\"rope_theta\": 10000.0", "\"rms_norm_eps\": 1e-05",
        "\"eos_token_id\": 2,", "\"pad_token_id\": 0,", "\"head_dim\": 128,",
        "\"torch_dtype\": \"float16\",", "\"vocab_size\": 32000\n}\n"}) {
    EXPECT_THAT(json, HasSubstr(expected)) << json;
  }
  config->eos_token_ids = {2, 3};
  config->pad_token_id = -1;
  config->torch_dtype = "";
  const std::string json2 = ModelConfigToJson(*config);
  EXPECT_THAT(json2, HasSubstr("\"eos_token_id\": [\n    2,\n    3\n  ],"));
  EXPECT_THAT(json2, HasSubstr("\"pad_token_id\": null,"));
  EXPECT_THAT(json2, ::testing::Not(HasSubstr("torch_dtype")));
}

TEST(ModelConfigTest, LoadFromDirectory) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "model_config_test_load";
  anchorserve::RemoveTree(dir);
  std::filesystem::create_directories(dir);

  auto missing = LoadModelConfig(dir.string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr((dir / "config.json").string()));

  std::ofstream(dir / "config.json") << kLlama2_7B;
  auto config = LoadModelConfig(dir.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hidden_size, 4096);

  std::ofstream(dir / "config.json") << R"({"vocab_size": 5})";
  config = LoadModelConfig(dir.string());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr((dir / "config.json").string()));
  EXPECT_THAT(config.status().message(), HasSubstr("hidden_size"));
}

}  // namespace
}  // namespace anchorserve::model
