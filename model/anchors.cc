#include "model/anchors.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "model/model_config.h"
#include "model/tokenizer.h"

namespace anchorserve::model {
namespace {

void SortUnique(std::vector<int32_t>& ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
}

absl::StatusOr<AnchorKind> ParseKind(absl::string_view name, absl::string_view file) {
  if (name == "none") return AnchorKind::kNone;
  if (name == "ac") return AnchorKind::kAc;
  if (name == "ep") return AnchorKind::kEp;
  if (name == "custom") return AnchorKind::kCustom;
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": anchor_type must be one of none|ac|ep|custom, got \"", name, "\""));
}

absl::StatusOr<AnchorSpec> ReadAnchorConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  AnchorSpec spec;
  if (!j.contains("anchor_type") || !j["anchor_type"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": anchor_type missing or not a string"));
  }
  auto kind = ParseKind(j["anchor_type"].get<std::string>(), path);
  if (!kind.ok()) return kind.status();
  spec.kind = *kind;
  if (j.contains("anchor_token_ids")) {
    if (!j["anchor_token_ids"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": anchor_token_ids must be an array"));
    }
    for (const auto& v : j["anchor_token_ids"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": anchor_token_ids must hold non-negative token ids"));
      }
      spec.token_ids.push_back(v.get<int32_t>());
    }
  }
  if (j.contains("pad_token_id") && !j["pad_token_id"].is_null()) {
    if (!j["pad_token_id"].is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": pad_token_id must be an integer"));
    }
    spec.pad_id = j["pad_token_id"].get<int32_t>();
  }
  if (j.contains("anchor_token") && j["anchor_token"].is_string()) {
    spec.anchor_token = j["anchor_token"].get<std::string>();
  }
  if (spec.kind != AnchorKind::kNone && spec.token_ids.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": anchor_type ", AnchorKindName(spec.kind), " needs a non-empty anchor_token_ids"));
  }
  SortUnique(spec.token_ids);
  return spec;
}

}  // namespace

absl::string_view AnchorKindName(AnchorKind kind) {
  switch (kind) {
    case AnchorKind::kNone:
      return "none";
    case AnchorKind::kAc:
      return "ac";
    case AnchorKind::kEp:
      return "ep";
    case AnchorKind::kCustom:
      return "custom";
  }
  return "none";
}

bool AnchorSpec::IsAnchor(int32_t id) const {
  return std::binary_search(token_ids.begin(), token_ids.end(), id);
}

absl::StatusOr<AnchorSpec> DetectAnchors(const std::string& model_dir, const ModelConfig& config,
                                         const Tokenizer* tokenizer) {
  const std::string path = (std::filesystem::path(model_dir) / kAnchorConfigFile).string();
  if (std::filesystem::exists(path)) return ReadAnchorConfig(path);
  AnchorSpec spec;
  if (tokenizer == nullptr) return spec;
  spec.pad_id = tokenizer->pad_id();
  if (auto ac = tokenizer->TokenToId("<AC>"); ac.has_value()) {
    spec.kind = AnchorKind::kAc;
    spec.token_ids = {*ac};
    spec.anchor_token = "<AC>";
    return spec;
  }
  // Released EP checkpoints: "[PAD]" added past the SentencePiece vocabulary, nothing else.
  const auto& added = tokenizer->added_tokens();
  const bool only_pad_added = added.size() == 1 && added[0].first == "[PAD]";
  if (only_pad_added && config.vocab_size == added[0].second + 1) {
    if (auto dot = tokenizer->TokenToId("."); dot.has_value()) {
      spec.kind = AnchorKind::kEp;
      spec.token_ids = {*dot};
      spec.anchor_token = ".";
    }
  }
  return spec;
}

AnchorSpec CustomAnchors(std::vector<int32_t> ids, int32_t pad_id) {
  AnchorSpec spec;
  SortUnique(ids);
  spec.kind = ids.empty() ? AnchorKind::kNone : AnchorKind::kCustom;
  spec.token_ids = std::move(ids);
  spec.pad_id = pad_id;
  return spec;
}

absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view text, absl::string_view field) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id) || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": \"", part, "\" is not a non-negative token id"));
    }
    ids.push_back(id);
  }
  return ids;
}

std::string AnchorSpecToJson(const AnchorSpec& spec) {
  nlohmann::json j;
  j["anchor_type"] = std::string(AnchorKindName(spec.kind));
  j["anchor_token_ids"] = spec.token_ids;
  j["anchor_token"] = spec.anchor_token;
  if (spec.pad_id >= 0) {
    j["pad_token_id"] = spec.pad_id;
  } else {
    j["pad_token_id"] = nullptr;
  }
  return j.dump(2) + "\n";
}

}  // namespace anchorserve::model
