#include "model/model_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace anchorserve::model {
namespace {

using Json = nlohmann::json;

// Defaults of transformers' LlamaConfig for fields that old configs leave out.
constexpr int64_t kDefaultMaxPositionEmbeddings = 2048;
constexpr double kDefaultRmsNormEps = 1e-6;
constexpr double kDefaultRopeTheta = 10000.0;
// A config.json is a few KB; anything near this is not one.
constexpr off_t kMaxConfigBytes = 16 << 20;

// Reads typed fields of the config object, turning every problem into an InvalidArgument that
// names the file and the field.
class FieldReader {
 public:
  FieldReader(const Json& object, absl::string_view source) : object_(object), source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view problem) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field \"", field, "\": ", problem));
  }

  // The value of `field`, or nullptr when absent or JSON null (both mean "use the default").
  const Json* Find(absl::string_view field) const {
    const auto it = object_.find(std::string(field));
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<std::optional<int64_t>> OptionalInt(absl::string_view field) const {
    const Json* value = Find(field);
    if (value == nullptr) return std::nullopt;
    return IntValue(field, *value);
  }

  absl::StatusOr<int64_t> RequiredInt(absl::string_view field) const {
    if (object_.find(std::string(field)) == object_.end()) {
      return Error(field, "missing required field");
    }
    const Json* value = Find(field);
    if (value == nullptr) return Error(field, "required field is null");
    return IntValue(field, *value);
  }

  absl::StatusOr<int64_t> IntValue(absl::string_view field, const Json& value) const {
    if (value.is_number_unsigned()) {
      const uint64_t v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(field, absl::StrCat("value ", v, " is too large"));
      }
      return static_cast<int64_t>(v);
    }
    if (value.is_number_integer()) return value.get<int64_t>();
    return Error(field, absl::StrCat("must be an integer, got ", value.dump()));
  }

  absl::StatusOr<double> Double(absl::string_view field, double default_value) const {
    const Json* value = Find(field);
    if (value == nullptr) return default_value;
    if (!value->is_number()) {
      return Error(field, absl::StrCat("must be a number, got ", value->dump()));
    }
    return value->get<double>();
  }

  absl::StatusOr<bool> Bool(absl::string_view field, bool default_value) const {
    const Json* value = Find(field);
    if (value == nullptr) return default_value;
    if (!value->is_boolean()) {
      return Error(field, absl::StrCat("must be true or false, got ", value->dump()));
    }
    return value->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> String(absl::string_view field) const {
    const Json* value = Find(field);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) {
      return Error(field, absl::StrCat("must be a string, got ", value->dump()));
    }
    return value->get<std::string>();
  }

  // A token id; -1 (and null / absent) mean "none".
  absl::StatusOr<int32_t> TokenId(absl::string_view field, const Json& value) const {
    ASSIGN_OR_RETURN(int64_t id, IntValue(field, value));
    if (id < -1 || id > std::numeric_limits<int32_t>::max()) {
      return Error(field, absl::StrCat("token id ", id, " is out of range"));
    }
    return static_cast<int32_t>(id);
  }

  absl::StatusOr<int32_t> OptionalTokenId(absl::string_view field, int32_t default_value) const {
    const auto it = object_.find(std::string(field));
    if (it == object_.end()) return default_value;
    if (it->is_null()) return -1;  // explicitly "no such token"
    return TokenId(field, *it);
  }

 private:
  const Json& object_;
  const absl::string_view source_;
};

// The RoPE type named by a rope_scaling / rope_parameters object ("type" is the pre-4.45
// spelling); absent means default.
std::string RopeType(const Json& object) {
  for (const char* key : {"rope_type", "type"}) {
    const auto it = object.find(key);
    if (it != object.end() && it->is_string()) return it->get<std::string>();
    if (it != object.end() && !it->is_null()) return it->dump();
  }
  return "default";
}

absl::StatusOr<ModelConfig> ParseObject(const Json& root, absl::string_view source) {
  const FieldReader reader(root, source);
  ModelConfig config;

  // What the file claims to be, before its sizes: a wrong model_type explains every later
  // error better than the errors themselves.
  ASSIGN_OR_RETURN(std::optional<std::string> model_type, reader.String("model_type"));
  if (model_type.has_value() && *model_type != "llama") {
    return reader.Error("model_type", absl::StrCat("unsupported model type \"", *model_type,
                                                   "\"; only \"llama\" is served"));
  }
  ASSIGN_OR_RETURN(std::optional<std::string> hidden_act, reader.String("hidden_act"));
  if (hidden_act.has_value() && *hidden_act != "silu") {
    return reader.Error("hidden_act", absl::StrCat("unsupported activation \"", *hidden_act,
                                                   "\"; only \"silu\" is implemented"));
  }
  for (const char* field : {"attention_bias", "mlp_bias"}) {
    ASSIGN_OR_RETURN(bool bias, reader.Bool(field, false));
    if (bias) return reader.Error(field, "biases in attention/MLP projections are unsupported");
  }
  if (reader.Find("quantization_config") != nullptr) {
    return reader.Error("quantization_config", "quantized checkpoints are unsupported");
  }

  ASSIGN_OR_RETURN(config.vocab_size, reader.RequiredInt("vocab_size"));
  ASSIGN_OR_RETURN(config.hidden_size, reader.RequiredInt("hidden_size"));
  ASSIGN_OR_RETURN(config.intermediate_size, reader.RequiredInt("intermediate_size"));
  ASSIGN_OR_RETURN(config.num_hidden_layers, reader.RequiredInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(config.num_attention_heads, reader.RequiredInt("num_attention_heads"));
  if (config.num_attention_heads <= 0) {
    return reader.Error("num_attention_heads",
                        absl::StrCat("must be positive, got ", config.num_attention_heads));
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> kv_heads, reader.OptionalInt("num_key_value_heads"));
  config.num_key_value_heads = kv_heads.value_or(config.num_attention_heads);
  ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, reader.OptionalInt("head_dim"));
  if (head_dim.has_value()) {
    config.head_dim = *head_dim;
  } else {
    if (config.hidden_size % config.num_attention_heads != 0) {
      return reader.Error(
          "hidden_size",
          absl::StrCat(config.hidden_size, " is not divisible by ", "num_attention_heads ",
                       config.num_attention_heads, " and head_dim is not given"));
    }
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> max_positions,
                   reader.OptionalInt("max_position_embeddings"));
  config.max_position_embeddings = max_positions.value_or(kDefaultMaxPositionEmbeddings);
  ASSIGN_OR_RETURN(config.rms_norm_eps, reader.Double("rms_norm_eps", kDefaultRmsNormEps));
  ASSIGN_OR_RETURN(config.tie_word_embeddings, reader.Bool("tie_word_embeddings", false));

  // RoPE: transformers <= 4.x writes top-level rope_theta plus rope_scaling (null when
  // unscaled); 5.x writes rope_parameters {"rope_type", "rope_theta"}.
  ASSIGN_OR_RETURN(config.rope_theta, reader.Double("rope_theta", kDefaultRopeTheta));
  if (const Json* scaling = reader.Find("rope_scaling"); scaling != nullptr) {
    if (!scaling->is_object() || RopeType(*scaling) != "default") {
      return reader.Error("rope_scaling",
                          absl::StrCat("RoPE scaling is unsupported, got ", scaling->dump()));
    }
  }
  if (const Json* params = reader.Find("rope_parameters"); params != nullptr) {
    if (!params->is_object()) {
      return reader.Error("rope_parameters",
                          absl::StrCat("must be an object, got ", params->dump()));
    }
    for (const auto& [key, value] : params->items()) {
      if (value.is_object()) {  // per-layer-type RoPE ({"full_attention": {...}, ...})
        return reader.Error("rope_parameters",
                            absl::StrCat("per-layer RoPE (\"", key, "\") is unsupported"));
      }
    }
    if (const std::string type = RopeType(*params); type != "default") {
      return reader.Error("rope_parameters",
                          absl::StrCat("RoPE type ", type, " is unsupported; only default"));
    }
    const FieldReader rope_reader(*params, source);
    ASSIGN_OR_RETURN(double theta, rope_reader.Double("rope_theta", config.rope_theta));
    if (reader.Find("rope_theta") != nullptr && theta != config.rope_theta) {
      return reader.Error("rope_parameters",
                          absl::StrCat("rope_theta ", theta, " disagrees with top-level ",
                                       "rope_theta ", config.rope_theta));
    }
    config.rope_theta = theta;
  }

  ASSIGN_OR_RETURN(config.bos_token_id, reader.OptionalTokenId("bos_token_id", 1));
  ASSIGN_OR_RETURN(config.pad_token_id, reader.OptionalTokenId("pad_token_id", -1));
  if (const auto eos = root.find("eos_token_id"); eos != root.end()) {
    config.eos_token_ids.clear();
    if (eos->is_array()) {
      for (const Json& id : *eos) {
        ASSIGN_OR_RETURN(int32_t token, reader.TokenId("eos_token_id", id));
        config.eos_token_ids.push_back(token);
      }
    } else if (!eos->is_null()) {
      ASSIGN_OR_RETURN(int32_t token, reader.TokenId("eos_token_id", *eos));
      config.eos_token_ids.push_back(token);
    }
  }

  // transformers 5 renamed torch_dtype to dtype; either may appear.
  ASSIGN_OR_RETURN(std::optional<std::string> torch_dtype, reader.String("torch_dtype"));
  ASSIGN_OR_RETURN(std::optional<std::string> dtype, reader.String("dtype"));
  config.torch_dtype = torch_dtype.value_or(dtype.value_or(""));

  absl::Status valid = ValidateModelConfig(config);
  if (!valid.ok()) {
    return absl::Status(valid.code(), absl::StrCat(source, ": ", valid.message()));
  }
  return config;
}

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("field \"", field, "\": ", problem));
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source) {
  if (json_text.find('\0') != absl::string_view::npos) {  // the lexer would stop there silently
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: NUL byte"));
  }
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": must be a JSON object, got ", root.type_name()));
  }
  try {
    return ParseObject(root, source);
  } catch (const Json::exception& e) {  // every access is type-checked; this is a safety net
    return absl::InternalError(absl::StrCat(source, ": unexpected JSON error: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  std::string text;
  absl::Status status = absl::OkStatus();
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("cannot stat ", path));
  } else if (!S_ISREG(st.st_mode)) {
    status = absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  } else if (st.st_size > kMaxConfigBytes) {
    status = absl::InvalidArgumentError(
        absl::StrCat(path, " is ", st.st_size, " bytes; too large for a config.json"));
  } else {
    text.resize(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = ::read(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
        break;
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    text.resize(done);
  }
  ::close(fd);
  RETURN_IF_ERROR(status);
  return ParseModelConfig(text, path);
}

absl::Status ValidateModelConfig(const ModelConfig& config) {
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", config.vocab_size},
      {"hidden_size", config.hidden_size},
      {"intermediate_size", config.intermediate_size},
      {"num_hidden_layers", config.num_hidden_layers},
      {"num_attention_heads", config.num_attention_heads},
      {"num_key_value_heads", config.num_key_value_heads},
      {"head_dim", config.head_dim},
      {"max_position_embeddings", config.max_position_embeddings},
  };
  for (const auto& [field, value] : sizes) {
    if (value <= 0) return FieldError(field, absl::StrCat("must be positive, got ", value));
  }
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return FieldError("num_key_value_heads",
                      absl::StrCat(config.num_key_value_heads, " does not divide ",
                                   "num_attention_heads ", config.num_attention_heads));
  }
  if (config.head_dim % 2 != 0) {
    return FieldError("head_dim",
                      absl::StrCat("must be even for rotary embeddings, got ", config.head_dim));
  }
  if (!std::isfinite(config.rms_norm_eps) || config.rms_norm_eps <= 0) {
    return FieldError("rms_norm_eps",
                      absl::StrCat("must be positive and finite, got ", config.rms_norm_eps));
  }
  if (!std::isfinite(config.rope_theta) || config.rope_theta <= 0) {
    return FieldError("rope_theta",
                      absl::StrCat("must be positive and finite, got ", config.rope_theta));
  }
  const auto check_token = [&](const char* field, int32_t id, bool none_allowed) {
    if (id == -1 && none_allowed) return absl::OkStatus();
    if (id < 0 || id >= config.vocab_size) {
      return FieldError(field, absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                                            config.vocab_size, ")"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_token("bos_token_id", config.bos_token_id, true));
  RETURN_IF_ERROR(check_token("pad_token_id", config.pad_token_id, true));
  if (config.eos_token_ids.empty()) {
    return FieldError("eos_token_id", "at least one end-of-sequence token is required");
  }
  for (int32_t id : config.eos_token_ids) {
    RETURN_IF_ERROR(check_token("eos_token_id", id, false));
  }
  return absl::OkStatus();
}

std::string ModelConfigToJson(const ModelConfig& config) {
  Json json = Json::object();  // std::map underneath: keys come out sorted, as HF writes them
  json["architectures"] = Json::array({"LlamaForCausalLM"});
  json["attention_bias"] = false;
  json["bos_token_id"] = config.bos_token_id == -1 ? Json(nullptr) : Json(config.bos_token_id);
  if (config.eos_token_ids.size() == 1) {
    json["eos_token_id"] = config.eos_token_ids[0];
  } else {
    json["eos_token_id"] = config.eos_token_ids;
  }
  json["head_dim"] = config.head_dim;
  json["hidden_act"] = "silu";
  json["hidden_size"] = config.hidden_size;
  json["intermediate_size"] = config.intermediate_size;
  json["max_position_embeddings"] = config.max_position_embeddings;
  json["mlp_bias"] = false;
  json["model_type"] = "llama";
  json["num_attention_heads"] = config.num_attention_heads;
  json["num_hidden_layers"] = config.num_hidden_layers;
  json["num_key_value_heads"] = config.num_key_value_heads;
  json["pad_token_id"] = config.pad_token_id == -1 ? Json(nullptr) : Json(config.pad_token_id);
  json["rms_norm_eps"] = config.rms_norm_eps;
  json["rope_scaling"] = nullptr;
  json["rope_theta"] = config.rope_theta;
  json["tie_word_embeddings"] = config.tie_word_embeddings;
  if (!config.torch_dtype.empty()) json["torch_dtype"] = config.torch_dtype;
  json["vocab_size"] = config.vocab_size;
  // Replace, not throw, on a torch_dtype that is not UTF-8: this function cannot fail.
  return json.dump(2, ' ', /*ensure_ascii=*/true, Json::error_handler_t::replace) + "\n";
}

}  // namespace anchorserve::model
