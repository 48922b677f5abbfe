#include "train/prepare.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "model/sentence_splitter.h"
#include "model/tokenizer.h"

namespace anchorserve::train {
namespace {

namespace fs = std::filesystem;

class ShardWriter {
 public:
  ShardWriter(fs::path dir, int64_t shard_tokens, bool wide)
      : dir_(std::move(dir)), shard_tokens_(shard_tokens), wide_(wide) {}

  absl::Status Append(const std::vector<int32_t>& ids) {
    for (int32_t id : ids) {
      if (!out_.is_open() || in_shard_ == shard_tokens_) RETURN_IF_ERROR(Open());
      if (wide_) {
        const uint32_t v = static_cast<uint32_t>(id);
        out_.write(reinterpret_cast<const char*>(&v), 4);
      } else {
        const uint16_t v = static_cast<uint16_t>(id);
        out_.write(reinterpret_cast<const char*>(&v), 2);
      }
      ++in_shard_;
    }
    if (!out_) return absl::InternalError(absl::StrCat("cannot write ", current_.string()));
    return absl::OkStatus();
  }

  absl::Status Close() {
    if (out_.is_open()) {
      out_.close();
      if (!out_) return absl::InternalError(absl::StrCat("cannot write ", current_.string()));
      shards_.push_back({current_.filename().string(), in_shard_});
    }
    return absl::OkStatus();
  }

  const std::vector<std::pair<std::string, int64_t>>& shards() const { return shards_; }

 private:
  absl::Status Open() {
    RETURN_IF_ERROR(Close());
    current_ = dir_ / absl::StrFormat("tokens-%05d.bin", shards_.size());
    out_.open(current_, std::ios::binary | std::ios::trunc);
    in_shard_ = 0;
    if (!out_) return absl::InternalError(absl::StrCat("cannot create ", current_.string()));
    return absl::OkStatus();
  }

  fs::path dir_;
  int64_t shard_tokens_;
  bool wide_;
  std::ofstream out_;
  fs::path current_;
  int64_t in_shard_ = 0;
  std::vector<std::pair<std::string, int64_t>> shards_;
};

}  // namespace

std::string AnchoredDocument(const std::string& document, const std::string& anchors,
                             int64_t* sentences) {
  std::vector<std::string> all = model::SplitSentenceStrings(document);
  if (sentences != nullptr) *sentences = static_cast<int64_t>(all.size());
  if (anchors != "ac") return document;
  std::string out;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i > 0) out += " <AC> ";
    out += all[i];
  }
  return out;
}

absl::StatusOr<PrepareResult> PrepareCorpus(const PrepareOptions& options) {
  if (options.anchors != "ac" && options.anchors != "ep" && options.anchors != "none") {
    return absl::InvalidArgumentError("anchors must be ac, ep or none");
  }
  if (options.shard_tokens <= 0) return absl::InvalidArgumentError("shard_tokens must be positive");
  ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer,
                   model::Tokenizer::Load(options.tokenizer_dir));
  std::vector<int32_t> anchor_ids;
  if (options.anchors == "ac") {
    auto ac = tokenizer->TokenToId("<AC>");
    if (!ac) return absl::FailedPreconditionError("the tokenizer has no <AC> token for --anchors ac");
    anchor_ids = {*ac};
  } else if (options.anchors == "ep") {
    auto dot = tokenizer->TokenToId(".");
    if (!dot) return absl::FailedPreconditionError("the tokenizer has no bare \".\" piece");
    anchor_ids = {*dot};
  }
  const fs::path out_dir(options.output_dir);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", out_dir.string(), ": ", ec.message()));
  const bool wide = tokenizer->vocab_size() > 65536;
  ShardWriter shards(out_dir, options.shard_tokens, wide);
  std::vector<uint64_t> starts;
  PrepareResult result;
  int64_t bytes_read = 0;
  auto finish_document = [&](std::string& document) -> absl::Status {
    if (document.find_first_not_of(" \n\t\r") == std::string::npos) {
      document.clear();
      return absl::OkStatus();
    }
    int64_t sentences = 0;
    const std::string text = AnchoredDocument(document, options.anchors, &sentences);
    document.clear();
    const std::vector<int32_t> ids = tokenizer->Encode(text, /*add_bos=*/true);
    starts.push_back(static_cast<uint64_t>(result.tokens));
    RETURN_IF_ERROR(shards.Append(ids));
    result.tokens += static_cast<int64_t>(ids.size());
    result.sentences += sentences;
    ++result.documents;
    for (int32_t id : ids) {
      for (int32_t a : anchor_ids) result.anchors += id == a;
    }
    if (options.progress && result.documents % 64 == 0) options.progress(bytes_read, result.tokens);
    return absl::OkStatus();
  };
  for (const std::string& path : options.input_files) {
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
    std::string line, document;
    while (std::getline(in, line)) {
      bytes_read += static_cast<int64_t>(line.size()) + 1;
      if (line == "<|endoftext|>") {
        RETURN_IF_ERROR(finish_document(document));
        if (options.max_documents > 0 && result.documents >= options.max_documents) break;
        continue;
      }
      document += line;
      document += '\n';
    }
    if (options.max_documents > 0 && result.documents >= options.max_documents) break;
    RETURN_IF_ERROR(finish_document(document));
  }
  RETURN_IF_ERROR(shards.Close());
  starts.push_back(static_cast<uint64_t>(result.tokens));
  {
    std::ofstream docs(out_dir / "documents.bin", std::ios::binary | std::ios::trunc);
    docs.write(reinterpret_cast<const char*>(starts.data()),
               static_cast<std::streamsize>(starts.size() * sizeof(uint64_t)));
    if (!docs) return absl::InternalError("cannot write documents.bin");
  }
  result.shards = static_cast<int64_t>(shards.shards().size());
  nlohmann::json index;
  index["format"] = "anchorserve-tokens-v1";
  index["dtype"] = wide ? "uint32" : "uint16";
  index["vocab_size"] = tokenizer->vocab_size();
  index["anchors"] = options.anchors;
  index["anchor_token_ids"] = anchor_ids;
  index["bos_token_id"] = tokenizer->bos_id();
  index["documents"] = result.documents;
  index["sentences"] = result.sentences;
  index["tokens"] = result.tokens;
  index["anchor_tokens"] = result.anchors;
  nlohmann::json files = nlohmann::json::array();
  for (const auto& [file, tokens] : shards.shards()) files.push_back({{"file", file}, {"tokens", tokens}});
  index["shards"] = files;
  std::ofstream out(out_dir / "index.json", std::ios::trunc);
  out << index.dump(2) << "\n";
  if (!out) return absl::InternalError("cannot write index.json");
  if (options.progress) options.progress(bytes_read, result.tokens);
  return result;
}

}  // namespace anchorserve::train
