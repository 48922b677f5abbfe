#include "model/tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/remove_tree.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer_trainer.h"

namespace anchorserve::model {
namespace {

using ::testing::Contains;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;

namespace fs = std::filesystem;

constexpr int kVocabSize = 600;

// --- Fixtures: one tokenizer trained per process ----------------------------------------

fs::path TestRoot() {
  static const fs::path* root = [] {
    auto* path = new fs::path(fs::path(::testing::TempDir()) /
                              absl::StrCat("anchorserve_tokenizer_test_", getpid()));
    anchorserve::RemoveTree(*path);
    fs::create_directories(*path);
    return path;
  }();
  return *root;
}

class RemoveTestRoot : public ::testing::Environment {
 public:
  void TearDown() override { anchorserve::RemoveTree(TestRoot()); }
};
[[maybe_unused]] const auto* const kRemoveTestRoot =
    ::testing::AddGlobalTestEnvironment(new RemoveTestRoot);

void WriteFile(const fs::path& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
}

std::string ReadFileBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// Words with a sprinkling of non-ASCII text so the model has accented letters as pieces and
// the CJK characters and emoji (rarer than character_coverage keeps) fall back to bytes.
const std::vector<std::string>& Words() {
  static const auto* words = new std::vector<std::string>{
      "the",    "of",       "and",      "to",       "in",      "is",       "was",     "for",
      "on",     "that",     "with",     "as",       "by",      "at",       "from",    "his",
      "her",    "it",       "an",       "are",      "this",    "be",       "which",   "or",
      "had",    "not",      "but",      "have",     "their",   "one",      "they",    "all",
      "you",    "we",       "can",      "more",     "time",    "when",     "who",     "will",
      "there",  "been",     "would",    "about",    "into",    "than",     "only",    "other",
      "new",    "some",     "could",    "these",    "two",     "may",      "first",   "then",
      "like",   "now",      "over",     "such",     "man",     "even",     "most",    "made",
      "after",  "also",     "many",     "before",   "must",    "through",  "back",    "years",
      "where",  "much",     "way",      "well",     "down",    "should",   "because", "each",
      "people", "little",   "state",    "good",     "very",    "make",     "world",   "still",
      "work",   "long",     "here",     "both",     "between", "life",     "being",   "under",
      "never",  "day",      "same",     "another",  "know",    "while",    "last",    "might",
      "great",  "old",      "year",     "come",     "since",   "against",  "right",   "three",
      "house",  "during",   "without",  "again",    "place",   "around",   "however", "home",
      "small",  "found",    "thought",  "went",     "say",     "part",     "general", "high",
      "school", "every",    "course",   "until",    "always",  "away",     "water",   "public",
      "think",  "almost",   "hand",     "enough",   "far",     "head",     "system",  "better",
      "night",  "called",   "city",     "business", "give",    "group",    "young",   "room",
      "social", "order",    "national", "second",   "face",    "often",    "early",   "white",
      "large",  "children", "church",   "power",    "light",   "family",   "country", "area",
      "door",   "service",  "problem",  "certain",  "history", "company",  "money",   "field",
      "café",   "naïve",    "résumé",   "über",     "façade",  "jalapeño", "Zürich",  "piñata",
  };
  return *words;
}

const std::vector<std::string>& RareWords() {
  static const auto* words = new std::vector<std::string>{
      "東京", "北京", "日本語", "😀", "🚀", "🎉", "naïveté", "Ωmega", "ελληνικά", "Москва"};
  return *words;
}

// A deterministic few hundred KB of English-like lines.
std::string GenerateCorpus(size_t bytes) {
  std::mt19937 rng(20240207);
  auto pick = [&rng](size_t n) { return static_cast<size_t>(rng() % n); };
  std::string corpus;
  while (corpus.size() < bytes) {
    std::string line;
    const size_t sentences = 1 + pick(3);
    for (size_t s = 0; s < sentences; ++s) {
      std::string sentence;
      const size_t words = 4 + pick(12);
      for (size_t w = 0; w < words; ++w) {
        std::string word;
        const size_t kind = pick(100);
        if (kind < 5) {
          word = absl::StrCat(pick(100000));
        } else if (kind < 7) {
          word = absl::StrCat(pick(100), ".", pick(100));
        } else if (kind < 9) {
          word = RareWords()[pick(RareWords().size())];
        } else {
          word = Words()[pick(Words().size())];
        }
        if (w == 0 && word[0] >= 'a' && word[0] <= 'z') word[0] = word[0] - 'a' + 'A';
        if (w > 0) sentence += ' ';
        sentence += word;
        if (w + 1 < words && pick(10) == 0) sentence += ',';
      }
      static constexpr const char* kEnds[] = {".", ".", ".", "!", "?"};
      sentence += kEnds[pick(5)];
      if (pick(8) == 0) sentence = absl::StrCat("\"", sentence, "\"");
      if (pick(12) == 0) sentence = absl::StrCat("'", sentence, "'");
      if (!line.empty()) line += ' ';
      line += sentence;
    }
    corpus += line;
    corpus += '\n';
  }
  return corpus;
}

struct TrainedModel {
  fs::path corpus_path;
  fs::path dir;
  absl::Status status;
};

TokenizerTrainOptions OptionsFor(const fs::path& corpus, const fs::path& out_dir) {
  TokenizerTrainOptions options;
  options.input_files = {corpus.string()};
  options.output_dir = out_dir.string();
  options.vocab_size = kVocabSize;
  return options;
}

const TrainedModel& SharedModel() {
  static const TrainedModel* model = [] {
    auto* m = new TrainedModel;
    m->corpus_path = TestRoot() / "corpus.txt";
    m->dir = TestRoot() / "trained";
    WriteFile(m->corpus_path, GenerateCorpus(300000));
    m->status = TrainTokenizer(OptionsFor(m->corpus_path, m->dir));
    return m;
  }();
  return *model;
}

std::unique_ptr<Tokenizer> LoadShared() {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(SharedModel().dir.string());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

// Every suite needs the trained model. Without spm_train (e.g. on the GPU image) the suites
// are skipped rather than failed; any other training error fails them.
class WithTrainedTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status& status = SharedModel().status;
    if (status.code() == absl::StatusCode::kFailedPrecondition) GTEST_SKIP() << status;
    ASSERT_TRUE(status.ok()) << status;
  }
};
class TokenizerTrainerTest : public WithTrainedTokenizer {};
class TokenizerTest : public WithTrainedTokenizer {};
class TokenizerSpmAgreementTest : public WithTrainedTokenizer {};
class StreamingDetokenizerTest : public WithTrainedTokenizer {};
class TokenizerLoadTest : public WithTrainedTokenizer {};

// A directory holding the shared tokenizer.model plus the given JSON files.
fs::path ModelDirWith(const std::string& name, const std::string& added_tokens_json,
                      const std::string& special_tokens_map_json = "") {
  const fs::path dir = TestRoot() / name;
  fs::create_directories(dir);
  fs::copy_file(SharedModel().dir / "tokenizer.model", dir / "tokenizer.model",
                fs::copy_options::overwrite_existing);
  if (!added_tokens_json.empty()) WriteFile(dir / "added_tokens.json", added_tokens_json);
  if (!special_tokens_map_json.empty()) {
    WriteFile(dir / "special_tokens_map.json", special_tokens_map_json);
  }
  return dir;
}

// --- Helpers ------------------------------------------------------------------------------

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const auto& part : parts) all.insert(all.end(), part.begin(), part.end());
  return all;
}

// Strict UTF-8 validation, written independently of the code under test.
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, len = 3;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07, len = 4;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto t = static_cast<unsigned char>(s[i + k]);
      if ((t & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (t & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

std::string EncodeCodePoint(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// The documented round-trip normalisation: ASCII whitespace next to "<AC>" disappears.
std::string StripAroundAnchors(const std::string& text) {
  const std::string kAnchor = "<AC>";
  std::vector<std::string> parts;
  size_t begin = 0;
  while (true) {
    const size_t at = text.find(kAnchor, begin);
    parts.push_back(text.substr(begin, at == std::string::npos ? std::string::npos : at - begin));
    if (at == std::string::npos) break;
    begin = at + kAnchor.size();
  }
  const char* kWhitespace = " \t\n\r\v\f";
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string& part = parts[i];
    if (i + 1 < parts.size()) part.erase(part.find_last_not_of(kWhitespace) + 1);
    if (i > 0) part.erase(0, std::min(part.find_first_not_of(kWhitespace), part.size()));
  }
  return absl::StrJoin(parts, kAnchor);
}

// Random text from words, rare words, digits, punctuation, whitespace runs, arbitrary code
// points (mostly byte fallback) and, when `with_anchors`, "<AC>" and near-misses of it.
std::string RandomText(std::mt19937& rng, bool with_anchors) {
  auto pick = [&rng](size_t n) { return static_cast<size_t>(rng() % n); };
  static constexpr const char* kWhitespace[] = {" ", "  ", "\t", "\n", "\n\n", " \n ", "   "};
  static constexpr const char* kPunctuation[] = {".", ",", "!", "?",   "\"", "'", "(",  ")",
                                                 "-", ":", ";", "...", "<",  ">", "<A", "AC>"};
  std::string text;
  const size_t items = pick(25);
  for (size_t i = 0; i < items; ++i) {
    const size_t kind = pick(with_anchors ? 100 : 90);
    if (kind < 35) {
      text += Words()[pick(Words().size())];
    } else if (kind < 42) {
      text += RareWords()[pick(RareWords().size())];
    } else if (kind < 50) {
      text += absl::StrCat(pick(1000000));
    } else if (kind < 60) {
      text += kPunctuation[pick(std::size(kPunctuation))];
    } else if (kind < 80) {
      text += kWhitespace[pick(std::size(kWhitespace))];
    } else if (kind < 90) {
      uint32_t cp;
      do {
        cp = static_cast<uint32_t>(pick(4) == 0 ? 0x10000 + pick(0x100000 - 0x10000)
                                                : 0xA0 + pick(0xFFFE - 0xA0));
      } while ((cp >= 0xD800 && cp <= 0xDFFF) || cp == 0x2581);  // "▁" decodes as a space
      text += EncodeCodePoint(cp);
    } else {
      text += "<AC>";
    }
  }
  return text;
}

// --- Trainer ------------------------------------------------------------------------------

TEST_F(TokenizerTrainerTest, IdLayout) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_GT(fs::file_size(SharedModel().corpus_path), 250000u);
  EXPECT_EQ(tokenizer->vocab_size(), kVocabSize);
  EXPECT_EQ(tokenizer->IdToPiece(0), "<unk>");
  EXPECT_EQ(tokenizer->IdToPiece(1), "<s>");
  EXPECT_EQ(tokenizer->IdToPiece(2), "</s>");
  EXPECT_EQ(tokenizer->IdToPiece(kTrainedPadId), "[PAD]");
  EXPECT_EQ(tokenizer->IdToPiece(kTrainedAnchorId), "<AC>");
  EXPECT_EQ(tokenizer->unk_id(), kTrainedUnkId);
  EXPECT_EQ(tokenizer->bos_id(), kTrainedBosId);
  EXPECT_EQ(tokenizer->eos_id(), kTrainedEosId);
  EXPECT_EQ(tokenizer->pad_id(), kTrainedPadId);
  EXPECT_EQ(tokenizer->TokenToId("<AC>"), kTrainedAnchorId);
  EXPECT_EQ(tokenizer->TokenToId("[PAD]"), kTrainedPadId);
  for (int byte = 0; byte < 256; ++byte) {
    const std::string piece = absl::StrFormat("<0x%02X>", byte);
    EXPECT_EQ(tokenizer->IdToPiece(kTrainedFirstByteId + byte), piece);
    EXPECT_EQ(tokenizer->TokenToId(piece), kTrainedFirstByteId + byte);
  }
  EXPECT_TRUE(tokenizer->IsAddedToken(kTrainedAnchorId));
  EXPECT_FALSE(tokenizer->IsAddedToken(kTrainedPadId));
  EXPECT_FALSE(tokenizer->IsAddedToken(kTrainedFirstByteId + 300));  // a merge
  EXPECT_THAT(tokenizer->added_tokens(),
              ElementsAreArray({std::pair<std::string, int32_t>("<AC>", kTrainedAnchorId)}));
}

TEST_F(TokenizerTrainerTest, DeterministicModelBytes) {
  const fs::path again = TestRoot() / "trained_again";
  ASSERT_TRUE(TrainTokenizer(OptionsFor(SharedModel().corpus_path, again)).ok());
  EXPECT_EQ(ReadFileBytes(again / "tokenizer.model"),
            ReadFileBytes(SharedModel().dir / "tokenizer.model"));
  // Only the model is left behind: no scratch directory, no .vocab file.
  EXPECT_EQ(std::distance(fs::directory_iterator(again), fs::directory_iterator()), 1);
}

TEST_F(TokenizerTrainerTest, RejectsBadOptions) {
  TokenizerTrainOptions options = OptionsFor(SharedModel().corpus_path, TestRoot() / "bad");
  options.input_files.clear();
  EXPECT_EQ(TrainTokenizer(options).code(), absl::StatusCode::kInvalidArgument);

  options = OptionsFor(TestRoot() / "no_such_corpus.txt", TestRoot() / "bad");
  const absl::Status missing = TrainTokenizer(options);
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("no_such_corpus.txt"));

  options = OptionsFor(SharedModel().corpus_path, TestRoot() / "bad");
  options.vocab_size = 100;
  EXPECT_EQ(TrainTokenizer(options).code(), absl::StatusCode::kInvalidArgument);

  // More pieces than the text has to offer: SentencePiece's own complaint comes back.
  options.vocab_size = 50000;
  const absl::Status too_big = TrainTokenizer(options);
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_big.message(), HasSubstr("Vocabulary size"));

  options.vocab_size = kVocabSize;
  options.spm_train_path = (TestRoot() / "no_such_spm_train").string();
  EXPECT_EQ(TrainTokenizer(options).code(), absl::StatusCode::kFailedPrecondition);

  EXPECT_FALSE(fs::exists(TestRoot() / "bad" / "tokenizer.model"));
  // The scratch directories are gone.
  EXPECT_TRUE(fs::is_empty(TestRoot() / "bad"));
}

// --- Encode / Decode ----------------------------------------------------------------------

TEST_F(TokenizerTest, DigitsAreSplitAndNothingIsUnknown) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  for (int32_t id : tokenizer->Encode("1234567890 東京 😀 \x01", false)) {
    if (id >= kTrainedFirstByteId && id < kTrainedFirstByteId + 256) continue;  // "<0x01>"
    const std::string piece = tokenizer->IdToPiece(id);
    EXPECT_LE(std::count_if(piece.begin(), piece.end(), [](char c) { return isdigit(c); }), 1)
        << piece;
    EXPECT_NE(id, tokenizer->unk_id());
  }
}

TEST_F(TokenizerTest, RoundTripsWithoutAddedTokens) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  std::vector<std::string> texts = {
      "",
      " ",
      "Hello, world!",
      "  two leading spaces",
      "trailing spaces  ",
      "tabs\tand\nnewlines\n\n",
      "\n",
      "東京 café naïve 😀🚀 Zürich",
      "\"Quoted,\" she said. 'Single.'",
      "3.14159 and 1,000,000",
      "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 Ω≈ç√ ﬁ ＡＢＣ",  // NFKC would change the last two
      "control \x01\x1f chars",
      "<AC",
      "AC>",
      "< AC >",
  };
  std::ifstream corpus(SharedModel().corpus_path);
  std::string line;
  for (int i = 0; i < 200 && std::getline(corpus, line); ++i) texts.push_back(line);
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) texts.push_back(RandomText(rng, /*with_anchors=*/false));

  for (const std::string& text : texts) {
    for (bool add_bos : {false, true}) {
      const std::vector<int32_t> ids = tokenizer->Encode(text, add_bos);
      EXPECT_EQ(tokenizer->Decode(ids), text) << "ids: " << absl::StrJoin(ids, " ");
      if (add_bos) {
        ASSERT_FALSE(ids.empty());
        EXPECT_EQ(ids.front(), tokenizer->bos_id());
      }
      if (!ids.empty()) {
        EXPECT_NE(ids.back(), tokenizer->eos_id());
      }
      for (int32_t id : ids) {
        EXPECT_GE(id, 0);
        EXPECT_LT(id, tokenizer->vocab_size());
      }
    }
  }
  EXPECT_TRUE(tokenizer->Encode("", false).empty());
}

// The split-and-strip rule of the old HF slow tokenizer, for the added token at `anchor`.
void ExpectAnchorRules(const Tokenizer& tokenizer, int32_t anchor) {
  auto sp = [&tokenizer](const std::string& text) { return tokenizer.Encode(text, false); };
  // The reference example (docs/anllm-reference.md §1).
  EXPECT_THAT(tokenizer.Encode("A. <AC> \n\nB", false),
              ElementsAreArray(Concat({sp("A."), {anchor}, sp("B")})));
  EXPECT_THAT(tokenizer.Encode("A. <AC> \n\nB", true),
              ElementsAreArray(Concat({{tokenizer.bos_id()}, sp("A."), {anchor}, sp("B")})));
  EXPECT_EQ(tokenizer.Decode(tokenizer.Encode("A. <AC> \n\nB", true)), "A.<AC>B");
  EXPECT_EQ(tokenizer.Decode(tokenizer.Encode("A. <AC> \n\nB", true),
                             {.skip_special = true, .render_added_tokens = false}),
            "A.B");
  // At the start and the end.
  EXPECT_THAT(tokenizer.Encode("<AC> hello", false),
              ElementsAreArray(Concat({{anchor}, sp("hello")})));
  EXPECT_THAT(tokenizer.Encode("  hello \n<AC>", false),
              ElementsAreArray(Concat({sp("  hello"), {anchor}})));
  EXPECT_THAT(tokenizer.Encode("<AC>", false), ElementsAreArray({anchor}));
  // Consecutive, and separated by whitespace only.
  EXPECT_THAT(tokenizer.Encode("<AC><AC>", false), ElementsAreArray({anchor, anchor}));
  EXPECT_THAT(tokenizer.Encode("x <AC> \t <AC> y", false),
              ElementsAreArray(Concat({sp("x"), {anchor, anchor}, sp("y")})));
  // No spaces: each side is still its own chunk with its own dummy prefix.
  EXPECT_THAT(tokenizer.Encode("end.<AC>Next", false),
              ElementsAreArray(Concat({sp("end."), {anchor}, sp("Next")})));
  // Unicode whitespace (Python str.isspace) is stripped too.
  EXPECT_THAT(tokenizer.Encode("a\xE3\x80\x80<AC>\xC2\xA0\xE2\x80\xA8 b", false),
              ElementsAreArray(Concat({sp("a"), {anchor}, sp("b")})));
  // Partial matches are plain text.
  for (const std::string text : {"<AC", "x <AC y", "AC>", "<ac>", "< AC>"}) {
    const std::vector<int32_t> ids = tokenizer.Encode(text, false);
    EXPECT_THAT(ids, Not(Contains(anchor))) << text;
    EXPECT_EQ(tokenizer.Decode(ids), text);
  }
  // Round trips up to the documented normalisation.
  std::mt19937 rng(11);
  for (int i = 0; i < 400; ++i) {
    const std::string text = RandomText(rng, /*with_anchors=*/true);
    const std::vector<int32_t> ids = tokenizer.Encode(text, i % 2 == 0);
    EXPECT_EQ(tokenizer.Decode(ids), StripAroundAnchors(text))
        << "text: [" << text << "] ids: " << absl::StrJoin(ids, " ");
  }
}

TEST_F(TokenizerTest, SplitsAndStripsAroundUserDefinedAnchor) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  ExpectAnchorRules(*tokenizer, kTrainedAnchorId);
}

TEST_F(TokenizerTest, AddedTokensPastTheSentencePieceVocabulary) {
  const int32_t v = kVocabSize;
  const fs::path dir =
      ModelDirWith("added", absl::StrCat(R"({"[PAD]": )", v, R"(, "<AC>": )", v + 1, "}"));
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& tokenizer = **loaded;
  EXPECT_EQ(tokenizer.vocab_size(), v + 2);
  EXPECT_EQ(tokenizer.pad_id(), v);  // the added [PAD] wins over the SentencePiece pad piece
  EXPECT_EQ(tokenizer.TokenToId("<AC>"), v + 1);
  EXPECT_EQ(tokenizer.TokenToId("[PAD]"), v);
  EXPECT_EQ(tokenizer.IdToPiece(v + 1), "<AC>");
  EXPECT_TRUE(tokenizer.IsAddedToken(v));
  EXPECT_TRUE(tokenizer.IsAddedToken(v + 1));
  EXPECT_TRUE(tokenizer.IsAddedToken(kTrainedAnchorId));  // shadowed, still decodes as <AC>
  EXPECT_FALSE(tokenizer.IsAddedToken(v + 2));
  EXPECT_THAT(tokenizer.added_tokens(),
              ElementsAreArray(
                  std::vector<std::pair<std::string, int32_t>>{{"[PAD]", v}, {"<AC>", v + 1}}));
  ExpectAnchorRules(tokenizer, v + 1);

  // As in the HF slow tokenizer, "[PAD]" text is an added token too; it is special, so
  // Decode skips it by default.
  const std::vector<int32_t> ids = tokenizer.Encode("x [PAD] y", false);
  EXPECT_THAT(ids, Contains(v));
  EXPECT_EQ(tokenizer.Decode(ids), "xy");
  EXPECT_EQ(tokenizer.Decode(ids, {.skip_special = false}), "x[PAD]y");
  EXPECT_EQ(tokenizer.Decode(Concat(
                {tokenizer.Encode("a", false), {kTrainedAnchorId}, tokenizer.Encode("b", false)})),
            "a<AC>b");
}

TEST_F(TokenizerTest, LongestAddedTokenWins) {
  const int32_t v = kVocabSize;
  const fs::path dir = ModelDirWith("longest", absl::StrCat(R"({"[PAD]": )", v, R"(, "<AC>": )",
                                                            v + 1, R"(, "<AC>x": )", v + 2, "}"));
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& tokenizer = **loaded;
  auto sp = [&tokenizer](const std::string& text) { return tokenizer.Encode(text, false); };
  EXPECT_THAT(sp("a <AC>x b"), ElementsAreArray(Concat({sp("a"), {v + 2}, sp("b")})));
  EXPECT_THAT(sp("a <AC>y b"), ElementsAreArray(Concat({sp("a"), {v + 1}, sp("y b")})));
  EXPECT_THAT(sp("<AC><AC>x"), ElementsAreArray({v + 1, v + 2}));
}

TEST_F(TokenizerTest, SpecialTokensAndTokenBytes) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  const std::vector<int32_t> hi = tokenizer->Encode("hi there", false);
  const std::vector<int32_t> ids = Concat({{kTrainedBosId}, hi, {kTrainedEosId, kTrainedPadId}});
  EXPECT_EQ(tokenizer->Decode(ids), "hi there");
  EXPECT_EQ(tokenizer->Decode(ids, {.skip_special = false}), "<s>hi there</s>[PAD]");
  EXPECT_EQ(tokenizer->Decode({kTrainedUnkId}), "");
  EXPECT_EQ(tokenizer->Decode({kTrainedUnkId}, {.skip_special = false}), "<unk>");

  // Out-of-range ids produce nothing and count as the start of text.
  EXPECT_EQ(tokenizer->Decode(Concat({{-1}, hi, {tokenizer->vocab_size(), 1 << 30}})), "hi there");
  EXPECT_EQ(tokenizer->IdToPiece(-1), "");
  EXPECT_EQ(tokenizer->IdToPiece(tokenizer->vocab_size()), "");
  EXPECT_EQ(tokenizer->TokenToId("no such piece"), std::nullopt);
  EXPECT_EQ(tokenizer->TokenToId(""), std::nullopt);
  EXPECT_EQ(tokenizer->TokenToId("<unk>"), kTrainedUnkId);

  // The dummy-prefix space is dropped at the start and after added and control tokens only.
  int32_t word = -1;
  for (int32_t id = 261; id < tokenizer->vocab_size() && word < 0; ++id) {
    const std::string piece = tokenizer->IdToPiece(id);
    if (piece.rfind("\xE2\x96\x81", 0) == 0 && piece.size() > 4) word = id;
  }
  ASSERT_GE(word, 0);
  const std::string bare = tokenizer->IdToPiece(word).substr(3);
  const int32_t letter = *tokenizer->TokenToId("e");
  EXPECT_EQ(tokenizer->TokenBytes(word, -1), bare);
  EXPECT_EQ(tokenizer->TokenBytes(word, kTrainedBosId), bare);
  EXPECT_EQ(tokenizer->TokenBytes(word, kTrainedAnchorId), bare);
  EXPECT_EQ(tokenizer->TokenBytes(word, letter), " " + bare);
  EXPECT_EQ(tokenizer->TokenBytes(word, kTrainedUnkId), " " + bare);
  EXPECT_EQ(tokenizer->TokenBytes(kTrainedFirstByteId + 0xF0, -1), "\xF0");
  EXPECT_EQ(tokenizer->TokenBytes(tokenizer->vocab_size(), -1), "");
}

// --- Agreement with SentencePiece itself ---------------------------------------------------

// Runs a shell command; false when it fails (or the tool is missing).
bool RunShell(const std::string& command) { return std::system(command.c_str()) == 0; }

// Our encoder against spm_encode (a separate process: libsentencepiece cannot be loaded into
// this one, see tokenizer.h) on text without added tokens, where Encode is one SentencePiece
// call.
void ExpectSameIdsAsSpmEncode(const fs::path& model, const Tokenizer& tokenizer,
                              const std::vector<std::string>& lines) {
  const fs::path input = TestRoot() / "spm_input.txt";
  const fs::path output = TestRoot() / "spm_output.txt";
  WriteFile(input, absl::StrCat(absl::StrJoin(lines, "\n"), "\n"));
  if (!RunShell(absl::StrCat("spm_encode --model=", model.string(), " --output_format=id --input=",
                             input.string(), " --output=", output.string(), " 2>/dev/null"))) {
    GTEST_SKIP() << "spm_encode is not available";
  }
  std::ifstream expected(output);
  std::string line;
  for (const std::string& text : lines) {
    ASSERT_TRUE(std::getline(expected, line));
    EXPECT_EQ(absl::StrJoin(tokenizer.Encode(text, false), " "), line) << "text: [" << text << "]";
  }
}

std::vector<std::string> SpmComparisonLines() {
  std::vector<std::string> lines = {"Hello, world!",
                                    "  two leading spaces",
                                    "trailing  ",
                                    "tabs\tinside",
                                    "東京 café naïve 😀🚀 Zürich",
                                    "3.14159 and 1,000,000",
                                    "invalid \xFF\xC0\xAF utf-8 \xE6\x9D",
                                    "surrogate \xED\xA0\x80 overlong \xE0\x80\x80",
                                    "control \x01\x1f chars",
                                    "<AC",
                                    "AC>",
                                    "   ",
                                    "  ",
                                    "x  y",
                                    "thethethe"};
  // The same pair mergeable at overlapping positions: the leftmost merge must win.
  for (const char* prefix : {"", "x", "b", "th", "w"}) {
    for (char c : std::string("aeiostlnrdh")) {
      lines.push_back(absl::StrCat(prefix, std::string(5, c), " ", prefix, std::string(6, c)));
    }
  }
  std::ifstream corpus(SharedModel().corpus_path);
  std::string line;
  for (int i = 0; i < 300 && std::getline(corpus, line); ++i) lines.push_back(line);
  std::mt19937 rng(5);
  for (int i = 0; i < 500; ++i) {
    std::string text = RandomText(rng, /*with_anchors=*/false);
    std::replace(text.begin(), text.end(), '\n', ' ');  // one text per line
    lines.push_back(text);
  }
  return lines;
}

TEST_F(TokenizerSpmAgreementTest, TrainedModel) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  ExpectSameIdsAsSpmEncode(SharedModel().dir / "tokenizer.model", *tokenizer, SpmComparisonLines());
}

// A model with the other normalizer branch (remove_extra_whitespaces) and no byte fallback.
TEST_F(TokenizerSpmAgreementTest, ExtraWhitespaceRemovalWithoutByteFallback) {
  const fs::path dir = TestRoot() / "rew";
  fs::create_directories(dir);
  if (!RunShell(absl::StrCat("spm_train --input=", SharedModel().corpus_path.string(),
                             " --model_prefix=", (dir / "tokenizer").string(),
                             " --model_type=bpe --vocab_size=400 --normalization_rule_name=identity"
                             " --remove_extra_whitespaces=true --minloglevel=2 >/dev/null 2>&1"))) {
    GTEST_SKIP() << "spm_train is not available";
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir.string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ExpectSameIdsAsSpmEncode(dir / "tokenizer.model", **tokenizer, SpmComparisonLines());
}

TEST_F(TokenizerSpmAgreementTest, RejectsUnsupportedModels) {
  for (const std::string flags : {"--model_type=unigram --vocab_size=400",
                                  "--model_type=bpe --vocab_size=400"
                                  " --normalization_rule_name=nmt_nfkc"}) {
    const fs::path dir = TestRoot() / "unsupported";
    anchorserve::RemoveTree(dir);
    fs::create_directories(dir);
    if (!RunShell(absl::StrCat("spm_train --input=", SharedModel().corpus_path.string(),
                               " --model_prefix=", (dir / "tokenizer").string(), " ", flags,
                               " --minloglevel=2 >/dev/null 2>&1"))) {
      GTEST_SKIP() << "spm_train is not available";
    }
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir.string());
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument) << flags;
    EXPECT_THAT(tokenizer.status().message(), HasSubstr("unsupported")) << flags;
    EXPECT_THAT(tokenizer.status().message(), HasSubstr("tokenizer.model")) << flags;
  }
}

// --- Streaming ----------------------------------------------------------------------------

std::vector<int32_t> BytePieces(const std::string& bytes) {
  std::vector<int32_t> ids;
  for (char c : bytes) ids.push_back(kTrainedFirstByteId + static_cast<unsigned char>(c));
  return ids;
}

TEST_F(StreamingDetokenizerTest, HoldsBackIncompleteCharacters) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  StreamingDetokenizer stream(tokenizer.get());
  const std::vector<int32_t> smile = BytePieces("😀");
  EXPECT_EQ(stream.Push(smile[0]), "");
  EXPECT_EQ(stream.Push(smile[1]), "");
  EXPECT_EQ(stream.Push(smile[2]), "");
  EXPECT_EQ(stream.Push(smile[3]), "😀");
  EXPECT_EQ(stream.Flush(), "");

  // Invalid orders: a stray continuation byte, a lead byte followed by ASCII, a truncated
  // sequence at the end: one U+FFFD each.
  const std::string kBad = "\xEF\xBF\xBD";
  const std::vector<int32_t> bad = BytePieces(
      "\x80\xF0"
      "A\xE6\x9D");
  EXPECT_EQ(tokenizer->Decode(bad), kBad + kBad + "A" + kBad);
  std::string streamed;
  for (int32_t id : bad) streamed += stream.Push(id);
  EXPECT_EQ(streamed, kBad + kBad + "A");
  EXPECT_EQ(stream.Flush(), kBad);
  // Surrogates and overlong forms are invalid too.
  EXPECT_EQ(tokenizer->Decode(BytePieces("\xED\xA0\x80")), kBad + kBad + kBad);
  EXPECT_EQ(tokenizer->Decode(BytePieces("\xC0\xAF")), kBad + kBad);
  // A text piece interrupting a character (keeping its space: a byte piece starts no chunk).
  EXPECT_EQ(tokenizer->Decode(Concat({BytePieces("\xE6\x9D"), tokenizer->Encode("x", false)})),
            kBad + " x");
}

TEST_F(StreamingDetokenizerTest, MatchesDecodeForRandomSequences) {
  std::unique_ptr<Tokenizer> tokenizer = LoadShared();
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(3);
  auto pick = [&rng](size_t n) { return static_cast<size_t>(rng() % n); };
  const std::vector<Tokenizer::DecodeOptions> all_options = {
      {}, {.skip_special = false}, {.skip_special = true, .render_added_tokens = false}};
  std::vector<std::string> multibyte = RareWords();
  multibyte.push_back("é");
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<int32_t> ids;
    const size_t length = pick(40);
    while (ids.size() < length) {
      const size_t kind = pick(10);
      if (kind < 3) {
        // A multi-byte character as byte pieces, sometimes cut short or scrambled.
        std::vector<int32_t> bytes = BytePieces(multibyte[pick(multibyte.size())]);
        if (pick(3) == 0) bytes.resize(pick(bytes.size()) + 1);
        if (pick(4) == 0) std::shuffle(bytes.begin(), bytes.end(), rng);
        ids.insert(ids.end(), bytes.begin(), bytes.end());
      } else if (kind < 5) {
        ids.push_back(kTrainedFirstByteId + static_cast<int32_t>(pick(256)));
      } else if (kind < 6) {
        ids.push_back(static_cast<int32_t>(pick(5)));  // <unk> <s> </s> [PAD] <AC>
      } else if (kind < 7) {
        ids.push_back(static_cast<int32_t>(pick(8)) - 3 + (pick(2) ? tokenizer->vocab_size() : 0));
      } else {
        ids.push_back(static_cast<int32_t>(pick(tokenizer->vocab_size())));
      }
    }
    if (trial % 5 == 0) {
      ids = tokenizer->Encode(RandomText(rng, /*with_anchors=*/true), trial % 2 == 0);
    }
    for (const Tokenizer::DecodeOptions& options : all_options) {
      StreamingDetokenizer stream(tokenizer.get(), options);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string out = stream.Push(id);
        ASSERT_TRUE(IsValidUtf8(out)) << absl::StrJoin(ids, " ");
        streamed += out;
      }
      const std::string tail = stream.Flush();
      ASSERT_TRUE(IsValidUtf8(tail));
      streamed += tail;
      const std::string decoded = tokenizer->Decode(ids, options);
      ASSERT_EQ(streamed, decoded) << absl::StrJoin(ids, " ");
      ASSERT_TRUE(IsValidUtf8(decoded));
      // Reusable after Flush.
      std::string again;
      for (int32_t id : tokenizer->Encode("ok", false)) again += stream.Push(id);
      EXPECT_EQ(again + stream.Flush(), "ok");
    }
  }
}

// --- Loading errors -----------------------------------------------------------------------

TEST_F(TokenizerLoadTest, MissingAndCorruptModel) {
  const fs::path empty = TestRoot() / "empty_dir";
  fs::create_directories(empty);
  absl::StatusOr<std::unique_ptr<Tokenizer>> missing = Tokenizer::Load(empty.string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("tokenizer.model"));

  for (const std::string& contents :
       {std::string("this is not a model\n"), std::string(), std::string("\x0a\x05\x0a\x01", 4)}) {
    const fs::path dir = TestRoot() / "corrupt";
    fs::create_directories(dir);
    WriteFile(dir / "tokenizer.model", contents);
    absl::StatusOr<std::unique_ptr<Tokenizer>> corrupt = Tokenizer::Load(dir.string());
    EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(corrupt.status().message(), HasSubstr((dir / "tokenizer.model").string()));
  }

  absl::StatusOr<std::unique_ptr<Tokenizer>> no_json = Tokenizer::LoadFromFiles(
      (SharedModel().dir / "tokenizer.model").string(), (TestRoot() / "nope.json").string());
  EXPECT_EQ(no_json.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_json.status().message(), HasSubstr("nope.json"));
}

TEST_F(TokenizerLoadTest, BadAddedTokensJson) {
  const int32_t v = kVocabSize;
  const std::vector<std::string> bad = {
      "{",                                                     // not JSON
      "[600, 601]",                                            // not an object
      R"({"<X>": "600"})",                                     // not an integer
      R"({"<X>": -1})",                                        // negative
      R"({"<X>": 1.5})",                                       // not an integer
      R"({"": 600})",                                          // empty token
      absl::StrCat(R"({"<X>": )", v + 1, "}"),                 // gap after the vocabulary
      absl::StrCat(R"({"<X>": )", v, R"(, "<Y>": )", v, "}"),  // duplicate id
      R"({"<X>": 300})",                                       // another piece's id
      R"({"<X>": 7})",                                         // a byte piece's id
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    const fs::path dir = ModelDirWith(absl::StrCat("bad_added_", i), bad[i]);
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir.string());
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << bad[i];
    EXPECT_THAT(loaded.status().message(), HasSubstr("added_tokens.json")) << bad[i];
  }
  // An alias of an existing piece with the same string is fine.
  const fs::path alias = ModelDirWith("alias", R"({"<AC>": 4, "[PAD]": 3})");
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(alias.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->vocab_size(), kVocabSize);
  EXPECT_EQ((*loaded)->Encode("[PAD]", false).size() > 1, true);  // control text stays text
}

TEST_F(TokenizerLoadTest, SpecialTokensMap) {
  const int32_t v = kVocabSize;
  const std::string added = absl::StrCat(R"({"[PAD]": )", v, R"(, "<AC>": )", v + 1, "}");
  const fs::path good =
      ModelDirWith("special_good", added,
                   R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
          "unk_token": "<unk>", "pad_token": "<AC>", "additional_special_tokens": []})");
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(good.string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->pad_id(), v + 1);
  EXPECT_EQ((*loaded)->Decode({v + 1}), "");  // now special

  for (const std::string& map : {std::string(R"({"pad_token": "<nope>"})"),
                                 std::string(R"({"eos_token": 2})"), std::string("{")}) {
    const fs::path dir = ModelDirWith("special_bad", added, map);
    absl::StatusOr<std::unique_ptr<Tokenizer>> bad = Tokenizer::Load(dir.string());
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << map;
    EXPECT_THAT(bad.status().message(), HasSubstr("special_tokens_map.json")) << map;
  }
}

}  // namespace
}  // namespace anchorserve::model
