#include "model/sentencepiece_model.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace anchorserve::model {
namespace {

constexpr char kSpace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace symbol

// A minimal protobuf wire-format reader: enough for sentencepiece_model.proto.
class WireReader {
 public:
  explicit WireReader(absl::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }
  bool ok() const { return ok_; }

  // Reads the next field key; false at the end or on malformed input.
  bool Next(uint32_t* field, uint32_t* wire_type) {
    if (done()) return false;
    uint64_t key;
    if (!Varint(&key)) return false;
    *field = static_cast<uint32_t>(key >> 3);
    *wire_type = static_cast<uint32_t>(key & 7);
    return true;
  }
  bool Varint(uint64_t* out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return Fail();
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) {
        *out = v;
        return true;
      }
    }
    return Fail();
  }
  bool Bytes(absl::string_view* out) {
    uint64_t n;
    if (!Varint(&n) || n > data_.size() - pos_) return Fail();
    *out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool Fixed32(uint32_t* out) {
    if (data_.size() - pos_ < 4) return Fail();
    std::memcpy(out, data_.data() + pos_, 4);  // little-endian hosts only (x86-64, arm64)
    pos_ += 4;
    return true;
  }
  bool Skip(uint32_t wire_type) {
    uint64_t v;
    uint32_t f;
    absl::string_view s;
    switch (wire_type) {
      case 0: return Varint(&v);
      case 1:
        if (data_.size() - pos_ < 8) return Fail();
        pos_ += 8;
        return true;
      case 2: return Bytes(&s);
      case 5: return Fixed32(&f);
      default: return Fail();
    }
  }

 private:
  bool Fail() {
    ok_ = false;
    return false;
  }
  absl::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

size_t Utf8Length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;  // stray continuation or invalid lead byte: one byte on its own
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Load(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read tokenizer model ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return Parse(buffer.str(), path);
}

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Parse(
    absl::string_view bytes, absl::string_view source) {
  auto model = std::unique_ptr<SentencePieceModel>(new SentencePieceModel());
  auto corrupt = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat(source, ": not a SentencePiece model (", what, ")"));
  };
  WireReader top(bytes);
  uint32_t field, wire;
  while (top.Next(&field, &wire)) {
    absl::string_view sub;
    if (wire != 2) {
      if (!top.Skip(wire)) return corrupt("bad field");
      continue;
    }
    if (!top.Bytes(&sub)) return corrupt("truncated field");
    WireReader r(sub);
    uint32_t f, w;
    uint64_t v;
    absl::string_view s;
    if (field == 1) {  // SentencePiece
      Piece piece;
      while (r.Next(&f, &w)) {
        if (f == 1 && w == 2 && r.Bytes(&s)) {
          piece.piece = std::string(s);
        } else if (f == 2 && w == 5) {
          uint32_t bits;
          if (!r.Fixed32(&bits)) break;
          std::memcpy(&piece.score, &bits, 4);
        } else if (f == 3 && w == 0 && r.Varint(&v)) {
          if (v < 1 || v > 6) return corrupt("unknown piece type");
          piece.type = static_cast<PieceType>(v);
        } else if (!r.Skip(w)) {
          break;
        }
      }
      if (!r.ok()) return corrupt("bad piece");
      model->pieces_.push_back(std::move(piece));
    } else if (field == 2) {  // TrainerSpec
      while (r.Next(&f, &w)) {
        if (w == 0 && (f == 3 || f == 35 || (f >= 40 && f <= 43)) && r.Varint(&v)) {
          const int32_t i = static_cast<int32_t>(static_cast<int64_t>(v));
          if (f == 3) model->model_type_ = i;
          if (f == 35) model->byte_fallback_ = v != 0;
          if (f == 40) model->unk_id_ = i;
          if (f == 41) model->bos_id_ = i;
          if (f == 42) model->eos_id_ = i;
          if (f == 43) model->pad_id_ = i;
        } else if (!r.Skip(w)) {
          break;
        }
      }
      if (!r.ok()) return corrupt("bad trainer spec");
    } else if (field == 3) {  // NormalizerSpec
      while (r.Next(&f, &w)) {
        if (f == 1 && w == 2 && r.Bytes(&s)) {
          model->normalizer_name_ = std::string(s);
        } else if (f == 2 && w == 2 && r.Bytes(&s)) {
          model->has_charsmap_ = !s.empty();
        } else if (f >= 3 && f <= 5 && w == 0 && r.Varint(&v)) {
          if (f == 3) model->add_dummy_prefix_ = v != 0;
          if (f == 4) model->remove_extra_whitespaces_ = v != 0;
          if (f == 5) model->escape_whitespaces_ = v != 0;
        } else if (!r.Skip(w)) {
          break;
        }
      }
      if (!r.ok()) return corrupt("bad normalizer spec");
    }
  }
  if (!top.ok()) return corrupt("truncated");
  RETURN_IF_ERROR(model->Index(source));
  return model;
}

absl::Status SentencePieceModel::Index(absl::string_view source) {
  if (pieces_.empty()) {
    return absl::DataLossError(absl::StrCat(source, ": not a SentencePiece model (no pieces)"));
  }
  if (model_type_ != 2) {
    return absl::UnimplementedError(absl::StrCat(
        source, ": only BPE SentencePiece models are supported (model_type ", model_type_, ")"));
  }
  if (has_charsmap_ && normalizer_name_ != "identity") {
    return absl::UnimplementedError(absl::StrCat(source, ": normaliser \"", normalizer_name_,
                                                 "\" is not supported; use identity"));
  }
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  for (int32_t id = 0; id < size(); ++id) {
    const Piece& p = pieces_[id];
    if (!all_.emplace(p.piece, id).second) {
      return absl::DataLossError(absl::StrCat(source, ": duplicate piece \"", p.piece, "\""));
    }
    if (p.type == PieceType::kNormal || p.type == PieceType::kUserDefined ||
        p.type == PieceType::kUnused) {
      mergeable_.emplace(p.piece, id);
    }
    if (p.type == PieceType::kUserDefined) user_defined_.push_back(p.piece);
    if (p.type == PieceType::kByte) {
      const int b = ByteValue(id);
      if (b >= 0) byte_ids_[b] = id;
    }
  }
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  auto valid = [&](int32_t id) { return id >= 0 && id < size(); };
  if (!valid(unk_id_)) {
    return absl::DataLossError(absl::StrCat(source, ": unk id ", unk_id_, " out of range"));
  }
  if (!valid(bos_id_)) bos_id_ = -1;
  if (!valid(eos_id_)) eos_id_ = -1;
  if (!valid(pad_id_)) pad_id_ = -1;
  return absl::OkStatus();
}

std::optional<int32_t> SentencePieceModel::FindPiece(absl::string_view piece) const {
  auto it = all_.find(piece);
  if (it == all_.end()) return std::nullopt;
  return it->second;
}

int SentencePieceModel::ByteValue(int32_t id) const {
  if (id < 0 || id >= size() || pieces_[id].type != PieceType::kByte) return -1;
  const std::string& p = pieces_[id].piece;  // "<0xNN>"
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  return static_cast<int>(std::strtol(p.substr(3, 2).c_str(), nullptr, 16));
}

std::vector<int32_t> SentencePieceModel::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  // Normalise (identity): optional extra-whitespace removal, dummy prefix, spaces -> U+2581.
  std::string input(text);
  if (remove_extra_whitespaces_) {
    std::string collapsed;
    bool space = true;  // drops leading spaces
    for (char c : input) {
      if (c == ' ') {
        if (!space) collapsed += ' ';
        space = true;
      } else {
        collapsed += c;
        space = false;
      }
    }
    while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    input = std::move(collapsed);
  }
  if (input.empty()) return ids;
  std::string normalized;
  if (add_dummy_prefix_) normalized = escape_whitespaces_ ? kSpace : " ";
  for (char c : input) {
    if (c == ' ' && escape_whitespaces_) {
      normalized += kSpace;
    } else {
      normalized += c;
    }
  }

  // Initial symbols: user-defined symbols whole (longest match), else one UTF-8 character.
  struct Symbol {
    int prev, next;
    size_t begin, length;
  };
  std::vector<Symbol> symbols;
  const absl::string_view norm(normalized);
  for (size_t pos = 0; pos < norm.size();) {
    size_t len = 0;
    for (const std::string& u : user_defined_) {
      if (norm.substr(pos, u.size()) == u) {
        len = u.size();
        break;
      }
    }
    if (len == 0) len = std::min(Utf8Length(static_cast<unsigned char>(norm[pos])), norm.size() - pos);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, index + 1, pos, len});
    pos += len;
  }
  if (symbols.empty()) return ids;
  symbols.back().next = -1;

  struct Pair {
    int left, right;
    float score;
    size_t length;  // merged byte length, to detect stale entries
  };
  auto worse = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
  auto maybe_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const absl::string_view merged =
        norm.substr(symbols[left].begin, symbols[left].length + symbols[right].length);
    auto it = mergeable_.find(merged);
    if (it == mergeable_.end()) return;
    // User-defined symbols are atomic: never merged with neighbours.
    agenda.push({left, right, pieces_[it->second].score, merged.size()});
  };
  for (size_t i = 1; i < symbols.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    if (left.length == 0 || left.next != top.right) continue;
    Symbol& right = symbols[top.right];
    if (right.length == 0 || left.length + right.length != top.length) continue;
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    maybe_add(left.prev, top.left);
    maybe_add(top.left, left.next);
  }

  for (int i = 0; i >= 0; i = symbols[i].next) {
    const absl::string_view piece = norm.substr(symbols[i].begin, symbols[i].length);
    auto it = mergeable_.find(piece);
    if (it != mergeable_.end() && pieces_[it->second].type != PieceType::kUnused) {
      ids.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      for (unsigned char b : piece) ids.push_back(byte_ids_[b] >= 0 ? byte_ids_[b] : unk_id_);
    } else {
      ids.push_back(unk_id_);
    }
  }
  return ids;
}

}  // namespace anchorserve::model
