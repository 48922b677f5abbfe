#include "model/checkpoint_convert.h"

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/safetensors.h"

namespace anchorserve::model {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return data;
}

absl::StatusOr<std::vector<fs::path>> BinFiles(const fs::path& dir) {
  const fs::path single = dir / "pytorch_model.bin";
  if (fs::exists(single)) return std::vector<fs::path>{single};
  const fs::path index = dir / "pytorch_model.bin.index.json";
  if (!fs::exists(index)) {
    return absl::NotFoundError(absl::StrCat(
        dir.string(), " has neither pytorch_model.bin nor pytorch_model.bin.index.json"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(index));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index.string(), ": no weight_map object"));
  }
  std::vector<fs::path> files;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": bad entry for ", name));
    }
    const fs::path path = dir / file.get<std::string>();
    if (std::find(files.begin(), files.end(), path) == files.end()) files.push_back(path);
  }
  return files;
}

absl::StatusOr<DType> DTypeOf(const at::Tensor& t, const std::string& name, const fs::path& file) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kF32;
    case at::kHalf:
      return DType::kF16;
    case at::kBFloat16:
      return DType::kBF16;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          file.string(), ": tensor ", name, " has dtype ",
          std::string(c10::toString(t.scalar_type())), "; expected float32, float16 or bfloat16"));
  }
}

}  // namespace

absl::Status ConvertTorchCheckpoint(const std::string& from_dir, const std::string& to_dir,
                                    size_t max_shard_bytes) {
  const fs::path from(from_dir), to(to_dir);
  ASSIGN_OR_RETURN(std::vector<fs::path> files, BinFiles(from));
  std::error_code ec;
  fs::create_directories(to, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot create ", to.string(), ": ", ec.message()));

  std::vector<TensorData> tensors;
  for (const fs::path& file : files) {
    ASSIGN_OR_RETURN(std::string bytes, ReadFile(file));
    c10::IValue value;
    try {
      value = torch::jit::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
    } catch (const std::exception& e) {
      std::string message = e.what();
      return absl::DataLossError(absl::StrCat(
          file.string(),
          ": not a readable torch.save archive: ", message.substr(0, message.find('\n'))));
    }
    if (!value.isGenericDict()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.string(), ": expected a state dict (name -> tensor)"));
    }
    for (const auto& item : value.toGenericDict()) {
      if (!item.key().isString() || !item.value().isTensor()) {
        return absl::InvalidArgumentError(
            absl::StrCat(file.string(), ": state dict entries must map names to tensors"));
      }
      const std::string name = item.key().toStringRef();
      at::Tensor t = item.value().toTensor().contiguous().cpu();
      ASSIGN_OR_RETURN(DType dtype, DTypeOf(t, name, file));
      TensorData data{name, dtype, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), {}};
      const size_t nbytes = static_cast<size_t>(t.numel()) * t.element_size();
      data.bytes.resize(nbytes);
      if (nbytes > 0) std::memcpy(data.bytes.data(), t.data_ptr(), nbytes);
      tensors.push_back(std::move(data));
    }
  }
  std::vector<const TensorData*> refs;
  for (const TensorData& t : tensors) refs.push_back(&t);
  RETURN_IF_ERROR(WriteShardedSafetensors(to.string(), refs, max_shard_bytes, {{"format", "pt"}}));
  for (const char* name :
       {"config.json", "tokenizer.model", "added_tokens.json", "special_tokens_map.json",
        "tokenizer_config.json", "generation_config.json", "anchor_config.json"}) {
    if (!fs::exists(from / name)) continue;
    fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot copy ", (from / name).string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace anchorserve::model
