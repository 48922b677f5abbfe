#include "client/bench_text.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace anchorserve::client {
namespace {

constexpr size_t kMaxReadBytes = 4 << 20;
constexpr size_t kMinSentenceBytes = 8;
constexpr size_t kMaxSentenceBytes = 400;

constexpr char kBuiltInText[] =
    "The lighthouse keeper climbed the stairs every evening at dusk. He counted the steps as "
    "his father had taught him, one hundred and twelve of them. At the top he trimmed the wick "
    "and polished the great lens until it shone. Ships passed far out on the grey water. Some "
    "of them signalled with their lamps, and he answered each one. In winter the storms came "
    "from the north and shook the tower. Snow gathered on the rail of the gallery. He kept a "
    "journal of the weather, the ships and the birds. A supply boat came once a month with "
    "flour, oil and letters. His sister wrote about the town, the market and the new school. "
    "One spring a young engineer arrived to install an electric lamp. The keeper showed him "
    "the old machinery and the clockwork that turned the light. They worked together for "
    "three weeks. When the new lamp was lit, its beam reached twice as far across the sea. "
    "The engineer left on the next boat and promised to return. The keeper went on climbing "
    "the stairs each evening, although the light now needed little care.";

bool IsCloser(char c) { return c == '"' || c == '\'' || c == ')' || c == ']' || c == '_'; }
bool IsOpener(char c) { return c == '"' || c == '\'' || c == '(' || c == '[' || c == '_'; }
bool IsTerminator(char c) { return c == '.' || c == '?' || c == '!'; }

// Cuts one paragraph (whitespace already collapsed). A piece shorter than kMinSentenceBytes is
// not cut off but stays with its neighbour ("Ok." joins the sentence before it).
void SplitParagraph(const std::string& paragraph, std::vector<std::string>* out) {
  const size_t first_of_paragraph = out->size();
  auto emit = [out](std::string sentence) {
    bool has_letter = false;
    for (char c : sentence) has_letter |= absl::ascii_isalpha(static_cast<unsigned char>(c));
    if (has_letter && sentence.size() <= kMaxSentenceBytes) out->push_back(std::move(sentence));
  };
  auto piece = [&paragraph](size_t begin, size_t end) {
    std::string text = paragraph.substr(begin, end - begin);
    absl::StripAsciiWhitespace(&text);
    return text;
  };
  size_t begin = 0;
  for (size_t i = 0; i < paragraph.size(); ++i) {
    if (!IsTerminator(paragraph[i])) continue;
    size_t end = i + 1;
    while (end < paragraph.size() && (IsTerminator(paragraph[end]) || IsCloser(paragraph[end]))) {
      ++end;
    }
    i = end;
    if (end + 1 >= paragraph.size() || paragraph[end] != ' ') continue;
    const unsigned char next = static_cast<unsigned char>(paragraph[end + 1]);
    if (!absl::ascii_isupper(next) && !absl::ascii_isdigit(next) && !IsOpener(paragraph[end + 1])) {
      continue;
    }
    std::string sentence = piece(begin, end);
    if (sentence.size() < kMinSentenceBytes) continue;
    emit(std::move(sentence));
    begin = end;
  }
  std::string rest = piece(begin, paragraph.size());
  if (rest.empty()) return;
  if (rest.size() < kMinSentenceBytes && out->size() > first_of_paragraph) {
    absl::StrAppend(&out->back(), " ", rest);
  } else if (rest.size() >= kMinSentenceBytes) {
    emit(std::move(rest));
  }
}

}  // namespace

std::vector<std::string> SplitSentencesForLoad(absl::string_view text) {
  std::vector<std::string> sentences;
  std::string paragraph;
  int newlines = 0;
  bool pending_space = false;
  auto flush = [&] {
    if (!paragraph.empty()) SplitParagraph(paragraph, &sentences);
    paragraph.clear();
    pending_space = false;
  };
  for (char c : text) {
    if (c == '\n') {
      if (++newlines >= 2) flush();
      pending_space = !paragraph.empty();
      continue;
    }
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) {
      pending_space = !paragraph.empty();
      continue;
    }
    newlines = 0;
    if (pending_space) paragraph.push_back(' ');
    pending_space = false;
    paragraph.push_back(c);
  }
  flush();
  return sentences;
}

absl::StatusOr<BenchText> BenchText::FromString(absl::string_view text, std::string source) {
  std::vector<std::string> sentences = SplitSentencesForLoad(text);
  if (sentences.size() < kMinSentences) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": ", sentences.size(), " sentences found, at least ", kMinSentences, " needed"));
  }
  return BenchText(std::move(sentences), std::move(source));
}

absl::StatusOr<BenchText> BenchText::Load(const std::string& text_file) {
  const std::string path = text_file.empty() ? kDefaultBenchTextFile : text_file;
  std::ifstream in(path, std::ios::binary);
  if (in) {
    std::string contents(kMaxReadBytes, '\0');
    in.read(contents.data(), static_cast<std::streamsize>(contents.size()));
    contents.resize(static_cast<size_t>(in.gcount()));
    absl::StatusOr<BenchText> text = FromString(contents, path);
    if (text.ok() || !text_file.empty()) return text;
  } else if (!text_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--text: cannot read ", text_file));
  }
  return FromString(kBuiltInText, "built-in");
}

size_t BenchText::RandomStart(std::mt19937_64& rng) const {
  return std::uniform_int_distribution<size_t>(0, sentences_.size() - 1)(rng);
}

std::string BenchText::NextTurn(size_t* cursor, std::mt19937_64& rng) const {
  const int count = std::uniform_int_distribution<int>(2, 4)(rng);
  std::string turn;
  for (int i = 0; i < count; ++i) {
    if (*cursor >= sentences_.size()) *cursor = 0;
    if (!turn.empty()) turn.push_back(' ');
    turn += sentences_[(*cursor)++];
  }
  return turn;
}

}  // namespace anchorserve::client
