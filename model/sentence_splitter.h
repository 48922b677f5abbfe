// English sentence splitting for anchor placement (AnLLM-AC).
//
// The server inserts `<AC>` at the sentence ends of prompts and the trainer joins training
// sentences with " <AC> " (the paper's NLTK punkt preparation). Both call these functions so that
// a model is served with exactly the boundaries it was trained on. The rules are punkt-like but
// deterministic and table-driven (no statistics learned from a corpus); they and the decisions on
// ambiguous cases are in docs/SENTENCE_SPLITTING.md.
//
// All functions are pure, never fail (every byte string is valid input, UTF-8 or not), run in
// time linear in the input and may be called from any thread concurrently.
#ifndef ANCHORSERVE_MODEL_SENTENCE_SPLITTER_H_
#define ANCHORSERVE_MODEL_SENTENCE_SPLITTER_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace anchorserve::model {

// One sentence of a text: the byte range [begin, end) of the text it was split from.
struct SentenceSpan {
  size_t begin = 0;
  size_t end = 0;

  friend bool operator==(const SentenceSpan&, const SentenceSpan&) = default;
};

// Splits `text` into sentences.
//
// Guarantees: spans are in order and do not overlap; each is non-empty, starts and ends on a
// non-whitespace byte (whitespace = ASCII space, \t, \n, \v, \f, \r; other bytes, including
// U+00A0 NO-BREAK SPACE, are never split at); and every non-whitespace byte of `text` lies in
// exactly one span. Boundaries fall only in ASCII whitespace, so a span never cuts a multi-byte
// UTF-8 character. Empty or all-whitespace text yields no spans.
//
// Splitting is local: whether a sentence ends after a word depends only on that word, the next
// word, the whitespace between them and whether the word starts its sentence. Consequently
// re-splitting any returned sentence yields that sentence unchanged.
std::vector<SentenceSpan> SplitSentences(absl::string_view text);

// SplitSentences, returned as copies of the sentence text.
std::vector<std::string> SplitSentenceStrings(absl::string_view text);

// The paper's AC data preparation: the sentences of `text` joined with " " + anchor + " " (an
// anchor between sentences, none after the last). Whitespace between sentences is replaced; the
// whitespace inside a sentence is kept. Empty or all-whitespace text yields "".
std::string JoinSentencesWithAnchor(absl::string_view text, absl::string_view anchor = "<AC>");

// For prompts: `text` unchanged except that `anchor` is inserted directly after the last byte of
// every sentence (after its closing quotes or brackets), so whitespace between sentences, and
// before the first or after the last, is preserved. The last sentence gets an anchor only if it
// ends with terminal punctuation (see EndsWithSentenceTerminator) or `always_close_last` is true.
// Text without sentences is returned unchanged even if `always_close_last` is true.
//
// The anchor is not padded with spaces: the AnLLM tokenizer strips whitespace around `<AC>`, so
// "A.<AC> B" and "A. <AC> B" encode the same.
std::string InsertAnchorsAtSentenceEnds(absl::string_view text, absl::string_view anchor,
                                        bool always_close_last);

// Whether `sentence` ends with terminal punctuation (. ? ! or U+2026, a run of them allowed),
// optionally followed by closing quotes or brackets. Trailing whitespace is ignored. This is the
// test InsertAnchorsAtSentenceEnds applies to the last sentence of a prompt; it does not judge
// abbreviations ("Mr." counts as terminated).
bool EndsWithSentenceTerminator(absl::string_view sentence);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_SENTENCE_SPLITTER_H_
