// Trains SentencePiece BPE tokenizers with the AnchorServe id layout, so tests and small
// experiments need no committed model binaries. Torch-free.
#ifndef ANCHORSERVE_MODEL_TOKENIZER_TRAINER_H_
#define ANCHORSERVE_MODEL_TOKENIZER_TRAINER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace anchorserve::model {

struct TokenizerTrainOptions {
  // UTF-8 text, one sentence/paragraph per line; SentencePiece skips lines longer than 4192
  // bytes. Paths must not contain ',' (spm_train's list separator).
  std::vector<std::string> input_files;
  // Receives <output_dir>/tokenizer.model; created when missing.
  std::string output_dir;
  // Total pieces, the 5 fixed ids and 256 byte pieces included.
  int vocab_size = 8000;
  // Lines sampled from the input when there are more (fixed seed, so still deterministic).
  int64_t input_sentence_size = 2000000;
  // Share of characters that get their own piece; the rest fall back to byte pieces.
  double character_coverage = 0.9995;
  // 1 keeps training deterministic.
  int num_threads = 1;
  // SentencePiece's trainer, run as a child process (PATH is searched). In-process training is
  // impossible: libsentencepiece_train drags in libsentencepiece, whose bundled protobuf
  // crashes next to libtorch's libprotobuf (docs/TOKENIZER.md). Debian package `sentencepiece`.
  std::string spm_train_path = "spm_train";
};

// The ids every model from TrainTokenizer has (UNK 0, BOS 1, EOS 2 as in Llama).
inline constexpr int32_t kTrainedUnkId = 0;
inline constexpr int32_t kTrainedBosId = 1;
inline constexpr int32_t kTrainedEosId = 2;
inline constexpr int32_t kTrainedPadId = 3;        // "[PAD]", a SentencePiece control piece
inline constexpr int32_t kTrainedAnchorId = 4;     // "<AC>", a user-defined symbol
inline constexpr int32_t kTrainedFirstByteId = 5;  // <0x00>; <0xFF> is 260, merges follow

// Trains a SentencePiece BPE model laid out as 0 <unk>, 1 <s>, 2 </s>, 3 [PAD], 4 <AC>,
// 5..260 the byte-fallback pieces <0x00>..<0xFF>, then characters and merges, and writes it to
// <output_dir>/tokenizer.model (renamed into place, so readers never see half a file).
// Normalisation is Llama-2's: identity (no NFKC, so Decode(Encode(s)) == s), add_dummy_prefix
// on, remove_extra_whitespaces off, whitespace-only pieces allowed, digits split, byte
// fallback on. The same input files and options give byte-identical models (the model records
// the absolute input paths, as SentencePiece models do).
//
// Blocks until the child exits. Errors: InvalidArgument for bad options or when SentencePiece
// rejects them for this text (e.g. a vocab_size the text cannot fill; its log tail is in the
// message), NotFound when an input file cannot be read, FailedPrecondition when spm_train
// cannot be started, Internal when the output cannot be written. Messages name the file.
absl::Status TrainTokenizer(const TokenizerTrainOptions& options);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_TOKENIZER_TRAINER_H_
