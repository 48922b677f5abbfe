#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <queue>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace anchorserve::model {
namespace {

constexpr absl::string_view kSpaceSymbol = "\xE2\x96\x81";           // U+2581 "▁"
constexpr absl::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Appends the UTF-8 in `in` to `out`, replacing each maximal invalid subpart with U+FFFD (the
// Unicode "best practice" that Python's errors="replace" follows). A trailing sequence that is
// incomplete but could still become valid is left unconsumed unless `final`. Returns the
// number of bytes consumed. Each decision depends only on the bytes up to the end of the
// sequence it concerns, so feeding a string in pieces yields exactly the output of feeding it
// whole: that is what makes StreamingDetokenizer agree with Decode.
size_t AppendValidUtf8(absl::string_view in, bool final, std::string* out) {
  size_t i = 0;
  const size_t n = in.size();
  while (i < n) {
    const auto lead = static_cast<unsigned char>(in[i]);
    if (lead < 0x80) {
      out->push_back(in[i++]);
      continue;
    }
    int trail = 0;
    unsigned char low = 0x80, high = 0xBF;  // allowed range of the first trailing byte
    if (lead >= 0xC2 && lead <= 0xDF) {
      trail = 1;
    } else if (lead == 0xE0) {
      trail = 2, low = 0xA0;  // no overlong forms
    } else if (lead == 0xED) {
      trail = 2, high = 0x9F;  // no surrogates
    } else if (lead >= 0xE1 && lead <= 0xEF) {
      trail = 2;
    } else if (lead == 0xF0) {
      trail = 3, low = 0x90;  // no overlong forms
    } else if (lead >= 0xF1 && lead <= 0xF3) {
      trail = 3;
    } else if (lead == 0xF4) {
      trail = 3, high = 0x8F;  // nothing past U+10FFFF
    } else {
      // 0x80..0xC1 and 0xF5..0xFF never start a character.
      absl::StrAppend(out, kReplacementCharacter);
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool valid = true;
    for (int k = 0; k < trail; ++k, ++j) {
      if (j == n) {
        if (!final) return i;  // may still complete
        absl::StrAppend(out, kReplacementCharacter);
        return n;
      }
      const auto byte = static_cast<unsigned char>(in[j]);
      if (byte < (k == 0 ? low : 0x80) || byte > (k == 0 ? high : 0xBF)) {
        valid = false;
        break;
      }
    }
    if (!valid) {
      absl::StrAppend(out, kReplacementCharacter);
      i = j;  // the offending byte may start the next character
      continue;
    }
    out->append(in.data() + i, j - i);
    i = j;
  }
  return n;
}

// Length of the Python-str.isspace() character that `text` starts with (or ends with when
// `at_end`), 0 when none. Matched on bytes so invalid UTF-8 is harmless.
size_t WhitespaceLength(absl::string_view text, bool at_end) {
  static constexpr absl::string_view kMultiByte[] = {
      "\xC2\x85",      // U+0085 NEXT LINE
      "\xC2\xA0",      // U+00A0 NO-BREAK SPACE
      "\xE1\x9A\x80",  // U+1680
      "\xE2\x80\x80", "\xE2\x80\x81", "\xE2\x80\x82", "\xE2\x80\x83", "\xE2\x80\x84",
      "\xE2\x80\x85", "\xE2\x80\x86", "\xE2\x80\x87", "\xE2\x80\x88", "\xE2\x80\x89",
      "\xE2\x80\x8A",  // U+2000..U+200A
      "\xE2\x80\xA8",  // U+2028 LINE SEPARATOR
      "\xE2\x80\xA9",  // U+2029 PARAGRAPH SEPARATOR
      "\xE2\x80\xAF",  // U+202F
      "\xE2\x81\x9F",  // U+205F
      "\xE3\x80\x80",  // U+3000 IDEOGRAPHIC SPACE
  };
  if (text.empty()) return 0;
  const auto ascii = static_cast<unsigned char>(at_end ? text.back() : text.front());
  if ((ascii >= 0x09 && ascii <= 0x0D) || (ascii >= 0x1C && ascii <= 0x20)) return 1;
  for (absl::string_view ws : kMultiByte) {
    if (at_end ? absl::EndsWith(text, ws) : absl::StartsWith(text, ws)) return ws.size();
  }
  return 0;
}

absl::string_view LStrip(absl::string_view text) {
  while (size_t len = WhitespaceLength(text, /*at_end=*/false)) text.remove_prefix(len);
  return text;
}

absl::string_view RStrip(absl::string_view text) {
  while (size_t len = WhitespaceLength(text, /*at_end=*/true)) text.remove_suffix(len);
  return text;
}

// --- Minimal protobuf wire-format reader -------------------------------------------------
// tokenizer.model is a serialized sentencepiece.ModelProto. We read the few fields we need
// ourselves rather than link libsentencepiece (see the header comment).

class WireReader {
 public:
  explicit WireReader(absl::string_view data) : data_(data) {}
  bool done() const { return data_.empty(); }

  // Reads one field: `payload` holds the bytes of a length-delimited field, `number` the value
  // of a varint or the raw bits of a fixed32/fixed64 field. False on malformed input.
  bool ReadField(uint32_t* field, uint64_t* number, absl::string_view* payload) {
    uint64_t tag;
    if (!ReadVarint(&tag)) return false;
    *field = static_cast<uint32_t>(tag >> 3);
    *number = 0;
    *payload = {};
    switch (tag & 7) {
      case 0:
        return ReadVarint(number);
      case 1:
        return ReadFixed(8, number);
      case 2: {
        uint64_t length;
        if (!ReadVarint(&length) || length > data_.size()) return false;
        *payload = data_.substr(0, length);
        data_.remove_prefix(length);
        return true;
      }
      case 5:
        return ReadFixed(4, number);
      default:
        return false;  // groups (3, 4) are not used by sentencepiece_model.proto
    }
  }

 private:
  bool ReadVarint(uint64_t* value) {
    *value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (data_.empty()) return false;
      const auto byte = static_cast<unsigned char>(data_.front());
      data_.remove_prefix(1);
      *value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }
  bool ReadFixed(size_t size, uint64_t* value) {
    if (size > data_.size()) return false;
    *value = 0;
    for (size_t i = 0; i < size; ++i) {
      *value |= static_cast<uint64_t>(static_cast<unsigned char>(data_[i])) << (8 * i);
    }
    data_.remove_prefix(size);
    return true;
  }
  absl::string_view data_;
};

// Field numbers from sentencepiece_model.proto.
constexpr uint32_t kModelPieces = 1, kModelTrainerSpec = 2, kModelNormalizerSpec = 3,
                   kModelDenormalizerSpec = 5;
constexpr uint32_t kPiecePiece = 1, kPieceScore = 2, kPieceType = 3;
constexpr uint32_t kTrainerModelType = 3, kTrainerTreatWhitespaceAsSuffix = 24,
                   kTrainerByteFallback = 35, kTrainerUnkPiece = 45, kTrainerBosPiece = 46,
                   kTrainerEosPiece = 47, kTrainerPadPiece = 48;
constexpr uint64_t kModelTypeBpe = 2;
constexpr uint32_t kNormalizerName = 1, kNormalizerPrecompiledCharsmap = 2,
                   kNormalizerAddDummyPrefix = 3, kNormalizerRemoveExtraWhitespaces = 4,
                   kNormalizerEscapeWhitespaces = 5, kNormalizerRuleTsv = 6;

// Length of the UTF-8 character at the start of `text` under SentencePiece's strict rules
// (no overlong forms, surrogates or values past U+10FFFF); 0 when invalid.
size_t ValidUtf8CharLength(absl::string_view text) {
  if (text.empty()) return 0;
  const auto lead = static_cast<unsigned char>(text[0]);
  if (lead < 0x80) return 1;
  size_t length;
  uint32_t code_point;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, code_point = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, code_point = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, code_point = lead & 0x07;
  } else {
    return 0;
  }
  if (text.size() < length) return 0;
  for (size_t i = 1; i < length; ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if ((byte & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (byte & 0x3F);
  }
  static constexpr uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
  if (code_point < kMinimum[length] || code_point > 0x10FFFF ||
      (code_point >= 0xD800 && code_point <= 0xDFFF)) {
    return 0;
  }
  return length;
}

// The byte of a byte-fallback piece, which SentencePiece spells "<0xNN>" (upper-case hex);
// -1 for anything else.
int ParseBytePiece(absl::string_view piece) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (piece.size() != 6 || !absl::StartsWith(piece, "<0x") || piece[5] != '>') return -1;
  const int high = nibble(piece[3]), low = nibble(piece[4]);
  return high < 0 || low < 0 ? -1 : high * 16 + low;
}

// --- File helpers ------------------------------------------------------------------------

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return contents.str();
}

absl::StatusOr<nlohmann::json> ReadJsonObject(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON object"));
  }
  return json;
}

}  // namespace

// --- SentencePiece BPE model ---------------------------------------------------------------

// The parts of a SentencePiece BPE model that encoding needs, and a re-implementation of
// sentencepiece::bpe::Model::Encode and the identity normalizer (SentencePiece 0.1.97
// semantics; tokenizer_test compares ids with spm_encode).
class SentencePieceBpeModel {
 public:
  // ModelProto.SentencePiece.Type.
  enum class Type : uint8_t {
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };
  struct Piece {
    std::string text;
    float score = 0;
    Type type = Type::kNormal;
  };

  // Parses and validates a serialized ModelProto; `path` only names the file in errors.
  static absl::StatusOr<std::unique_ptr<SentencePieceBpeModel>> Parse(absl::string_view serialized,
                                                                      const std::string& path);

  const std::vector<Piece>& pieces() const { return pieces_; }
  // Whether decoding drops the leading "▁" of a text (SentencePiece's rule).
  bool strip_dummy_prefix() const { return add_dummy_prefix_ || remove_extra_whitespaces_; }
  // SentencePieceProcessor::bos_id() and friends: the id of the piece named in the trainer
  // spec when it has the expected type, else -1.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }
  int32_t unk_id() const { return unk_id_; }
  // Any piece, by its string; nullopt when none.
  std::optional<int32_t> PieceToId(absl::string_view piece) const {
    const auto it = all_pieces_.find(piece);
    if (it == all_pieces_.end()) return std::nullopt;
    return it->second;
  }

  // SentencePieceProcessor::Encode(text) for one chunk.
  void Encode(absl::string_view text, std::vector<int32_t>* ids) const;

 private:
  SentencePieceBpeModel() = default;

  std::string Normalize(absl::string_view text) const;
  // Length of the longest user-defined symbol `text` starts with; 0 when none.
  size_t UserDefinedPrefix(absl::string_view text) const;
  // SentencePiece's ModelInterface::PieceToId: mergeable pieces, then reserved ones, else unk.
  int32_t LookUp(absl::string_view piece) const;

  std::vector<Piece> pieces_;
  // Normal, user-defined and unused pieces: what a BPE merge may produce.
  absl::flat_hash_map<std::string, int32_t> mergeable_;
  // Control, unknown and byte pieces.
  absl::flat_hash_map<std::string, int32_t> reserved_;
  absl::flat_hash_map<std::string, int32_t> all_pieces_;
  std::vector<std::string> user_defined_;  // longest first
  std::array<int32_t, 256> byte_ids_{};
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true;  // proto2 defaults
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t pad_id_ = -1;
  int32_t unk_id_ = -1;
};

absl::StatusOr<std::unique_ptr<SentencePieceBpeModel>> SentencePieceBpeModel::Parse(
    absl::string_view serialized, const std::string& path) {
  auto model = std::unique_ptr<SentencePieceBpeModel>(new SentencePieceBpeModel);
  auto malformed = [&path] {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a valid SentencePiece model (malformed protobuf)"));
  };
  auto unsupported = [&path](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": unsupported SentencePiece model: ", what,
        " (supported: BPE with the identity normalizer, as Llama-2 and TrainTokenizer use)"));
  };
  uint64_t model_type = 1;  // proto2 default: UNIGRAM
  bool treat_whitespace_as_suffix = false;
  std::string special_pieces[4] = {"<unk>", "<s>", "</s>", "<pad>"};  // proto2 defaults
  std::string normalizer_name;

  WireReader reader(serialized);
  uint32_t field;
  uint64_t number;
  absl::string_view payload;
  while (!reader.done()) {
    if (!reader.ReadField(&field, &number, &payload)) return malformed();
    if (field == kModelPieces) {
      Piece piece;
      WireReader piece_reader(payload);
      while (!piece_reader.done()) {
        if (!piece_reader.ReadField(&field, &number, &payload)) return malformed();
        if (field == kPiecePiece) piece.text = std::string(payload);
        if (field == kPieceScore) {
          const auto bits = static_cast<uint32_t>(number);
          std::memcpy(&piece.score, &bits, sizeof(bits));
        }
        if (field == kPieceType) {
          if (number < 1 || number > 6) return malformed();
          piece.type = static_cast<Type>(number);
        }
      }
      model->pieces_.push_back(std::move(piece));
    } else if (field == kModelTrainerSpec) {
      WireReader spec(payload);
      while (!spec.done()) {
        if (!spec.ReadField(&field, &number, &payload)) return malformed();
        if (field == kTrainerModelType) model_type = number;
        if (field == kTrainerTreatWhitespaceAsSuffix) treat_whitespace_as_suffix = number != 0;
        if (field == kTrainerByteFallback) model->byte_fallback_ = number != 0;
        if (field >= kTrainerUnkPiece && field <= kTrainerPadPiece) {
          special_pieces[field - kTrainerUnkPiece] = std::string(payload);
        }
      }
    } else if (field == kModelNormalizerSpec || field == kModelDenormalizerSpec) {
      const bool normalizer = field == kModelNormalizerSpec;
      WireReader spec(payload);
      while (!spec.done()) {
        if (!spec.ReadField(&field, &number, &payload)) return malformed();
        if ((field == kNormalizerPrecompiledCharsmap || field == kNormalizerRuleTsv) &&
            !payload.empty()) {
          return unsupported(normalizer ? "a normalization rule" : "a denormalization rule");
        }
        if (!normalizer) continue;
        if (field == kNormalizerName) normalizer_name = std::string(payload);
        if (field == kNormalizerAddDummyPrefix) model->add_dummy_prefix_ = number != 0;
        if (field == kNormalizerRemoveExtraWhitespaces) {
          model->remove_extra_whitespaces_ = number != 0;
        }
        if (field == kNormalizerEscapeWhitespaces) model->escape_whitespaces_ = number != 0;
      }
    }
  }

  // The checks of SentencePiece's ModelInterface::InitializePieces, plus ours.
  if (model->pieces_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a valid SentencePiece model (no pieces)"));
  }
  if (model_type != kModelTypeBpe) {
    return unsupported(absl::StrCat("model_type ", model_type, " is not BPE"));
  }
  if (treat_whitespace_as_suffix) return unsupported("treat_whitespace_as_suffix");
  if (model->pieces_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return malformed();
  }
  model->byte_ids_.fill(-1);
  for (size_t i = 0; i < model->pieces_.size(); ++i) {
    const auto id = static_cast<int32_t>(i);
    const Piece& piece = model->pieces_[i];
    if (piece.text.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": piece ", id, " is empty"));
    }
    const bool mergeable = piece.type == Type::kNormal || piece.type == Type::kUserDefined ||
                           piece.type == Type::kUnused;
    if (!(mergeable ? model->mergeable_ : model->reserved_).emplace(piece.text, id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": piece \"", piece.text, "\" is defined twice"));
    }
    model->all_pieces_.emplace(piece.text, id);  // first definition wins, as in SentencePiece
    if (piece.type == Type::kUserDefined) model->user_defined_.push_back(piece.text);
    if (piece.type == Type::kUnknown) {
      if (model->unk_id_ >= 0) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": more than one unknown piece"));
      }
      model->unk_id_ = id;
    }
    if (piece.type == Type::kByte) {
      const int byte = ParseBytePiece(piece.text);
      if (!model->byte_fallback_ || byte < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": unexpected byte piece \"", piece.text, "\""));
      }
      model->byte_ids_[byte] = id;
    }
  }
  if (model->unk_id_ < 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no unknown piece"));
  }
  if (model->byte_fallback_ &&
      std::find(model->byte_ids_.begin(), model->byte_ids_.end(), -1) != model->byte_ids_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": byte_fallback is on but some of the 256 byte pieces are missing"));
  }
  std::stable_sort(model->user_defined_.begin(), model->user_defined_.end(),
                   [](const std::string& a, const std::string& b) { return a.size() > b.size(); });

  auto special_id = [&model](const std::string& text, Type type) -> int32_t {
    const std::optional<int32_t> id = model->PieceToId(text);
    return id.has_value() && model->pieces_[*id].type == type ? *id : -1;
  };
  model->unk_id_ = special_id(special_pieces[0], Type::kUnknown);
  model->bos_id_ = special_id(special_pieces[1], Type::kControl);
  model->eos_id_ = special_id(special_pieces[2], Type::kControl);
  model->pad_id_ = special_id(special_pieces[3], Type::kControl);
  return model;
}

size_t SentencePieceBpeModel::UserDefinedPrefix(absl::string_view text) const {
  for (const std::string& symbol : user_defined_) {
    if (absl::StartsWith(text, symbol)) return symbol.size();
  }
  return 0;
}

int32_t SentencePieceBpeModel::LookUp(absl::string_view piece) const {
  if (const auto it = mergeable_.find(piece); it != mergeable_.end()) return it->second;
  if (const auto it = reserved_.find(piece); it != reserved_.end()) return it->second;
  return unk_id_;
}

// sentencepiece::normalizer::Normalizer::Normalize without a character map: user-defined
// symbols are copied, invalid UTF-8 bytes become U+FFFD one by one, spaces become "▁", and
// the dummy prefix and whitespace clean-up follow the normalizer spec.
std::string SentencePieceBpeModel::Normalize(absl::string_view text) const {
  auto next_unit = [this](absl::string_view rest) -> std::pair<absl::string_view, size_t> {
    if (const size_t length = UserDefinedPrefix(rest)) return {rest.substr(0, length), length};
    if (const size_t length = ValidUtf8CharLength(rest)) return {rest.substr(0, length), length};
    return {kReplacementCharacter, 1};
  };
  if (remove_extra_whitespaces_) {
    while (!text.empty()) {
      const auto [unit, consumed] = next_unit(text);
      if (unit != " ") break;
      text.remove_prefix(consumed);
    }
  }
  std::string normalized;
  if (text.empty()) return normalized;
  const absl::string_view space = escape_whitespaces_ ? kSpaceSymbol : " ";
  if (add_dummy_prefix_) absl::StrAppend(&normalized, space);
  bool previous_is_space = remove_extra_whitespaces_;
  while (!text.empty()) {
    auto [unit, consumed] = next_unit(text);
    while (previous_is_space && absl::ConsumePrefix(&unit, " ")) {
    }
    if (!unit.empty()) {
      for (char c : unit) {
        if (escape_whitespaces_ && c == ' ') {
          absl::StrAppend(&normalized, kSpaceSymbol);
        } else {
          normalized.push_back(c);
        }
      }
      previous_is_space = absl::EndsWith(unit, " ");
    }
    text.remove_prefix(consumed);
    if (!remove_extra_whitespaces_) previous_is_space = false;
  }
  if (remove_extra_whitespaces_) {
    while (absl::EndsWith(normalized, space)) normalized.resize(normalized.size() - space.size());
  }
  return normalized;
}

// sentencepiece::bpe::Model::Encode: start from characters (user-defined symbols whole and
// frozen), repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece
// (leftmost on ties), split unused pieces back into what they were merged from, and spell
// pieces outside the vocabulary as byte pieces (without byte fallback: one <unk> per run, as
// SentencePieceProcessor::PopulateSentencePieceText does).
void SentencePieceBpeModel::Encode(absl::string_view text, std::vector<int32_t>* ids) const {
  const std::string normalized = Normalize(text);
  if (normalized.empty()) return;

  struct Symbol {
    int prev;
    int next;
    bool frozen;
    absl::string_view piece;
  };
  struct Merge {
    int left;
    int right;
    float score;
    size_t size;
  };
  auto lower_priority = [](const Merge& a, const Merge& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Merge, std::vector<Merge>, decltype(lower_priority)> agenda(lower_priority);
  std::vector<Symbol> symbols;
  absl::flat_hash_map<absl::string_view, std::pair<absl::string_view, absl::string_view>>
      unused_merges;

  auto add_candidate = [&](int left, int right) {
    if (left < 0 || right < 0 || symbols[left].frozen || symbols[right].frozen) return;
    const absl::string_view merged(symbols[left].piece.data(),
                                   symbols[left].piece.size() + symbols[right].piece.size());
    const auto it = mergeable_.find(merged);
    if (it == mergeable_.end()) return;
    agenda.push({left, right, pieces_[it->second].score, merged.size()});
    if (pieces_[it->second].type == Type::kUnused) {
      unused_merges[merged] = {symbols[left].piece, symbols[right].piece};
    }
  };

  static constexpr unsigned char kUtf8Length[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  absl::string_view rest = normalized;
  while (!rest.empty()) {
    size_t length = UserDefinedPrefix(rest);
    const bool frozen = length > 0;
    if (!frozen) {
      length = std::min<size_t>(rest.size(), kUtf8Length[static_cast<unsigned char>(rest[0]) >> 4]);
    }
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, -1, frozen, rest.substr(0, length)});
    rest.remove_prefix(length);
  }
  for (size_t i = 1; i < symbols.size(); ++i) {
    symbols[i - 1].next = static_cast<int>(i);
    add_candidate(static_cast<int>(i) - 1, static_cast<int>(i));
  }

  while (!agenda.empty()) {
    const Merge top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    // Stale: one side was merged away or grew since this candidate was queued.
    if (left.piece.empty() || right.piece.empty() ||
        left.piece.size() + right.piece.size() != top.size) {
      continue;
    }
    left.piece = absl::string_view(left.piece.data(), top.size);
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.piece = {};
    add_candidate(left.prev, top.left);
    add_candidate(top.left, left.next);
  }

  bool previous_unknown = false;
  auto emit = [&](auto&& self, absl::string_view piece) -> void {
    const int32_t id = LookUp(piece);
    if (pieces_[id].type == Type::kUnused) {
      if (const auto it = unused_merges.find(piece); it != unused_merges.end()) {
        self(self, it->second.first);
        self(self, it->second.second);
        return;
      }
    }
    const bool unknown = pieces_[id].type == Type::kUnknown;
    if (unknown && byte_fallback_) {
      for (char c : piece) ids->push_back(byte_ids_[static_cast<unsigned char>(c)]);
    } else if (!(unknown && previous_unknown)) {  // a run of unknowns is one <unk>
      ids->push_back(id);
    }
    previous_unknown = unknown;
  };
  for (int index = 0; index >= 0; index = symbols[index].next) emit(emit, symbols[index].piece);
}

// --- Tokenizer ---------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<const SentencePieceBpeModel> model,
                     std::vector<PieceInfo> pieces,
                     std::vector<std::pair<std::string, int32_t>> added_tokens,
                     bool strip_dummy_prefix, int32_t bos_id, int32_t eos_id, int32_t unk_id,
                     int32_t pad_id)
    : model_(std::move(model)),
      pieces_(std::move(pieces)),
      added_tokens_(std::move(added_tokens)),
      strip_dummy_prefix_(strip_dummy_prefix),
      vocab_size_(static_cast<int32_t>(pieces_.size())),
      bos_id_(bos_id),
      eos_id_(eos_id),
      unk_id_(unk_id),
      pad_id_(pad_id) {
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    added_token_ids_.emplace(added_tokens_[i].first, added_tokens_[i].second);
    added_by_length_.push_back(static_cast<int>(i));
    added_first_bytes_.set(static_cast<unsigned char>(added_tokens_[i].first.front()));
  }
  std::stable_sort(added_by_length_.begin(), added_by_length_.end(), [this](int a, int b) {
    return added_tokens_[a].first.size() > added_tokens_[b].first.size();
  });
}

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const std::string added = (dir / "added_tokens.json").string();
  const std::string special = (dir / "special_tokens_map.json").string();
  std::error_code ignored;
  return Create((dir / "tokenizer.model").string(),
                std::filesystem::exists(added, ignored) ? added : "",
                std::filesystem::exists(special, ignored) ? special : "");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromFiles(
    const std::string& sp_model_path, const std::string& added_tokens_json_path) {
  return Create(sp_model_path, added_tokens_json_path, /*special_tokens_map_path=*/"");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(
    const std::string& sp_model_path, const std::string& added_tokens_json_path,
    const std::string& special_tokens_map_path) {
  ASSIGN_OR_RETURN(const std::string serialized, ReadFile(sp_model_path));
  ASSIGN_OR_RETURN(std::unique_ptr<SentencePieceBpeModel> model,
                   SentencePieceBpeModel::Parse(serialized, sp_model_path));
  const auto sp_size = static_cast<int32_t>(model->pieces().size());

  std::vector<PieceInfo> pieces(sp_size);
  for (int32_t id = 0; id < sp_size; ++id) {
    const SentencePieceBpeModel::Piece& piece = model->pieces()[id];
    PieceInfo& info = pieces[id];
    info.text = piece.text;
    switch (piece.type) {
      case SentencePieceBpeModel::Type::kByte:
        info.kind = PieceKind::kByte;
        info.text = std::string(1, static_cast<char>(ParseBytePiece(piece.text)));
        break;
      case SentencePieceBpeModel::Type::kControl:
        info.kind = PieceKind::kControl;
        info.special = true;
        break;
      case SentencePieceBpeModel::Type::kUnknown:
        info.kind = PieceKind::kUnknown;
        info.special = true;
        break;
      case SentencePieceBpeModel::Type::kUserDefined:
        info.kind = PieceKind::kAdded;
        break;
      case SentencePieceBpeModel::Type::kNormal:
      case SentencePieceBpeModel::Type::kUnused:  // SentencePiece renders these as text too
        info.kind = PieceKind::kText;
        info.leading_space = absl::StartsWith(piece.text, kSpaceSymbol);
        info.text = absl::StrReplaceAll(piece.text, {{kSpaceSymbol, " "}});
        break;
    }
  }

  // Split tokens: added_tokens.json entries, then the user-defined pieces they do not shadow.
  std::vector<std::pair<std::string, int32_t>> split_tokens;
  std::set<std::string> added_strings;
  if (!added_tokens_json_path.empty()) {
    ASSIGN_OR_RETURN(const nlohmann::json json, ReadJsonObject(added_tokens_json_path));
    std::vector<std::pair<int32_t, std::string>> entries;
    for (const auto& [token, value] : json.items()) {
      if (token.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(added_tokens_json_path, ": empty added token"));
      }
      if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
          value.get<int64_t>() >= std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(added_tokens_json_path, ": id of \"", token,
                                                       "\" must be a non-negative integer"));
      }
      entries.emplace_back(static_cast<int32_t>(value.get<int64_t>()), token);
    }
    std::sort(entries.begin(), entries.end());
    int32_t next_id = sp_size;
    for (size_t i = 0; i < entries.size(); ++i) {
      const auto& [id, token] = entries[i];
      if (i > 0 && entries[i - 1].first == id) {
        return absl::InvalidArgumentError(absl::StrCat(added_tokens_json_path, ": \"",
                                                       entries[i - 1].second, "\" and \"", token,
                                                       "\" share id ", id));
      }
      if (id < sp_size) {
        if (model->pieces()[id].text != token) {
          return absl::InvalidArgumentError(absl::StrCat(
              added_tokens_json_path, ": \"", token, "\" has id ", id,
              ", which belongs to SentencePiece piece \"", model->pieces()[id].text, "\""));
        }
        // A redundant alias of a piece. Control, unknown and byte pieces stay what they are
        // (never split out of user text); a text piece becomes an added token.
        if (pieces[id].kind != PieceKind::kText && pieces[id].kind != PieceKind::kAdded) continue;
        pieces[id].kind = PieceKind::kAdded;
        pieces[id].leading_space = false;
        pieces[id].text = token;
      } else {
        // HF's slow tokenizer rejects gaps too, and a gap would leave ids with no text.
        if (id != next_id) {
          return absl::InvalidArgumentError(absl::StrCat(
              added_tokens_json_path, ": \"", token, "\" has id ", id, " but ids past the ",
              sp_size, " SentencePiece pieces must be consecutive; expected ", next_id));
        }
        ++next_id;
        PieceInfo info;
        info.kind = PieceKind::kAdded;
        info.text = token;
        pieces.push_back(std::move(info));
      }
      split_tokens.emplace_back(token, id);
      added_strings.insert(token);
    }
  }
  for (int32_t id = 0; id < sp_size; ++id) {
    const SentencePieceBpeModel::Piece& piece = model->pieces()[id];
    if (piece.type == SentencePieceBpeModel::Type::kUserDefined &&
        !added_strings.count(piece.text)) {
      split_tokens.emplace_back(piece.text, id);
    }
  }
  std::sort(split_tokens.begin(), split_tokens.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });

  int32_t pad_id = model->pad_id();
  // The released AnLLM models add "[PAD]" (docs/anllm-reference.md §1); their config's
  // pad_token_id 0 is stale, so the added token is the pad.
  for (const auto& [token, id] : split_tokens) {
    if (token == "[PAD]" && added_strings.count(token)) pad_id = id;
  }
  const bool strip_dummy_prefix = model->strip_dummy_prefix();
  const int32_t bos_id = model->bos_id(), eos_id = model->eos_id(), unk_id = model->unk_id();
  auto tokenizer = std::unique_ptr<Tokenizer>(
      new Tokenizer(std::move(model), std::move(pieces), std::move(split_tokens),
                    strip_dummy_prefix, bos_id, eos_id, unk_id, pad_id));

  if (!special_tokens_map_path.empty()) {
    ASSIGN_OR_RETURN(const nlohmann::json json, ReadJsonObject(special_tokens_map_path));
    const std::pair<const char*, int32_t*> kRoles[] = {{"bos_token", &tokenizer->bos_id_},
                                                       {"eos_token", &tokenizer->eos_id_},
                                                       {"unk_token", &tokenizer->unk_id_},
                                                       {"pad_token", &tokenizer->pad_id_}};
    for (const auto& [role, id] : kRoles) {
      if (!json.contains(role)) continue;
      const nlohmann::json& value = json.at(role);
      const nlohmann::json* content = &value;
      if (value.is_object() && value.contains("content")) content = &value.at("content");
      if (!content->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            special_tokens_map_path, ": ", role, " must be a string or {\"content\": string}"));
      }
      const std::string token = content->get<std::string>();
      const std::optional<int32_t> resolved = tokenizer->TokenToId(token);
      if (!resolved.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(special_tokens_map_path, ": ", role, " \"",
                                                       token, "\" is not in the vocabulary"));
      }
      *id = *resolved;
    }
  }
  for (int32_t id :
       {tokenizer->bos_id_, tokenizer->eos_id_, tokenizer->unk_id_, tokenizer->pad_id_}) {
    if (id >= 0) tokenizer->pieces_[id].special = true;
  }
  return tokenizer;
}

int Tokenizer::LongestAddedTokenAt(absl::string_view text, size_t pos) const {
  if (!added_first_bytes_.test(static_cast<unsigned char>(text[pos]))) return -1;
  const absl::string_view rest = text.substr(pos);
  for (int index : added_by_length_) {
    if (absl::StartsWith(rest, added_tokens_[index].first)) return index;
  }
  return -1;
}

void Tokenizer::EncodeChunk(absl::string_view chunk, std::vector<int32_t>* ids) const {
  if (!chunk.empty()) model_->Encode(chunk, ids);
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  size_t chunk_begin = 0;
  bool after_added = false;
  size_t pos = 0;
  while (pos < text.size()) {
    const int match = LongestAddedTokenAt(text, pos);
    if (match < 0) {
      ++pos;
      continue;
    }
    const absl::string_view chunk = RStrip(text.substr(chunk_begin, pos - chunk_begin));
    EncodeChunk(after_added ? LStrip(chunk) : chunk, &ids);
    ids.push_back(added_tokens_[match].second);
    pos += added_tokens_[match].first.size();
    chunk_begin = pos;
    after_added = true;
  }
  const absl::string_view tail = text.substr(chunk_begin);
  EncodeChunk(after_added ? LStrip(tail) : tail, &ids);
  return ids;
}

bool Tokenizer::StartsChunk(int32_t previous) const {
  if (previous < 0 || previous >= vocab_size_) return true;
  const PieceKind kind = pieces_[previous].kind;
  return kind == PieceKind::kAdded || kind == PieceKind::kControl;
}

std::string Tokenizer::TokenBytes(int32_t id, int32_t previous,
                                  const DecodeOptions& options) const {
  if (id < 0 || id >= vocab_size_) return "";
  const PieceInfo& info = pieces_[id];
  if (info.special) return options.skip_special ? "" : info.text;
  switch (info.kind) {
    case PieceKind::kAdded:
      return options.render_added_tokens ? info.text : "";
    case PieceKind::kText:
      if (info.leading_space && strip_dummy_prefix_ && StartsChunk(previous)) {
        return info.text.substr(1);
      }
      return info.text;
    default:
      return info.text;
  }
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, const DecodeOptions& options) const {
  std::string bytes;
  int32_t previous = -1;
  for (int32_t id : ids) {
    bytes += TokenBytes(id, previous, options);
    previous = id;
  }
  std::string text;
  text.reserve(bytes.size());
  AppendValidUtf8(bytes, /*final=*/true, &text);
  return text;
}

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  if (const auto it = added_token_ids_.find(token); it != added_token_ids_.end()) {
    return it->second;
  }
  return model_->PieceToId(token);
}

std::string Tokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size_) return "";
  const auto sp_size = static_cast<int32_t>(model_->pieces().size());
  return id < sp_size ? model_->pieces()[id].text : pieces_[id].text;
}

bool Tokenizer::IsAddedToken(int32_t id) const {
  return id >= 0 && id < vocab_size_ && pieces_[id].kind == PieceKind::kAdded;
}

// --- StreamingDetokenizer ----------------------------------------------------------------

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer* tokenizer,
                                           Tokenizer::DecodeOptions options)
    : tokenizer_(tokenizer), options_(options) {}

std::string StreamingDetokenizer::Push(int32_t id) {
  pending_ += tokenizer_->TokenBytes(id, previous_, options_);
  previous_ = id;
  std::string text;
  pending_.erase(0, AppendValidUtf8(pending_, /*final=*/false, &text));
  return text;
}

std::string StreamingDetokenizer::Flush() {
  std::string text;
  AppendValidUtf8(pending_, /*final=*/true, &text);
  pending_.clear();
  previous_ = -1;
  return text;
}

}  // namespace anchorserve::model
