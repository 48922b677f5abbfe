// Fuzzes the tokenizer (model/tokenizer.h) with the default model's tokenizer.model
// (SentencePiece BPE, byte fallback, <AC> as a user-defined symbol): Encode of arbitrary bytes
// and Decode / StreamingDetokenizer of arbitrary ids. The first input byte holds the options
// (add_bos, skip_special, render_added_tokens); the rest is the text, and read as 32-bit ids.
//
// Properties, all from the header's contracts: every id Encode returns is in the vocabulary;
// decoded text is valid UTF-8; Decode(Encode(s)) == s for valid UTF-8 `s` without added tokens
// or U+2581; the streaming detokenizer's pieces add up to Decode of the same ids.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "fuzz/fuzz_check.h"
#include "model/tokenizer.h"

namespace anchorserve::model {
namespace {

const Tokenizer& DefaultTokenizer() {
  static const Tokenizer* const tokenizer = [] {
    const std::string dir = fuzz::DataDir() + "/default_model";
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(dir);
    if (!loaded.ok()) {
      std::fprintf(stderr, "cannot load the fuzz tokenizer from %s: %s\n", dir.c_str(),
                   loaded.status().ToString().c_str());
      std::abort();
    }
    return loaded->release();
  }();
  return *tokenizer;
}

// Where Encode may legitimately not round-trip (the header's exceptions).
bool RoundTrips(const Tokenizer& tokenizer, absl::string_view text) {
  if (!fuzz::IsValidUtf8(text) || absl::StrContains(text, "\xE2\x96\x81")) return false;
  for (const auto& [token, id] : tokenizer.added_tokens()) {
    if (absl::StrContains(text, token)) return false;
  }
  return true;
}

void CheckDecode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                 const Tokenizer::DecodeOptions& options) {
  const std::string text = tokenizer.Decode(ids, options);
  FUZZ_CHECK(fuzz::IsValidUtf8(text));
  StreamingDetokenizer stream(&tokenizer, options);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = stream.Push(id);
    FUZZ_CHECK(fuzz::IsValidUtf8(piece));
    streamed += piece;
    (void)tokenizer.IdToPiece(id);
    (void)tokenizer.IsAddedToken(id);
  }
  streamed += stream.Flush();
  FUZZ_CHECK(streamed == text);
}

}  // namespace
}  // namespace anchorserve::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace anchorserve::model;  // NOLINT(build/namespaces): a fuzz entry point
  if (size == 0) return 0;
  const Tokenizer& tokenizer = DefaultTokenizer();
  const uint8_t flags = data[0];
  const absl::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  Tokenizer::DecodeOptions options;
  options.skip_special = (flags & 2) == 0;
  options.render_added_tokens = (flags & 4) == 0;

  // Encode arbitrary bytes.
  const bool add_bos = (flags & 1) != 0;
  const std::vector<int32_t> ids = tokenizer.Encode(text, add_bos);
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size());
  if (add_bos) FUZZ_CHECK(!ids.empty() && ids.front() == tokenizer.bos_id());
  CheckDecode(tokenizer, ids, options);
  if (RoundTrips(tokenizer, text)) FUZZ_CHECK(tokenizer.Decode(ids) == text);
  (void)tokenizer.TokenToId(text);

  // Decode arbitrary ids: as read (mostly far outside the vocabulary), and folded into
  // [-4, vocab_size + 4) where every kind of piece and both edges are likely.
  std::vector<int32_t> raw(text.size() / sizeof(int32_t));
  if (!raw.empty()) std::memcpy(raw.data(), text.data(), raw.size() * sizeof(int32_t));
  CheckDecode(tokenizer, raw, options);
  const int64_t span = int64_t{tokenizer.vocab_size()} + 8;
  std::vector<int32_t> folded;
  folded.reserve(raw.size());
  for (int32_t id : raw) {
    int64_t v = int64_t{id} % span;
    if (v < 0) v += span;
    folded.push_back(static_cast<int32_t>(v - 4));
  }
  CheckDecode(tokenizer, folded, options);
  return 0;
}
