#include "train/token_dataset.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/splitmix.h"
#include "nlohmann/json.hpp"

namespace anchorserve::train {
namespace fs = std::filesystem;

namespace {

absl::StatusOr<std::string> ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<TokenDataset> TokenDataset::Open(const std::string& dir) {
  const fs::path root(dir);
  auto index_text = ReadAll(root / "index.json");
  if (!index_text.ok()) return index_text.status();
  nlohmann::json index = nlohmann::json::parse(*index_text, nullptr, /*allow_exceptions=*/false);
  const std::string index_name = (root / "index.json").string();
  if (!index.is_object() || index.value("format", "") != "anchorserve-tokens-v1") {
    return absl::InvalidArgumentError(
        absl::StrCat(index_name, " is not an anchor-train prepare index (format)"));
  }
  TokenDataset data;
  try {
    const std::string dtype = index.at("dtype").get<std::string>();
    if (dtype != "uint16" && dtype != "uint32") {
      return absl::InvalidArgumentError(absl::StrCat(index_name, ": unknown dtype ", dtype));
    }
    const size_t width = dtype == "uint16" ? 2 : 4;
    data.vocab_size_ = index.at("vocab_size").get<int64_t>();
    data.anchors_ = index.at("anchors").get<std::string>();
    data.anchor_token_ids_ = index.at("anchor_token_ids").get<std::vector<int32_t>>();
    data.bos_id_ = index.at("bos_token_id").get<int32_t>();
    const int64_t total = index.at("tokens").get<int64_t>();
    data.tokens_.reserve(static_cast<size_t>(total));
    for (const auto& shard : index.at("shards")) {
      const fs::path path = root / shard.at("file").get<std::string>();
      const int64_t count = shard.at("tokens").get<int64_t>();
      auto bytes = ReadAll(path);
      if (!bytes.ok()) return bytes.status();
      if (bytes->size() != static_cast<size_t>(count) * width) {
        return absl::DataLossError(absl::StrCat(path.string(), " holds ", bytes->size(),
                                                " bytes; index.json says ", count, " tokens of ",
                                                width, " bytes"));
      }
      const auto* p = reinterpret_cast<const unsigned char*>(bytes->data());
      for (int64_t i = 0; i < count; ++i, p += width) {
        uint32_t v = p[0] | (p[1] << 8);
        if (width == 4) v |= (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
        if (v >= static_cast<uint32_t>(data.vocab_size_)) {
          return absl::DataLossError(absl::StrCat(path.string(), ": token ", v,
                                                  " is outside the vocabulary of ",
                                                  data.vocab_size_));
        }
        data.tokens_.push_back(static_cast<int32_t>(v));
      }
    }
    if (static_cast<int64_t>(data.tokens_.size()) != total) {
      return absl::DataLossError(absl::StrCat(index_name, " says ", total, " tokens; shards hold ",
                                              data.tokens_.size()));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_name, ": ", e.what()));
  }
  auto docs = ReadAll(root / "documents.bin");
  if (!docs.ok()) return docs.status();
  if (docs->size() % 8 != 0 || docs->size() < 8) {
    return absl::DataLossError(absl::StrCat((root / "documents.bin").string(), " has ",
                                            docs->size(), " bytes, not a list of uint64"));
  }
  data.starts_.resize(docs->size() / 8);
  std::memcpy(data.starts_.data(), docs->data(), docs->size());
  const bool ordered = std::is_sorted(data.starts_.begin(), data.starts_.end());
  if (!ordered || data.starts_.front() != 0 || data.starts_.back() != data.tokens_.size()) {
    return absl::DataLossError(absl::StrCat((root / "documents.bin").string(),
                                            " does not partition the ", data.tokens_.size(),
                                            " tokens into documents"));
  }
  return data;
}

std::vector<Window> CutWindows(const TokenDataset& data, int64_t length, int64_t min_length) {
  std::vector<Window> windows;
  for (int64_t d = 0; d < data.num_documents(); ++d) {
    const int64_t start = data.document_start(d), end = data.document_end(d);
    if (start == end) continue;
    // The first window keeps the document's own BOS; later ones get one prepended.
    for (int64_t b = start; b < end;) {
      Window w;
      w.begin = b;
      w.prepend_bos = b != start;
      w.end = std::min(end, b + length - (w.prepend_bos ? 1 : 0));
      b = w.end;
      if (w.length() >= min_length) windows.push_back(w);
    }
  }
  return windows;
}

std::vector<int64_t> EpochOrder(int64_t num_windows, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(num_windows));
  for (int64_t i = 0; i < num_windows; ++i) order[static_cast<size_t>(i)] = i;
  common::SplitMix rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
  for (int64_t i = num_windows - 1; i > 0; --i) {
    const size_t j = rng.Below(static_cast<size_t>(i) + 1);
    std::swap(order[static_cast<size_t>(i)], order[j]);
  }
  return order;
}

std::vector<int32_t> WindowTokens(const TokenDataset& data, const Window& window, int64_t length,
                                  int32_t pad_id) {
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(length));
  if (window.prepend_bos) out.push_back(data.bos_id());
  out.insert(out.end(), data.tokens().begin() + window.begin, data.tokens().begin() + window.end);
  out.resize(static_cast<size_t>(length), pad_id);
  return out;
}

}  // namespace anchorserve::train
