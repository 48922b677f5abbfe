// Reads SentencePiece `tokenizer.model` files and encodes text with their BPE model, without
// libsentencepiece: Debian's libsentencepiece carries its own protobuf 3.14 runtime, which
// cannot share a process with the protobuf 3.21 that libtorch and gRPC load (see
// docs/TOKENIZER.md). Supports what Llama and our trainer produce: BPE, identity
// normalisation, dummy prefix, byte fallback, user-defined symbols.
#ifndef ANCHORSERVE_MODEL_SENTENCEPIECE_MODEL_H_
#define ANCHORSERVE_MODEL_SENTENCEPIECE_MODEL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace anchorserve::model {

class SentencePieceModel {
 public:
  // Values as in sentencepiece_model.proto.
  enum class PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5,
                         kByte = 6 };

  // Errors: NotFound (unreadable file), DataLoss (not a model proto), Unimplemented (a
  // unigram/word/char model, or a normaliser other than identity), each naming `source`.
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> Load(const std::string& path);
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> Parse(absl::string_view bytes,
                                                                   absl::string_view source);

  // Text -> ids exactly as SentencePieceProcessor::Encode does for a BPE model (no BOS/EOS):
  // dummy prefix, spaces as U+2581, user-defined symbols kept whole, highest-score merge
  // first (ties leftmost), unknown symbols as <0xNN> byte pieces (or unk without fallback).
  std::vector<int32_t> Encode(absl::string_view text) const;

  int32_t size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& IdToPiece(int32_t id) const { return pieces_[id].piece; }
  PieceType type(int32_t id) const { return pieces_[id].type; }
  float score(int32_t id) const { return pieces_[id].score; }
  // Any piece (normal, user-defined, control, byte, ...); nullopt when the model lacks it.
  std::optional<int32_t> FindPiece(absl::string_view piece) const;
  // The id of <0xNN> for byte `b`; -1 without byte fallback.
  int32_t ByteId(uint8_t b) const { return byte_ids_[b]; }
  // The byte a <0xNN> piece stands for; -1 for other pieces.
  int ByteValue(int32_t id) const;

  int32_t unk_id() const { return unk_id_; }
  int32_t bos_id() const { return bos_id_; }  // -1 when the model has none
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }
  bool add_dummy_prefix() const { return add_dummy_prefix_; }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  struct Piece {
    std::string piece;
    float score = 0;
    PieceType type = PieceType::kNormal;
  };

  SentencePieceModel() = default;
  absl::Status Index(absl::string_view source);

  std::vector<Piece> pieces_;
  absl::flat_hash_map<std::string, int32_t> mergeable_;  // normal, user-defined, unused
  absl::flat_hash_map<std::string, int32_t> all_;
  std::vector<std::string> user_defined_;                // longest first
  int32_t byte_ids_[256];
  int32_t unk_id_ = 0, bos_id_ = 1, eos_id_ = 2, pad_id_ = -1;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  bool byte_fallback_ = false;
  int model_type_ = 1;
  std::string normalizer_name_;
  bool has_charsmap_ = false;
};

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_SENTENCEPIECE_MODEL_H_
