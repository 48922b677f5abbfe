// Data preparation for AnLLM training (anllm-reference.md §6.2): split documents into
// sentences, for AC models join them with " <AC> " (an anchor between sentences, none after
// the last), tokenize, and write memory-mappable token shards plus an index.
#ifndef ANCHORSERVE_TRAIN_PREPARE_H_
#define ANCHORSERVE_TRAIN_PREPARE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace anchorserve::train {

struct PrepareOptions {
  std::vector<std::string> input_files;  // UTF-8; documents separated by "<|endoftext|>" lines
  std::string tokenizer_dir;             // holds tokenizer.model (+ added_tokens.json)
  std::string output_dir;
  std::string anchors = "ac";            // "ac": insert <AC> between sentences; "ep", "none": as is
  int64_t shard_tokens = int64_t{1} << 24;  // tokens per shard file
  int64_t max_documents = 0;                // 0 = all
  // Called now and then with (bytes read, tokens written) for a progress line.
  std::function<void(int64_t, int64_t)> progress;
};

struct PrepareResult {
  int64_t documents = 0;
  int64_t sentences = 0;
  int64_t tokens = 0;
  int64_t anchors = 0;
  int64_t shards = 0;
};

// Writes <output_dir>/tokens-NNNNN.bin (little-endian uint16 when the vocabulary fits, else
// uint32), <output_dir>/documents.bin (uint64 start offset of every document, in tokens, plus
// the total at the end) and <output_dir>/index.json (dtype, vocab size, shard files and sizes,
// anchor ids, counts). Every document starts with BOS; no EOS is added (the paper's data has
// none). Errors name the file that failed.
absl::StatusOr<PrepareResult> PrepareCorpus(const PrepareOptions& options);

// The text of one document as the model is trained on it: sentences joined with " <AC> " for
// AC, the text unchanged otherwise. Paragraph breaks are sentence ends.
std::string AnchoredDocument(const std::string& document, const std::string& anchors,
                             int64_t* sentences);

}  // namespace anchorserve::train

#endif  // ANCHORSERVE_TRAIN_PREPARE_H_
