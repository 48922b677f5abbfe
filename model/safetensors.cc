#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/scoped_fd.h"
#include "common/status_macros.h"

namespace anchorserve::model {
namespace {

// Tensor bytes are handed out as stored (little-endian); a big-endian host would need swaps.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

using Json = nlohmann::json;

// The reference implementation's limit: no real header comes near it, and it bounds what a
// hostile length prefix can make us parse.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kLengthPrefixBytes = 8;
constexpr absl::string_view kMetadataKey = "__metadata__";
constexpr absl::string_view kSingleFileName = "model.safetensors";
constexpr absl::string_view kIndexFileName = "model.safetensors.index.json";

// A header is {name: {"shape": [...]}} at most; anything deeper is hostile, and refusing it
// before parsing keeps a 100 MB "[[[[..." from costing gigabytes of JSON nodes.
constexpr int kMaxHeaderNesting = 3;

// Deepest nesting of objects/arrays in `text`, ignoring brackets inside strings.
int NestingDepth(absl::string_view text) {
  int depth = 0;
  int max_depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable for valid enum values
}

// Prefixes a status message with context while keeping its code.
absl::Status Annotate(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

// Product of dims times element size; false on a negative dim or on overflow.
bool CheckedByteCount(const std::vector<int64_t>& shape, size_t element_size, uint64_t* bytes) {
  uint64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return false;
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(dim), &count)) return false;
  }
  if (__builtin_mul_overflow(count, static_cast<uint64_t>(element_size), &count)) return false;
  *bytes = count;
  return true;
}

// Reads a JSON integer that must be >= 0 and fit in int64 (so it also fits in size_t here).
absl::StatusOr<uint64_t> NonNegativeInt(const Json& value, absl::string_view what) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(what, " ", v, " is too large"));
    }
    return v;
  }
  if (value.is_number_integer()) {  // signed, so negative (non-negatives parse as unsigned)
    const int64_t v = value.get<int64_t>();
    if (v < 0) return absl::InvalidArgumentError(absl::StrCat(what, " ", v, " is negative"));
    return static_cast<uint64_t>(v);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, " must be a non-negative integer, got ", value.type_name()));
}

using ::anchorserve::ScopedFd;

absl::Status ErrnoError(int error, absl::string_view what) {
  return absl::ErrnoToStatus(error, what);
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t max_bytes) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(errno, absl::StrCat("cannot stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is ", st.st_size, " bytes, more than the limit of ", max_bytes));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(errno, absl::StrCat("cannot read ", path));
    if (n == 0) break;  // shrank under us; parse what we have
    done += static_cast<size_t>(n);
  }
  text.resize(done);
  return text;
}

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(errno, absl::StrCat("cannot write ", path));
    if (n == 0) return absl::DataLossError(absl::StrCat("write to ", path, " made no progress"));
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

struct Chunk {
  const void* data;
  size_t size;
};

// Writes `chunks` to a temporary file next to `path`, syncs it and renames it over `path`, so
// readers see either the old file or the complete new one, never a prefix.
absl::Status AtomicWriteFile(const std::string& path, const std::vector<Chunk>& chunks) {
  std::string temp = path + ".tmp.XXXXXX";
  ScopedFd fd(::mkostemp(temp.data(), O_CLOEXEC));
  if (fd.get() < 0) {
    return ErrnoError(errno, absl::StrCat("cannot create a temporary file for ", path));
  }
  absl::Status status = absl::OkStatus();
  // mkstemp creates 0600; weights are meant to be shared like any saved model.
  if (::fchmod(fd.get(), 0644) != 0) {
    status = ErrnoError(errno, absl::StrCat("cannot chmod ", temp));
  }
  for (const Chunk& chunk : chunks) {
    if (!status.ok()) break;
    status = WriteAll(fd.get(), chunk.data, chunk.size, temp);
  }
  if (status.ok() && ::fsync(fd.get()) != 0) {
    status = ErrnoError(errno, absl::StrCat("cannot sync ", temp));
  }
  if (fd.Close() != 0 && status.ok()) {
    status = ErrnoError(errno, absl::StrCat("cannot close ", temp));
  }
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = ErrnoError(errno, absl::StrCat("cannot rename ", temp, " to ", path));
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return Annotate(status, absl::StrCat("writing ", path, ": "));
  }
  // Make the rename itself durable. Best effort: the file is complete either way.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  ScopedFd dir_fd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) (void)::fsync(dir_fd.get());
  return absl::OkStatus();
}

absl::Status ValidateForWrite(const TensorData* tensor) {
  if (tensor == nullptr) return absl::InvalidArgumentError("null tensor passed to a writer");
  if (tensor->name.empty()) return absl::InvalidArgumentError("tensor with an empty name");
  if (tensor->name == kMetadataKey) {
    return absl::InvalidArgumentError("a tensor may not be named __metadata__");
  }
  for (int64_t dim : tensor->shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", tensor->name, "' has negative dim ", dim));
    }
  }
  uint64_t expected = 0;
  if (!CheckedByteCount(tensor->shape, DTypeSize(tensor->dtype), &expected)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", tensor->name, "': element count overflows"));
  }
  if (expected != tensor->bytes.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", tensor->name, "' has ", tensor->bytes.size(),
                     " bytes but its shape and ", DTypeName(tensor->dtype), " need ", expected));
  }
  return absl::OkStatus();
}

absl::Status ValidateAllForWrite(const std::vector<const TensorData*>& tensors) {
  std::set<absl::string_view> names;
  for (const TensorData* tensor : tensors) {
    RETURN_IF_ERROR(ValidateForWrite(tensor));
    if (!names.insert(tensor->name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor->name, "' is given twice"));
    }
  }
  return absl::OkStatus();
}

// "model-00001-of-00003.safetensors" and the like: the names save_pretrained gives shards.
bool IsShardFileName(absl::string_view name) {
  constexpr absl::string_view kPrefix = "model-";
  constexpr absl::string_view kSuffix = ".safetensors";
  if (name.size() != kPrefix.size() + 5 + 4 + 5 + kSuffix.size()) return false;
  if (name.substr(0, kPrefix.size()) != kPrefix) return false;
  if (name.substr(name.size() - kSuffix.size()) != kSuffix) return false;
  const absl::string_view middle = name.substr(kPrefix.size(), 14);  // NNNNN-of-NNNNN
  for (size_t i = 0; i < middle.size(); ++i) {
    const bool digit_place = i < 5 || i >= 9;
    if (digit_place && (middle[i] < '0' || middle[i] > '9')) return false;
  }
  return middle.substr(5, 4) == "-of-";
}

}  // namespace

size_t DTypeSize(DType dtype) { return Info(dtype).size; }

absl::string_view DTypeName(DType dtype) { return Info(dtype).name; }

absl::StatusOr<DType> DTypeFromName(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype \"", name, "\""));
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Header

absl::StatusOr<SafetensorsLayout> ParseSafetensorsLayout(absl::string_view file,
                                                         absl::string_view path) {
  const size_t file_size = file.size();
  if (file_size < kLengthPrefixBytes) {
    return absl::DataLossError(absl::StrCat(path, ": file is ", file_size,
                                            " bytes, too short for the 8-byte header length"));
  }
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(file.data());

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len,
                                                   " exceeds the limit of ", kMaxHeaderBytes));
  }
  if (header_len > file_size - kLengthPrefixBytes) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len, " but only ",
                                            file_size - kLengthPrefixBytes,
                                            " bytes follow the length prefix (truncated?)"));
  }
  const size_t data_start = kLengthPrefixBytes + static_cast<size_t>(header_len);
  const size_t data_size = file_size - data_start;

  const absl::string_view header_text(reinterpret_cast<const char*>(bytes) + kLengthPrefixBytes,
                                      static_cast<size_t>(header_len));
  // nlohmann's lexer takes a NUL for the end of input and would ignore whatever follows it.
  if (header_text.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header is not valid JSON: it contains a NUL byte"));
  }
  if (NestingDepth(header_text) > kMaxHeaderNesting) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header JSON is nested deeper than a safetensors header can be"));
  }
  Json header;
  try {
    header = Json::parse(bytes + kLengthPrefixBytes, bytes + data_start);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header must be a JSON object, got ", header.type_name()));
  }

  SafetensorsLayout layout;
  layout.data_start = data_start;
  std::map<std::string, SafetensorsEntry, std::less<>>& entries = layout.entries;
  std::map<std::string, std::string>& metadata = layout.metadata;
  struct Range {
    size_t begin;
    size_t end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      if (value.is_null()) continue;  // written by some tools for "no metadata"
      if (!value.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": __metadata__ must be an object of strings"));
      }
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": __metadata__ entry '", key, "' must be a string, got ", item.type_name()));
        }
        metadata.emplace(key, item.get<std::string>());
      }
      continue;
    }
    const std::string where = absl::StrCat(path, ": tensor '", name, "': ");
    if (!value.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "entry must be an object, got ", value.type_name()));
    }
    const auto dtype_it = value.find("dtype");
    const auto shape_it = value.find("shape");
    const auto offsets_it = value.find("data_offsets");
    if (dtype_it == value.end()) return absl::InvalidArgumentError(where + "missing \"dtype\"");
    if (shape_it == value.end()) return absl::InvalidArgumentError(where + "missing \"shape\"");
    if (offsets_it == value.end()) {
      return absl::InvalidArgumentError(where + "missing \"data_offsets\"");
    }
    if (!dtype_it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"dtype\" must be a string, got ", dtype_it->type_name()));
    }
    absl::StatusOr<DType> dtype = DTypeFromName(dtype_it->get_ref<const std::string&>());
    if (!dtype.ok()) return Annotate(dtype.status(), where);

    if (!shape_it->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"shape\" must be an array, got ", shape_it->type_name()));
    }
    SafetensorsEntry entry;
    entry.dtype = *dtype;
    for (const Json& dim : *shape_it) {
      absl::StatusOr<uint64_t> d = NonNegativeInt(dim, "dim");
      if (!d.ok()) return Annotate(d.status(), absl::StrCat(where, "\"shape\": "));
      entry.shape.push_back(static_cast<int64_t>(*d));
    }

    if (!offsets_it->is_array() || offsets_it->size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"data_offsets\" must be an array [begin, end]"));
    }
    absl::StatusOr<uint64_t> begin = NonNegativeInt((*offsets_it)[0], "begin");
    if (!begin.ok()) return Annotate(begin.status(), absl::StrCat(where, "\"data_offsets\": "));
    absl::StatusOr<uint64_t> end = NonNegativeInt((*offsets_it)[1], "end");
    if (!end.ok()) return Annotate(end.status(), absl::StrCat(where, "\"data_offsets\": "));
    if (*begin > *end) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "data_offsets begin ", *begin, " > end ", *end));
    }
    if (*end > data_size) {
      return absl::DataLossError(absl::StrCat(where, "data_offsets end ", *end,
                                              " lies beyond the data section of ", data_size,
                                              " bytes (truncated file?)"));
    }
    uint64_t expected = 0;
    if (!CheckedByteCount(entry.shape, DTypeSize(entry.dtype), &expected)) {
      return absl::InvalidArgumentError(absl::StrCat(where, "shape size overflows"));
    }
    if (*end - *begin != expected) {
      return absl::InvalidArgumentError(absl::StrCat(where, "data_offsets span ", *end - *begin,
                                                     " bytes but shape and ",
                                                     DTypeName(entry.dtype), " need ", expected));
    }
    entry.begin = static_cast<size_t>(*begin);
    entry.nbytes = static_cast<size_t>(expected);
    const auto it = entries.emplace(name, std::move(entry)).first;
    if (it->second.nbytes > 0) {  // empty tensors occupy no bytes and overlap nothing
      ranges.push_back({it->second.begin, it->second.begin + it->second.nbytes, &it->first});
    }
  }

  // Overlap would let a hostile file alias tensors (a write through one loader buffer showing
  // up in another); the reference implementation rejects it too.
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", *ranges[i].name,
                                                     "' overlaps tensor '", *ranges[i - 1].name,
                                                     "' in the data section"));
    }
  }

  return layout;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(std::string path, void* mapping, size_t mapping_size,
                                 SafetensorsLayout layout)
    : path_(std::move(path)),
      mapping_(mapping),
      mapping_size_(mapping_size),
      data_start_(layout.data_start),
      entries_(std::move(layout.entries)),
      metadata_(std::move(layout.metadata)) {}

SafetensorsFile::~SafetensorsFile() { ::munmap(mapping_, mapping_size_); }

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    return ErrnoError(errno, absl::StrCat("cannot open safetensors file ", path));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(errno, absl::StrCat("cannot stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  const size_t file_size = static_cast<size_t>(st.st_size);
  // Before mapping too: mmap refuses an empty file with an errno that would hide the cause.
  if (file_size < kLengthPrefixBytes) {
    return absl::DataLossError(absl::StrCat(path, ": file is ", file_size,
                                            " bytes, too short for the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (mapping == MAP_FAILED) return ErrnoError(errno, absl::StrCat("cannot mmap ", path));
  // Unmap on every error path below; ownership moves to the object only on success.
  struct Unmapper {
    void* mapping;
    size_t size;
    ~Unmapper() {
      if (mapping != nullptr) ::munmap(mapping, size);
    }
  } unmapper{mapping, file_size};
  const absl::string_view bytes(static_cast<const char*>(mapping), file_size);
  ASSIGN_OR_RETURN(SafetensorsLayout layout, ParseSafetensorsLayout(bytes, path));
  unmapper.mapping = nullptr;
  return std::unique_ptr<SafetensorsFile>(
      new SafetensorsFile(path, mapping, file_size, std::move(layout)));
}

std::vector<std::string> SafetensorsFile::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) names.push_back(name);
  return names;
}

bool SafetensorsFile::Contains(absl::string_view name) const {
  return entries_.find(name) != entries_.end();
}

absl::StatusOr<TensorView> SafetensorsFile::Get(absl::string_view name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not found in ", path_));
  }
  const SafetensorsEntry& entry = it->second;
  TensorView view;
  view.name = it->first;
  view.dtype = entry.dtype;
  view.shape = entry.shape;
  view.data = static_cast<const uint8_t*>(mapping_) + data_start_ + entry.begin;
  view.nbytes = entry.nbytes;
  return view;
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

Checkpoint::Checkpoint(std::string model_dir, std::vector<std::unique_ptr<SafetensorsFile>> files,
                       std::map<std::string, const SafetensorsFile*, std::less<>> tensor_to_file)
    : model_dir_(std::move(model_dir)),
      files_(std::move(files)),
      tensor_to_file_(std::move(tensor_to_file)) {}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(model_dir);
  const std::string single_path = (dir / std::string(kSingleFileName)).string();
  const std::string index_path = (dir / std::string(kIndexFileName)).string();
  std::error_code ec;

  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, const SafetensorsFile*, std::less<>> tensor_to_file;
  if (fs::exists(single_path, ec)) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
    for (std::string& name : file->TensorNames())
      tensor_to_file.emplace(std::move(name), file.get());
    files.push_back(std::move(file));
    return std::unique_ptr<Checkpoint>(
        new Checkpoint(model_dir, std::move(files), std::move(tensor_to_file)));
  }
  if (!fs::exists(index_path, ec)) {
    if (!fs::is_directory(dir, ec)) {
      return absl::NotFoundError(absl::StrCat("model directory ", model_dir, " does not exist"));
    }
    return absl::NotFoundError(absl::StrCat("no ", kSingleFileName, " or ", kIndexFileName,
                                            " in model directory ", model_dir));
  }

  ASSIGN_OR_RETURN(std::string index_text, ReadSmallFile(index_path, kMaxHeaderBytes));
  Json index;
  try {
    if (index_text.find('\0') != std::string::npos) {  // the lexer would stop there silently
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON: NUL byte"));
    }
    index = Json::parse(index_text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON: ", e.what()));
  }
  if (!index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": must be a JSON object"));
  }
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": missing \"weight_map\" object"));
  }

  std::map<std::string, const SafetensorsFile*> shards;
  for (const auto& [tensor, shard_value] : weight_map->items()) {
    if (!shard_value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry for tensor '",
                                                     tensor, "' must be a file name"));
    }
    const std::string& shard = shard_value.get_ref<const std::string&>();
    auto shard_it = shards.find(shard);
    if (shard_it == shards.end()) {
      const fs::path shard_rel(shard);
      bool escapes = shard.empty() || shard_rel.is_absolute();
      for (const fs::path& part : shard_rel) escapes = escapes || part == "..";
      if (escapes) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": shard name \"", shard, "\" for tensor '", tensor,
                         "' must be a file inside the model directory"));
      }
      const std::string shard_path = (dir / shard_rel).string();
      if (!fs::exists(shard_path, ec)) {
        return absl::NotFoundError(absl::StrCat("shard ", shard_path, " (listed in ", index_path,
                                                " for tensor '", tensor, "') does not exist"));
      }
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
      if (!file.ok()) {
        return Annotate(file.status(), absl::StrCat("shard listed in ", index_path, ": "));
      }
      shard_it = shards.emplace(shard, file->get()).first;
      files.push_back(*std::move(file));
    }
    if (!shard_it->second->Contains(tensor)) {
      return absl::NotFoundError(absl::StrCat("tensor '", tensor, "' is listed in ", index_path,
                                              " but absent from shard ", shard_it->second->path()));
    }
    tensor_to_file.emplace(tensor, shard_it->second);
  }
  return std::unique_ptr<Checkpoint>(
      new Checkpoint(model_dir, std::move(files), std::move(tensor_to_file)));
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensor_to_file_.size());
  for (const auto& [name, file] : tensor_to_file_) names.push_back(name);
  return names;
}

bool Checkpoint::Contains(absl::string_view name) const {
  return tensor_to_file_.find(name) != tensor_to_file_.end();
}

absl::StatusOr<TensorView> Checkpoint::Get(absl::string_view name) const {
  const auto it = tensor_to_file_.find(name);
  if (it == tensor_to_file_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", name, "' not found in checkpoint ", model_dir_));
  }
  return it->second->Get(name);
}

// ---------------------------------------------------------------------------------------------
// Writers

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<const TensorData*>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  absl::Status valid = ValidateAllForWrite(tensors);
  if (!valid.ok()) return Annotate(valid, absl::StrCat("writing ", path, ": "));
  std::vector<const TensorData*> sorted = tensors;
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorData* a, const TensorData* b) { return a->name < b->name; });

  // ordered_json keeps the reference layout: __metadata__ first, then tensors in data order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[std::string(kMetadataKey)] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const TensorData* tensor : sorted) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(DTypeName(tensor->dtype));
    entry["shape"] = tensor->shape;
    entry["data_offsets"] = {offset, offset + tensor->bytes.size()};
    header[tensor->name] = std::move(entry);
    offset += tensor->bytes.size();
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {  // e.g. a name that is not UTF-8
    return absl::InvalidArgumentError(
        absl::StrCat("writing ", path, ": cannot encode the header: ", e.what()));
  }
  // Pad so the data section starts 8-byte aligned, as the reference writer does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  uint8_t prefix[kLengthPrefixBytes];
  uint64_t header_len = header_text.size();
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) prefix[i] = (header_len >> (8 * i)) & 0xFF;

  std::vector<Chunk> chunks;
  chunks.push_back({prefix, sizeof(prefix)});
  chunks.push_back({header_text.data(), header_text.size()});
  for (const TensorData* tensor : sorted) {
    if (!tensor->bytes.empty()) chunks.push_back({tensor->bytes.data(), tensor->bytes.size()});
  }
  return AtomicWriteFile(path, chunks);
}

absl::Status WriteShardedSafetensors(const std::string& dir,
                                     const std::vector<const TensorData*>& tensors,
                                     size_t max_shard_bytes,
                                     const std::map<std::string, std::string>& metadata) {
  namespace fs = std::filesystem;
  if (max_shard_bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat("writing ", dir, ": max_shard_bytes is 0"));
  }
  // Validate everything before touching the directory: a duplicate name across two shards
  // would otherwise be found only after the first shard was written.
  absl::Status valid = ValidateAllForWrite(tensors);
  if (!valid.ok()) return Annotate(valid, absl::StrCat("writing ", dir, ": "));

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot create model directory ", dir));
  }

  // huggingface_hub's split_state_dict_into_shards: greedy, in the given order.
  std::vector<std::vector<const TensorData*>> shards;
  std::vector<const TensorData*> current;
  size_t current_bytes = 0;
  uint64_t total_bytes = 0;
  uint64_t total_parameters = 0;
  for (const TensorData* tensor : tensors) {
    const size_t size = tensor->bytes.size();
    total_bytes += size;
    total_parameters += size / DTypeSize(tensor->dtype);
    if (size > max_shard_bytes) {
      shards.push_back({tensor});
      continue;
    }
    if (current_bytes + size > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(tensor);
    current_bytes += size;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  std::map<std::string, std::string> shard_metadata = metadata;
  shard_metadata.emplace("format", "pt");  // keeps a caller's own "format"

  const fs::path dir_path(dir);
  std::set<std::string> written;
  Json weight_map = Json::object();
  if (shards.size() == 1) {
    const std::string name(kSingleFileName);
    RETURN_IF_ERROR(WriteSafetensors((dir_path / name).string(), shards[0], shard_metadata));
    written.insert(name);
  } else {
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string name =
          absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
      RETURN_IF_ERROR(WriteSafetensors((dir_path / name).string(), shards[i], shard_metadata));
      written.insert(name);
      for (const TensorData* tensor : shards[i]) weight_map[tensor->name] = name;
    }
    Json index = Json::object();
    index["metadata"] = {{"total_parameters", total_parameters}, {"total_size", total_bytes}};
    index["weight_map"] = std::move(weight_map);
    std::string text;
    try {
      // transformers: json.dumps(index, indent=2, sort_keys=True) + "\n" (ASCII-escaped).
      text = index.dump(2, ' ', /*ensure_ascii=*/true) + "\n";
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("writing ", dir, ": cannot encode the index: ", e.what()));
    }
    const std::string index_name(kIndexFileName);
    RETURN_IF_ERROR(
        AtomicWriteFile((dir_path / index_name).string(), {{text.data(), text.size()}}));
    written.insert(index_name);
  }

  // Remove weights of an earlier save that this one replaces: a stale model.safetensors would
  // take precedence over a new index, and stale shards only confuse.
  std::vector<fs::path> stale;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir_path, ec)) {
    const std::string name = entry.path().filename().string();
    const bool weights = name == kSingleFileName || name == kIndexFileName || IsShardFileName(name);
    if (weights && written.count(name) == 0) stale.push_back(entry.path());
  }
  if (ec) return absl::ErrnoToStatus(ec.value(), absl::StrCat("cannot list ", dir));
  for (const fs::path& path : stale) {
    if (!fs::remove(path, ec) && ec) {
      return absl::ErrnoToStatus(ec.value(),
                                 absl::StrCat("cannot remove stale weights ", path.string()));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Bit conversions

uint16_t FloatToBFloat16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    // Truncating could clear every payload bit and turn NaN into inf; force the quiet bit.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7FFFu + lsb) >> 16);
}

float BFloat16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t FloatToHalf(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) {  // NaN: keep the top payload bits, force quiet
    return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  }
  if (abs >= 0x477FF000u) {  // >= 65520 (halfway above 65504) rounds to inf; inf stays inf
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (abs >= 0x38800000u) {  // normal half (>= 2^-14)
    const uint32_t odd = (abs >> 13) & 1u;
    // Rebias the exponent (127 -> 15) and round to nearest even on the 13 dropped bits.
    const uint32_t rounded = abs - (112u << 23) + 0xFFFu + odd;
    return static_cast<uint16_t>(sign | (rounded >> 13));
  }
  // Subnormal half (or zero): value / 2^-24, rounded to nearest even.
  const uint32_t exponent = abs >> 23;
  if (exponent < 102) return sign;  // below 2^-25: rounds to zero
  const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // 14 ... 24
  uint32_t q = mantissa >> shift;
  const uint32_t rem = mantissa & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;  // may carry into the smallest normal
  return static_cast<uint16_t>(sign | q);
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // exact
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

}  // namespace anchorserve::model
