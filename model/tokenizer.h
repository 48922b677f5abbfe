// SentencePiece tokenizer with the added-token handling of the slow Hugging Face LlamaTokenizer
// that the released AnLLM checkpoints were trained with (docs/anllm-reference.md §1), plus a
// streaming detokenizer for token-by-token output. Torch-free.
//
// The SentencePiece BPE encoder is our own code and reads tokenizer.model itself: Debian's
// libsentencepiece bundles protobuf-lite 3.14 and exports its symbols, so it cannot share a
// process with libprotobuf 3.21 (pulled in by libtorch and gRPC); see docs/TOKENIZER.md.
// The test suite checks the encoder id for id against SentencePiece's spm_encode.
#ifndef ANCHORSERVE_MODEL_TOKENIZER_H_
#define ANCHORSERVE_MODEL_TOKENIZER_H_

#include <bitset>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace anchorserve::model {

class SentencePieceBpeModel;  // tokenizer.cc

struct TokenizerDecodeOptions {
  // BOS/EOS/PAD/UNK and SentencePiece control pieces produce no text. When false they
  // produce their piece string, e.g. "<s>".
  bool skip_special = true;
  // Added tokens that are not special (e.g. "<AC>") appear in the text. When false they
  // produce nothing.
  bool render_added_tokens = true;
};

// Immutable after Load. Every method is const and safe to call from any number of threads at
// once.
//
// Token kinds:
//  * SentencePiece pieces: normal text pieces ("▁" marks a space), byte-fallback pieces
//    "<0xNN>", control pieces (<s>, </s>, the SentencePiece pad piece), <unk>.
//  * Added tokens: the entries of added_tokens.json, plus SentencePiece user-defined symbols
//    (<AC> in tokenizers made by TrainTokenizer). Encode splits the text on them; each decodes
//    to its own string.
//  * Special tokens: BOS, EOS, UNK, PAD and every SentencePiece control piece; Decode can skip
//    them. The text of a SentencePiece special piece is NOT recognised in a prompt: "</s>"
//    typed by a user encodes as ordinary characters (the old HF slow tokenizer split on it; we
//    refuse so user text cannot forge control ids). A special token that is also an added
//    token (the released models' "[PAD]") is split out like any added token, as HF does.
class Tokenizer {
 public:
  // Defined outside the class only because GCC rejects `= {}` default arguments of a nested
  // struct with member initializers; spell it Tokenizer::DecodeOptions.
  using DecodeOptions = TokenizerDecodeOptions;

  // Loads <model_dir>/tokenizer.model (SentencePiece), and when present
  // <model_dir>/added_tokens.json and <model_dir>/special_tokens_map.json.
  //
  // added_tokens.json is a JSON object {token: id}. As in the HF slow tokenizer, ids at or past
  // the SentencePiece vocabulary must be consecutive from its size (released AnLLM-AC:
  // {"[PAD]": 32000, "<AC>": 32001}); an id inside the vocabulary is accepted only when the
  // SentencePiece piece there is the same string. An added token shadows a SentencePiece piece
  // of the same string for Encode and TokenToId.
  //
  // special_tokens_map.json may name bos_token, eos_token, unk_token and pad_token (a string
  // or {"content": string}); each must resolve through TokenToId. Other keys are ignored.
  // Without it: BOS/EOS/UNK come from SentencePiece; PAD is the added "[PAD]" when there is
  // one, else the SentencePiece pad piece, else -1.
  //
  // Supported tokenizer.model files: SentencePiece BPE models with the identity normalizer
  // (Llama-2, TrainTokenizer). Unigram models and NFKC-style normalizers are rejected.
  //
  // Errors (each message names the offending file): NotFound when tokenizer.model is missing
  // or a file cannot be read, InvalidArgument when a file is malformed, inconsistent or an
  // unsupported kind of model.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);

  // As Load, from explicit paths and without a special_tokens_map.json.
  // `added_tokens_json_path` may be empty for none; when non-empty the file must exist.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromFiles(
      const std::string& sp_model_path, const std::string& added_tokens_json_path);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // The old slow HF LlamaTokenizer: BOS prepended when `add_bos` (and the model has one), never
  // an EOS. The text is split on added tokens, scanning left to right; where several match at
  // one position the longest wins. The text left of each added token is rstrip()ed and the
  // text right of it lstrip()ed (Python str.isspace() whitespace, newlines included), and each
  // non-empty chunk is SentencePiece-encoded on its own, so each gets its own dummy-prefix "▁".
  // Example: "A. <AC> \n\nB" -> sp("A.") + [<AC>] + sp("B").
  // As SentencePiece does, each invalid UTF-8 byte of `text` is encoded as U+FFFD. Every id
  // returned is in [0, vocab_size()).
  std::vector<int32_t> Encode(absl::string_view text, bool add_bos) const;

  // The concatenation of TokenBytes(ids[i], ids[i-1]) (ids[-1] = -1), with invalid UTF-8
  // (from byte-fallback pieces) replaced by U+FFFD once per maximal invalid subpart, as
  // Python's bytes.decode("utf-8", errors="replace") does. Ids outside [0, vocab_size())
  // produce no text. Always returns valid UTF-8.
  //
  // Round trip: Decode(Encode(s, b)) == s for UTF-8 `s` except that whitespace next to an
  // added token is gone (see Encode) and a literal U+2581 "▁" comes back as a space.
  std::string Decode(absl::Span<const int32_t> ids, const DecodeOptions& options = {}) const;

  // The raw bytes token `id` contributes to decoded text when it follows `previous` (-1 at
  // the start of the text; any id outside [0, vocab_size()) counts as the start too).
  // "▁" becomes a space; a byte-fallback piece <0xNN> is the single raw byte (possibly half a
  // UTF-8 character); added and special tokens follow `options`. The leading space of a text
  // piece is dropped (the SentencePiece dummy prefix) when `previous` is the start, an added
  // token or a control piece (BOS/EOS/PAD), because Encode starts a new chunk there.
  // Out-of-range `id`: empty.
  std::string TokenBytes(int32_t id, int32_t previous, const DecodeOptions& options = {}) const;

  // SentencePiece pieces plus added tokens past them: max id + 1.
  int32_t vocab_size() const { return vocab_size_; }
  // -1 when the tokenizer has none.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }

  // The id of an added token or SentencePiece piece (byte pieces as "<0x0A>"); added tokens
  // win. nullopt when unknown: never unk_id() for an unknown string.
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The piece or added-token string; "" for ids outside [0, vocab_size()).
  std::string IdToPiece(int32_t id) const;
  // True for ids of added_tokens.json entries and SentencePiece user-defined symbols, including
  // one shadowed by an added token of the same string.
  bool IsAddedToken(int32_t id) const;
  // The tokens Encode splits on, with the id it emits for each, sorted by id.
  const std::vector<std::pair<std::string, int32_t>>& added_tokens() const { return added_tokens_; }

 private:
  enum class PieceKind : uint8_t {
    kText,     // normal (and unused) SentencePiece piece, "▁" already turned into a space
    kByte,     // byte-fallback piece; text is the one raw byte
    kControl,  // SentencePiece control piece: <s>, </s>, the pad piece
    kUnknown,  // <unk>
    kAdded,    // added_tokens.json entry or SentencePiece user-defined symbol
  };
  struct PieceInfo {
    PieceKind kind = PieceKind::kText;
    bool special = false;        // skipped under DecodeOptions::skip_special
    bool leading_space = false;  // kText whose piece starts with "▁"
    std::string text;            // surface text (kText, kByte) or the piece string
  };

  // Builds from validated parts; cannot fail.
  Tokenizer(std::unique_ptr<const SentencePieceBpeModel> model, std::vector<PieceInfo> pieces,
            std::vector<std::pair<std::string, int32_t>> added_tokens, bool strip_dummy_prefix,
            int32_t bos_id, int32_t eos_id, int32_t unk_id, int32_t pad_id);

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(
      const std::string& sp_model_path, const std::string& added_tokens_json_path,
      const std::string& special_tokens_map_path);

  // True when a text piece after `previous` starts a new Encode chunk.
  bool StartsChunk(int32_t previous) const;
  // Index into added_tokens_ of the longest added token at text[pos], or -1.
  int LongestAddedTokenAt(absl::string_view text, size_t pos) const;
  void EncodeChunk(absl::string_view chunk, std::vector<int32_t>* ids) const;

  std::unique_ptr<const SentencePieceBpeModel> model_;
  std::vector<PieceInfo> pieces_;  // indexed by id, size vocab_size_
  std::vector<std::pair<std::string, int32_t>> added_tokens_;
  absl::flat_hash_map<std::string, int32_t> added_token_ids_;
  std::vector<int> added_by_length_;    // indices into added_tokens_, longest first
  std::bitset<256> added_first_bytes_;  // cheap rejection while scanning
  bool strip_dummy_prefix_;
  int32_t vocab_size_;
  int32_t bos_id_;
  int32_t eos_id_;
  int32_t unk_id_;
  int32_t pad_id_;
};

// Turns ids arriving one at a time into text without ever emitting part of a UTF-8 character:
// bytes of an incomplete sequence are held back until it completes, invalid bytes come out as
// U+FFFD. The concatenation of every Push() and the final Flush() equals
// tokenizer->Decode(all ids, options), for any id sequence. Every returned string is valid
// UTF-8.
//
// One per output stream; not thread-safe. `tokenizer` is not owned and must outlive this.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer* tokenizer, Tokenizer::DecodeOptions options = {});

  // The text that `id` completes; often empty (held-back bytes, special tokens).
  std::string Push(int32_t id);
  // Ends the text: held-back bytes of an incomplete character come out as one U+FFFD. The
  // detokenizer is then back at the start of a new text.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  Tokenizer::DecodeOptions options_;
  int32_t previous_ = -1;
  std::string pending_;  // bytes of a possibly incomplete UTF-8 sequence
};

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_TOKENIZER_H_
