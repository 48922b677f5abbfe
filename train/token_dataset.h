// Reads the token shards `anchor-train prepare` writes and cuts them into training windows.
// Torch-free, so the data order is testable without libtorch.
#ifndef ANCHORSERVE_TRAIN_TOKEN_DATASET_H_
#define ANCHORSERVE_TRAIN_TOKEN_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace anchorserve::train {

// A prepared corpus held in memory (a 40M-token corpus is 160 MB as int32).
class TokenDataset {
 public:
  // Opens <dir>/index.json, its shards and documents.bin. Errors name the file: NotFound,
  // DataLoss for sizes that disagree with the index, InvalidArgument for an unknown format.
  static absl::StatusOr<TokenDataset> Open(const std::string& dir);

  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(starts_.size()) - 1; }
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& anchors() const { return anchors_; }  // "ac", "ep" or "none"
  const std::vector<int32_t>& anchor_token_ids() const { return anchor_token_ids_; }
  int32_t bos_id() const { return bos_id_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t document_start(int64_t d) const { return static_cast<int64_t>(starts_[d]); }
  int64_t document_end(int64_t d) const { return static_cast<int64_t>(starts_[d + 1]); }

 private:
  std::vector<int32_t> tokens_;
  std::vector<uint64_t> starts_;  // document starts plus the total
  int64_t vocab_size_ = 0;
  std::string anchors_;
  std::vector<int32_t> anchor_token_ids_;
  int32_t bos_id_ = 1;
};

// One training example: tokens [begin, end) of the dataset, preceded by BOS unless `begin` is
// the document's own BOS.
struct Window {
  int64_t begin = 0;
  int64_t end = 0;
  bool prepend_bos = false;
  int64_t length() const { return end - begin + (prepend_bos ? 1 : 0); }
};

// Every document cut into consecutive windows of at most `length` tokens (BOS included): the
// first starts at the document's BOS, each later one gets BOS prepended, so every example
// looks like the start of a prompt. Windows shorter than `min_length` are dropped.
std::vector<Window> CutWindows(const TokenDataset& data, int64_t length, int64_t min_length = 8);

// Windows in a deterministic order: a Fisher-Yates shuffle with splitmix64(seed + epoch).
std::vector<int64_t> EpochOrder(int64_t num_windows, uint64_t seed, int64_t epoch);

// The window's tokens, right-padded with `pad_id` to `length`.
std::vector<int32_t> WindowTokens(const TokenDataset& data, const Window& window, int64_t length,
                                  int32_t pad_id);

}  // namespace anchorserve::train

#endif  // ANCHORSERVE_TRAIN_TOKEN_DATASET_H_
