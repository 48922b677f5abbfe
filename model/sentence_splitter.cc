#include "model/sentence_splitter.h"

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace anchorserve::model {
namespace {

// The splitter works on whitespace-separated words: a boundary always needs whitespace after the
// terminator, so every decision is "does the sentence end after this word?". Each word is looked
// at a bounded number of times (as the current word and as the next one) and table lookups only
// happen on short keys, which keeps the whole scan linear with no backtracking.

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

bool IsAsciiUpper(char c) { return c >= 'A' && c <= 'Z'; }
bool IsAsciiLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsAsciiLetter(char c) { return IsAsciiUpper(c) || IsAsciiLower(c); }
bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }

// Closing quotes and brackets after a terminator belong to the sentence. '_' and '*' are
// Project Gutenberg's italics/bold markers ("_Stop._ He left.").
constexpr absl::string_view kAsciiClosers = "\"')]}_*";
constexpr absl::string_view kMultiByteClosers[] = {
    "\u201D",  // right double quotation mark
    "\u2019",  // right single quotation mark
    "\u00BB",  // right-pointing double angle quotation mark
    "\u203A",  // single right-pointing angle quotation mark
};

// Opening quotes and brackets before the first letter of a sentence.
constexpr absl::string_view kAsciiOpeners = "\"'([{_*";
constexpr absl::string_view kMultiByteOpeners[] = {
    "\u201C",  // left double quotation mark
    "\u2018",  // left single quotation mark
    "\u00AB",  // left-pointing double angle quotation mark
    "\u2039",  // single left-pointing angle quotation mark
};

constexpr absl::string_view kHorizontalEllipsis = "\u2026";

// Removes closers from the end of `word`; whole UTF-8 sequences only, so this never splits one.
absl::string_view StripTrailingClosers(absl::string_view word) {
  while (!word.empty()) {
    if (kAsciiClosers.find(word.back()) != absl::string_view::npos) {
      word.remove_suffix(1);
      continue;
    }
    bool stripped = false;
    for (absl::string_view closer : kMultiByteClosers) {
      if (absl::ConsumeSuffix(&word, closer)) {
        stripped = true;
        break;
      }
    }
    if (!stripped) break;
  }
  return word;
}

absl::string_view StripLeadingOpeners(absl::string_view word) {
  while (!word.empty()) {
    if (kAsciiOpeners.find(word.front()) != absl::string_view::npos) {
      word.remove_prefix(1);
      continue;
    }
    bool stripped = false;
    for (absl::string_view opener : kMultiByteOpeners) {
      if (absl::ConsumePrefix(&word, opener)) {
        stripped = true;
        break;
      }
    }
    if (!stripped) break;
  }
  return word;
}

// The maximal run of . ? ! and … at the end of a word (after its closers were removed).
struct TerminatorRun {
  size_t length = 0;        // bytes
  bool has_strong = false;  // contains ? or !
  size_t period_count = 0;  // ASCII periods
  bool has_ellipsis_char = false;
};

TerminatorRun TrailingTerminators(absl::string_view core) {
  TerminatorRun run;
  size_t end = core.size();
  while (end > 0) {
    const char c = core[end - 1];
    if (c == '.' || c == '?' || c == '!') {
      if (c == '.') {
        ++run.period_count;
      } else {
        run.has_strong = true;
      }
      --end;
    } else if (end >= kHorizontalEllipsis.size() &&
               core.substr(end - kHorizontalEllipsis.size(), kHorizontalEllipsis.size()) ==
                   kHorizontalEllipsis) {
      run.has_ellipsis_char = true;
      end -= kHorizontalEllipsis.size();
    } else {
      break;
    }
  }
  run.length = core.size() - end;
  return run;
}

// Decodes the UTF-8 character at the start of `s`; returns -1 for an invalid or truncated one,
// so random bytes are simply "not an uppercase letter".
int32_t DecodeFirstCodePoint(absl::string_view s) {
  const auto byte = [&s](size_t i) { return static_cast<unsigned char>(s[i]); };
  if (s.empty()) return -1;
  const unsigned char lead = byte(0);
  size_t length;
  int32_t code_point;
  if (lead < 0x80) return lead;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    code_point = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    code_point = lead & 0x0F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    code_point = lead & 0x07;
  } else {
    return -1;
  }
  if (s.size() < length) return -1;
  for (size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return -1;
    code_point = (code_point << 6) | (byte(i) & 0x3F);
  }
  return code_point;
}

// Uppercase letters of the scripts that turn up in English text (Latin-1, Latin Extended-A, Greek,
// Cyrillic). Other scripts count as "not uppercase", i.e. never start an English sentence here.
bool IsUppercaseCodePoint(int32_t cp) {
  if (cp < 0) return false;
  if (cp < 0x80) return IsAsciiUpper(static_cast<char>(cp));
  if (cp >= 0xC0 && cp <= 0xDE) return cp != 0xD7;  // À..Þ except ×
  if (cp >= 0x100 && cp <= 0x137) return cp % 2 == 0;
  if (cp >= 0x139 && cp <= 0x148) return cp % 2 == 1;
  if (cp >= 0x14A && cp <= 0x177) return cp % 2 == 0;
  if (cp == 0x178) return true;  // Ÿ
  if (cp >= 0x179 && cp <= 0x17E) return cp % 2 == 1;
  if (cp >= 0x391 && cp <= 0x3A9) return cp != 0x3A2;  // Greek Α..Ω
  if (cp >= 0x400 && cp <= 0x42F) return true;         // Cyrillic Ѐ..Я
  return false;
}

// What an abbreviation before a period implies for a following capitalised word.
enum class AbbreviationKind {
  kNone,
  // Precedes a name or an example; never ends a sentence (Mr., Dr., e.g., vs.).
  kNeverFinal,
  // Mostly ends a list and thus often a sentence: ends one before any sentence start (etc.).
  kOftenFinal,
  // "No." is an abbreviation only before a number; otherwise it is the word "no".
  kNumberPrefix,
  // Ends a sentence as often as not (Inc., Jr., St., U.S., initials): ends one only before a
  // closed-class word that does not continue a name (The, He, ...).
  kAmbiguous,
  // The pronoun "I": ends a sentence like a word, except inside a run of initials ("I. M. Pei").
  kPronounI,
};

// Longest key worth looking up; longer candidates cannot be in either table.
constexpr size_t kMaxTableKeyLength = 12;

using AbbreviationTable = absl::flat_hash_map<std::string, AbbreviationKind>;

// Keys are stems without the final period, in every spelling that is accepted: each entry as
// written and in all capitals (Gutenberg headings: "MR. SMITH"). Lowercase entries are also
// listed capitalised where that spelling starts sentences ("Etc."); titles are not matched in
// lowercase so that ordinary words ("no.", "art.") stay words.
const AbbreviationTable& Abbreviations() {
  static const AbbreviationTable* const table = [] {
    auto* t = new AbbreviationTable();
    const auto add = [t](AbbreviationKind kind, std::initializer_list<absl::string_view> keys) {
      for (absl::string_view key : keys) {
        t->emplace(std::string(key), kind);
        if (key.size() >= 2) t->emplace(absl::AsciiStrToUpper(key), kind);
      }
    };
    add(AbbreviationKind::kNeverFinal,
        {// Titles and ranks before names.
         "Mr", "Mrs", "Ms", "Messrs", "Mme", "Mlle", "Mmes", "Dr", "Prof", "Rev", "Hon", "Rt", "Fr",
         "Bp", "Gen", "Col", "Capt", "Lt", "Sgt", "Maj", "Cpl", "Pvt", "Adm", "Cmdr", "Brig", "Gov",
         "Sen", "Rep", "Pres", "Supt", "Insp",
         // Introduce an example, a comparison or a reference.
         "e.g", "E.g", "i.e", "I.e", "cf", "Cf", "vs", "Vs", "viz", "Viz"});
    add(AbbreviationKind::kOftenFinal, {"etc", "Etc", "&c"});
    add(AbbreviationKind::kNumberPrefix, {"No", "Nos"});
    add(AbbreviationKind::kAmbiguous,
        {// Name suffixes and company forms, which end sentences as often as not.
         "Jr", "Sr", "Esq", "Inc", "Ltd", "Co", "Corp", "Bros", "al",
         // Places, which also precede names (St. Paul, Mt. Everest).
         "St", "Mt", "Ft", "Ave", "Blvd", "Rd",
         // References before a number or numeral.
         "Vol", "Vols", "Fig", "Figs", "pp", "Ch", "Chap", "Sec", "Sect", "Op", "ed", "eds",
         "trans", "ibid", "Ibid", "ca", "approx", "Approx", "dept", "Dept", "govt", "Univ", "Assn",
         // Units.
         "ft", "lb", "lbs", "oz", "yr", "yrs", "hr", "hrs",
         // Months (May, June and July are words, not abbreviations).
         "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"});
    return t;
  }();
  return *table;
}

// Capitalised closed-class words: after an ambiguous abbreviation they signal a new sentence,
// because they rarely continue a name ("U.S. Army" continues, "U.S. The" starts anew). "I" is
// left out because it is also a roman numeral ("Vol. I"); "May" and "Will" because they are
// names.
const absl::flat_hash_set<std::string>& StrongSentenceStarters() {
  static const absl::flat_hash_set<std::string>* const set = new absl::flat_hash_set<std::string>({
      "A",      "An",      "The",      "This",        "That",      "These",  "Those",   "There",
      "Then",   "Thus",    "Hence",    "Here",        "He",        "She",    "It",      "We",
      "They",   "You",     "His",      "Her",         "Its",       "Our",    "Their",   "Your",
      "My",     "In",      "On",       "At",          "As",        "But",    "And",     "Or",
      "Nor",    "So",      "Yet",      "If",          "When",      "While",  "Where",   "What",
      "Why",    "How",     "Who",      "Which",       "Whose",     "After",  "Before",  "Although",
      "Though", "However", "Moreover", "Furthermore", "Meanwhile", "Since",  "Because", "Some",
      "Many",   "Most",    "All",      "Both",        "Each",      "Every",  "Such",    "Not",
      "Do",     "Does",    "Did",      "Is",          "Are",       "Was",    "Were",    "Has",
      "Have",   "Had",     "Can",      "Could",       "Would",     "Should", "Must",    "Let",
      "Now",    "Yes",     "Oh",       "Also",        "Still",     "Even",   "Once",    "Later",
      "Today",  "Finally", "Again",
  });
  return *set;
}

// A candidate abbreviation is the trailing run of ASCII letters, '.' and '&' of the stem (the
// word without its final period), so that "(Mr", "--Mr" and "“Dr" find "Mr"/"Dr". The run must
// not be glued to a digit or a letter outside ASCII ("1a", "Café" are not abbreviations); a
// General Punctuation character (em dash) before it is fine.
absl::string_view AbbreviationCandidate(absl::string_view stem) {
  size_t start = stem.size();
  while (start > 0) {
    const char c = stem[start - 1];
    if (IsAsciiLetter(c) || c == '.' || c == '&') {
      --start;
    } else {
      break;
    }
  }
  if (start > 0) {
    const unsigned char before = static_cast<unsigned char>(stem[start - 1]);
    const bool general_punctuation = start >= 3 &&
                                     static_cast<unsigned char>(stem[start - 3]) == 0xE2 &&
                                     (static_cast<unsigned char>(stem[start - 2]) == 0x80 ||
                                      static_cast<unsigned char>(stem[start - 2]) == 0x81);
    if (IsAsciiDigit(stem[start - 1]) || (before >= 0x80 && !general_punctuation)) return {};
  }
  absl::string_view candidate = stem.substr(start);
  while (!candidate.empty() && candidate.front() == '.') candidate.remove_prefix(1);
  return candidate;
}

// "U.S", "a.m", "Ph.D", "U.S.A": dot-separated segments of one or two ASCII letters.
bool IsDottedAcronym(absl::string_view candidate) {
  if (candidate.find('.') == absl::string_view::npos) return false;
  size_t segment_length = 0;
  for (char c : candidate) {
    if (c == '.') {
      if (segment_length == 0) return false;
      segment_length = 0;
    } else if (IsAsciiLetter(c)) {
      if (++segment_length > 2) return false;
    } else {
      return false;
    }
  }
  return segment_length > 0;
}

// "ii", "xiv": letters i, v and x only, which no English word of two or more letters is made of.
bool IsLowercaseRomanNumeral(absl::string_view candidate) {
  if (candidate.size() < 2 || candidate.size() > 6) return false;
  for (char c : candidate) {
    if (c != 'i' && c != 'v' && c != 'x') return false;
  }
  return true;
}

AbbreviationKind ClassifyAbbreviation(absl::string_view stem) {
  const absl::string_view candidate = AbbreviationCandidate(stem);
  if (candidate.empty()) return AbbreviationKind::kNone;
  if (candidate.size() <= kMaxTableKeyLength) {
    const AbbreviationTable& table = Abbreviations();
    if (auto it = table.find(candidate); it != table.end()) return it->second;
  }
  // "said I." ends sentences far more often than "I." is an initial or a numeral ("Charles I."
  // ends one too).
  if (candidate == "I") return AbbreviationKind::kPronounI;
  // Single-letter initials ("J. R. R. Tolkien"), dotted acronyms and lowercase roman numerals in
  // references ("Ecl. ii. 18").
  if ((candidate.size() == 1 && IsAsciiLetter(candidate[0])) || IsDottedAcronym(candidate) ||
      IsLowercaseRomanNumeral(candidate)) {
    return AbbreviationKind::kAmbiguous;
  }
  return AbbreviationKind::kNone;
}

// A list marker that opens a sentence: "1.", "12.", "a.", "IV.", "iv.". It is the sentence's
// label, not a sentence of its own.
bool IsEnumerator(absl::string_view stem) {
  if (stem.empty() || stem.size() > 5) return false;
  bool all_digits = true;
  bool all_upper_roman = true;
  bool all_lower_roman = true;
  for (char c : stem) {
    all_digits &= IsAsciiDigit(c);
    all_upper_roman &= (c == 'I' || c == 'V' || c == 'X');
    all_lower_roman &= (c == 'i' || c == 'v' || c == 'x');
  }
  if (all_digits) return stem.size() <= 3;
  if (stem.size() == 1 && IsAsciiLetter(stem[0])) return true;
  return all_upper_roman || all_lower_roman;
}

// How the word after a terminator begins.
struct NextWordStart {
  bool plausible = false;  // could start a sentence: uppercase letter or digit after openers
  bool strong = false;     // a StrongSentenceStarters word
  bool digit = false;      // starts with a digit after openers
  bool initial = false;    // a single uppercase ASCII letter and a period ("M.")
};

bool IsStrongStarter(absl::string_view word) {
  size_t letters = 0;
  while (letters < word.size() && IsAsciiLetter(word[letters])) ++letters;
  // "A." is an initial, not the article.
  if (letters == 0 || letters > kMaxTableKeyLength) return false;
  if (letters < word.size() && word[letters] == '.') return false;
  // Accept "The" and "THE", not "THe": normalise to the capitalised spelling.
  char buffer[kMaxTableKeyLength];
  buffer[0] = word[0];
  bool rest_lower = true;
  bool rest_upper = true;
  for (size_t i = 1; i < letters; ++i) {
    rest_lower &= IsAsciiLower(word[i]);
    rest_upper &= IsAsciiUpper(word[i]);
    buffer[i] = absl::ascii_tolower(word[i]);
  }
  if (!rest_lower && !rest_upper) return false;
  return StrongSentenceStarters().contains(absl::string_view(buffer, letters));
}

NextWordStart ClassifyNextWord(absl::string_view next) {
  NextWordStart start;
  const absl::string_view s = StripLeadingOpeners(next);
  if (s.empty()) return start;
  const char c = s[0];
  if (IsAsciiDigit(c)) {
    start.plausible = true;
    start.digit = true;
  } else if (IsAsciiUpper(c)) {
    start.plausible = true;
    start.strong = IsStrongStarter(s);
    start.initial = s.size() >= 2 && s[1] == '.' && (s.size() == 2 || s[2] != '.');
  } else if (static_cast<unsigned char>(c) >= 0x80) {
    start.plausible = IsUppercaseCodePoint(DecodeFirstCodePoint(s));
  }
  return start;
}

// Whether a sentence ends after `word`, given the word after it (the two are separated by
// whitespace without a blank line) and whether `word` is the first word of its sentence.
bool EndsSentence(absl::string_view word, absl::string_view next, bool first_word) {
  const absl::string_view core = StripTrailingClosers(word);
  const TerminatorRun run = TrailingTerminators(core);
  if (run.length == 0) return false;
  const NextWordStart start = ClassifyNextWord(next);
  // Even "?" and "!" need a sentence start after them: "\"Why?\" she asked." is one sentence.
  if (!start.plausible) return false;
  // ?, ! and ellipses ("...", "…", "?!") are never abbreviations.
  if (run.has_strong || run.has_ellipsis_char || run.period_count > 1) return true;

  // A single period: abbreviation, initial, list marker, or the end of a sentence.
  const absl::string_view stem = StripLeadingOpeners(core.substr(0, core.size() - 1));
  if (first_word && IsEnumerator(stem)) return false;
  switch (ClassifyAbbreviation(stem)) {
    case AbbreviationKind::kNeverFinal:
      return false;
    case AbbreviationKind::kOftenFinal:
      return true;
    case AbbreviationKind::kNumberPrefix:
      return !start.digit;
    case AbbreviationKind::kAmbiguous:
      return start.strong;
    case AbbreviationKind::kPronounI:
      return !start.initial;
    case AbbreviationKind::kNone:
      return true;
  }
  return true;
}

// Skips whitespace from `pos`; returns the first non-whitespace position (or text.size()) and
// counts line breaks (\n, \r\n and a lone \r each count once) in `line_breaks`.
size_t SkipWhitespace(absl::string_view text, size_t pos, int* line_breaks) {
  *line_breaks = 0;
  const size_t n = text.size();
  while (pos < n && IsSpace(text[pos])) {
    if (text[pos] == '\n' || (text[pos] == '\r' && (pos + 1 == n || text[pos + 1] != '\n'))) {
      ++*line_breaks;
    }
    ++pos;
  }
  return pos;
}

size_t FindWordEnd(absl::string_view text, size_t pos) {
  const size_t n = text.size();
  while (pos < n && !IsSpace(text[pos])) ++pos;
  return pos;
}

}  // namespace

std::vector<SentenceSpan> SplitSentences(absl::string_view text) {
  std::vector<SentenceSpan> spans;
  int line_breaks = 0;
  size_t word_begin = SkipWhitespace(text, 0, &line_breaks);
  if (word_begin == text.size()) return spans;
  size_t word_end = FindWordEnd(text, word_begin);
  size_t sentence_begin = word_begin;
  bool first_word = true;
  while (true) {
    const size_t next_begin = SkipWhitespace(text, word_end, &line_breaks);
    if (next_begin == text.size()) {
      spans.push_back({sentence_begin, word_end});
      return spans;
    }
    const size_t next_end = FindWordEnd(text, next_begin);
    // A blank line ends a paragraph, and a sentence with it, whatever precedes it.
    if (line_breaks >= 2 ||
        EndsSentence(text.substr(word_begin, word_end - word_begin),
                     text.substr(next_begin, next_end - next_begin), first_word)) {
      spans.push_back({sentence_begin, word_end});
      sentence_begin = next_begin;
      first_word = true;
    } else {
      first_word = false;
    }
    word_begin = next_begin;
    word_end = next_end;
  }
}

std::vector<std::string> SplitSentenceStrings(absl::string_view text) {
  std::vector<std::string> sentences;
  for (const SentenceSpan& span : SplitSentences(text)) {
    sentences.emplace_back(text.substr(span.begin, span.end - span.begin));
  }
  return sentences;
}

std::string JoinSentencesWithAnchor(absl::string_view text, absl::string_view anchor) {
  std::string joined;
  joined.reserve(text.size());
  bool first = true;
  for (const SentenceSpan& span : SplitSentences(text)) {
    if (!first) {
      joined.push_back(' ');
      joined.append(anchor.data(), anchor.size());
      joined.push_back(' ');
    }
    first = false;
    joined.append(text.data() + span.begin, span.end - span.begin);
  }
  return joined;
}

std::string InsertAnchorsAtSentenceEnds(absl::string_view text, absl::string_view anchor,
                                        bool always_close_last) {
  const std::vector<SentenceSpan> spans = SplitSentences(text);
  std::string out;
  out.reserve(text.size() + spans.size() * anchor.size());
  size_t copied = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const SentenceSpan& span = spans[i];
    out.append(text.data() + copied, span.end - copied);
    copied = span.end;
    const bool last = i + 1 == spans.size();
    if (!last || always_close_last ||
        EndsWithSentenceTerminator(text.substr(span.begin, span.end - span.begin))) {
      out.append(anchor.data(), anchor.size());
    }
  }
  out.append(text.data() + copied, text.size() - copied);
  return out;
}

bool EndsWithSentenceTerminator(absl::string_view sentence) {
  while (!sentence.empty() && IsSpace(sentence.back())) sentence.remove_suffix(1);
  return TrailingTerminators(StripTrailingClosers(sentence)).length > 0;
}

}  // namespace anchorserve::model
