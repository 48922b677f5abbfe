// Hugging Face safetensors: validated, memory-mapped reading and atomic writing.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON
// ({"__metadata__": {str: str}, "<tensor>": {"dtype", "shape", "data_offsets"}, ...}), then the
// data section; data_offsets are [begin, end) byte offsets into the data section.
//
// These files come from users, so every reader here validates the whole header before handing
// out a single pointer: a file that opens successfully can be read through any TensorView it
// returns without going out of bounds. Torch-free on purpose: loaders turn TensorViews into
// tensors themselves.
#ifndef ANCHORSERVE_MODEL_SAFETENSORS_H_
#define ANCHORSERVE_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace anchorserve::model {

// The element types we accept. Other safetensors dtypes (F8_*, U16, U32, U64, ...) are rejected
// as InvalidArgument when a file is opened.
enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element (kBool: 1).
size_t DTypeSize(DType dtype);
// The safetensors spelling: "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL".
absl::string_view DTypeName(DType dtype);
// Inverse of DTypeName; InvalidArgument for anything else (case-sensitive, as in the format).
absl::StatusOr<DType> DTypeFromName(absl::string_view name);

// A non-owning view of one tensor inside a mapped file. `data` stays valid as long as the
// SafetensorsFile (or Checkpoint) that returned it is alive. `data` is NOT necessarily aligned
// to the element size (safetensors only aligns the start of the data section to 8 bytes):
// copy with memcpy rather than casting to `const float*`. Elements are little-endian.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // empty for a scalar
  const uint8_t* data = nullptr;
  size_t nbytes = 0;  // == numel() * DTypeSize(dtype), checked at open time

  // Product of `shape` (1 for a scalar). Cannot overflow for views handed out by this module.
  int64_t numel() const;
};

// Where one tensor lies in a safetensors file.
struct SafetensorsEntry {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // empty for a scalar
  size_t begin = 0;            // offset into the data section
  size_t nbytes = 0;           // numel * DTypeSize(dtype)
};

// The validated header of a safetensors file.
struct SafetensorsLayout {
  size_t data_start = 0;  // 8 + header length: where the data section begins
  std::map<std::string, SafetensorsEntry, std::less<>> entries;
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

// Validates `file`, the bytes of a whole safetensors file, exactly as SafetensorsFile::Open
// does (its DataLoss and InvalidArgument cases, messages naming `path`) and returns where each
// tensor lies: data_start + begin + nbytes <= file.size() for every entry, and no two
// non-empty tensors overlap. Pure: Open maps the file and calls this; the fuzzer
// (fuzz/safetensors_fuzzer.cc) calls it on arbitrary bytes.
absl::StatusOr<SafetensorsLayout> ParseSafetensorsLayout(absl::string_view file,
                                                         absl::string_view path);

// One safetensors file, memory-mapped read-only for the lifetime of the object.
//
// Thread-safety: immutable after Open; all const methods may be called concurrently.
// Caveat: like any mmap reader, if another process truncates the file while it is mapped,
// touching the missing pages raises SIGBUS; we cannot guard against that.
class SafetensorsFile {
 public:
  // Maps `path` and validates the header completely: length prefix, JSON shape, dtypes, shapes,
  // offsets inside the data section, no overlapping tensors, byte length == numel * dtype size.
  // Gaps between tensors and trailing bytes after the last tensor are tolerated (they are never
  // read). Errors (every message names `path`, and the tensor where one is at fault):
  //   NotFound / PermissionDenied / ... : the file cannot be opened (from errno);
  //   FailedPrecondition : `path` is not a regular file;
  //   DataLoss : file too short for its length prefix or header, a tensor ending beyond the data
  //              section (a truncated download, typically);
  //   InvalidArgument : anything malformed in the header itself.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // All tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  bool Contains(absl::string_view name) const;
  // NotFound naming the tensor and the file when absent.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  // The "__metadata__" map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile(std::string path, void* mapping, size_t mapping_size, SafetensorsLayout layout);

  const std::string path_;
  void* const mapping_;  // the whole file, PROT_READ; never null (files are >= 8 bytes)
  const size_t mapping_size_;
  const size_t data_start_;  // 8 + header length
  const std::map<std::string, SafetensorsEntry, std::less<>> entries_;
  const std::map<std::string, std::string> metadata_;
};

// The weights of a Hugging Face model directory: `model.safetensors`, or (when that is absent)
// `model.safetensors.index.json` plus the shards its weight_map names. The single file wins
// when both exist, as in transformers.
//
// Thread-safety: immutable after Open; const methods may be called concurrently.
class Checkpoint {
 public:
  // Opens and validates every file (see SafetensorsFile::Open) and, for an index, checks that
  // each tensor of weight_map is present in the shard it names. Tensors present in a shard but
  // absent from weight_map are ignored (as transformers does). Errors:
  //   NotFound : neither weights file exists (names the directory), a shard named by the index
  //              does not exist (names the shard), or a listed tensor is missing from its shard
  //              (names tensor and shard);
  //   InvalidArgument : index not JSON, no "weight_map" object, non-string entries, or a shard
  //              name that escapes the directory (absolute or containing "..");
  //   anything SafetensorsFile::Open returns for a shard.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  const std::string& model_dir() const { return model_dir_; }
  // Sorted names of all tensors of the checkpoint.
  std::vector<std::string> TensorNames() const;
  bool Contains(absl::string_view name) const;
  // NotFound naming the tensor and the directory when absent. The view lives as long as this.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;

 private:
  Checkpoint(std::string model_dir, std::vector<std::unique_ptr<SafetensorsFile>> files,
             std::map<std::string, const SafetensorsFile*, std::less<>> tensor_to_file);

  const std::string model_dir_;
  const std::vector<std::unique_ptr<SafetensorsFile>> files_;
  const std::map<std::string, const SafetensorsFile*, std::less<>> tensor_to_file_;
};

// An owning tensor, for writers. `bytes` holds numel * DTypeSize(dtype) little-endian bytes.
struct TensorData {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Writes one safetensors file the way the reference implementation does: compact JSON header,
// "__metadata__" first (omitted when `metadata` is empty), tensors in sorted name order with
// contiguous data offsets, header padded with spaces to a multiple of 8 bytes.
// The file is written to a temporary next to `path`, fsync'ed and renamed over `path`, so a
// failure never leaves a partial file at `path`.
// Errors: InvalidArgument for a null tensor, an empty, duplicate or "__metadata__" name, a
// negative dim, or `bytes.size()` != numel * dtype size (names the tensor); I/O errors from
// errno (ResourceExhausted for ENOSPC, ...) naming the path. The caller keeps ownership of
// `tensors`.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<const TensorData*>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes a model directory the way transformers' save_pretrained does: `model.safetensors` when
// the tensors' bytes total at most `max_shard_bytes`, else `model-00001-of-0000N.safetensors`...
// plus `model.safetensors.index.json` ({"metadata": {"total_parameters": <sum of numel>,
// "total_size": <sum of tensor bytes>}, "weight_map": {tensor: shard}}, indent 2, sorted keys,
// trailing newline; byte-identical to what transformers 5.17 writes).
// Sharding follows huggingface_hub's greedy split over `tensors` in the order given (pass them
// in module order to keep a layer together): a tensor never straddles shards, a tensor larger
// than `max_shard_bytes` gets a shard of its own. Each shard carries `metadata` plus
// {"format": "pt"} unless `metadata` has a "format" key (transformers refuses to load files
// whose metadata lacks it).
// Creates `dir` if needed. Shards are written before the index; afterwards weight files of a
// previous save in `dir` that this one does not use (model.safetensors, the index,
// model-NNNNN-of-NNNNN.safetensors) are removed so the directory loads as exactly this
// checkpoint. Not atomic across files: on error `dir` may hold a mix of old and new shards.
// No tensors: an empty model.safetensors. Errors: as WriteSafetensors, plus InvalidArgument for
// max_shard_bytes == 0, and errno statuses for creating/listing/cleaning `dir`.
absl::Status WriteShardedSafetensors(const std::string& dir,
                                     const std::vector<const TensorData*>& tensors,
                                     size_t max_shard_bytes,
                                     const std::map<std::string, std::string>& metadata = {});

// Bit conversions for loaders and writers. Narrowing rounds to nearest, ties to even; values
// beyond the target range become +-inf; NaN stays NaN (quieted, sign kept); f16 subnormals are
// produced and read exactly. Independent of the floating-point environment.
uint16_t FloatToBFloat16(float value);
float BFloat16ToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);

}  // namespace anchorserve::model

#endif  // ANCHORSERVE_MODEL_SAFETENSORS_H_
