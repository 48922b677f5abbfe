// Real text for `anchorctl bench` prompts: sentences of a file (default: the held-out Gutenberg
// text under ../shared/data), else a built-in paragraph. Each simulated conversation starts at a
// random sentence and reads on, a few sentences per turn, the way a user pastes a document in
// parts. The splitting here only cuts prompts; where anchors go is the server's business (its
// sentence splitter decides, docs/SENTENCE_SPLITTING.md).
#ifndef ANCHORSERVE_CLIENT_BENCH_TEXT_H_
#define ANCHORSERVE_CLIENT_BENCH_TEXT_H_

#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace anchorserve::client {

// Relative to the working directory: the repository root of a checkout beside ../shared.
inline constexpr char kDefaultBenchTextFile[] = "../shared/data/heldout/gutenberg_valid.txt";

// Sentences for load: paragraphs split on blank lines, whitespace collapsed, cut after . ? !
// (and closing quotes) when an upper-case letter, digit or opening quote follows. A piece
// under 8 bytes stays with its neighbour; sentences over 400 bytes or without a letter are
// skipped.
std::vector<std::string> SplitSentencesForLoad(absl::string_view text);

// Immutable after creation; const methods are thread-safe.
class BenchText {
 public:
  static constexpr size_t kMinSentences = 4;

  // `text_file` non-empty: that file, InvalidArgument when it cannot be read or holds fewer
  // than kMinSentences sentences. Empty: kDefaultBenchTextFile when readable and long enough,
  // else the built-in paragraph (never fails). Reads at most the first 4 MiB.
  static absl::StatusOr<BenchText> Load(const std::string& text_file);
  // From a string; InvalidArgument when it holds fewer than kMinSentences sentences.
  static absl::StatusOr<BenchText> FromString(absl::string_view text, std::string source);

  // The file path, or "built-in".
  const std::string& source() const { return source_; }
  size_t size() const { return sentences_.size(); }

  size_t RandomStart(std::mt19937_64& rng) const;
  // 2 to 4 consecutive sentences from *cursor, joined by spaces; advances *cursor past them
  // (wrapping at the end of the text).
  std::string NextTurn(size_t* cursor, std::mt19937_64& rng) const;

 private:
  BenchText(std::vector<std::string> sentences, std::string source)
      : sentences_(std::move(sentences)), source_(std::move(source)) {}

  std::vector<std::string> sentences_;
  std::string source_;
};

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_BENCH_TEXT_H_
