#include "model/safetensors.h"

#include <signal.h>
#include <sys/resource.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/remove_tree.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace anchorserve::model {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64,
                                DType::kI32, DType::kI16, DType::kI8,   DType::kU8,  DType::kBool};

// A fresh, empty directory per test.
std::string TestDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(::testing::TempDir()) / "safetensors_test" /
                       absl::StrCat(info->test_suite_name(), ".", info->name());
  anchorserve::RemoveTree(dir);
  fs::create_directories(dir);
  return dir.string();
}

void WriteRaw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadRaw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string LengthPrefix(uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return prefix;
}

// A safetensors file from a header text and a data section of `data_size` bytes.
std::string RawFile(const std::string& header, size_t data_size) {
  return LengthPrefix(header.size()) + header + std::string(data_size, '\x5a');
}

// Deterministic contents so round trips can compare bytes.
TensorData MakeTensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                      uint32_t seed = 1) {
  TensorData t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  size_t numel = 1;
  for (int64_t d : t.shape) numel *= static_cast<size_t>(d);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  for (size_t i = 0; i < numel; ++i) {
    const float f = dist(rng);
    uint8_t buf[8];
    size_t n = DTypeSize(dtype);
    switch (dtype) {
      case DType::kF32:
        std::memcpy(buf, &f, 4);
        break;
      case DType::kF64: {
        const double d = f;
        std::memcpy(buf, &d, 8);
        break;
      }
      case DType::kF16: {
        const uint16_t h = FloatToHalf(f);
        std::memcpy(buf, &h, 2);
        break;
      }
      case DType::kBF16: {
        const uint16_t b = FloatToBFloat16(f);
        std::memcpy(buf, &b, 2);
        break;
      }
      case DType::kBool:
        buf[0] = rng() & 1;
        break;
      default:
        for (size_t k = 0; k < n; ++k) buf[k] = static_cast<uint8_t>(rng());
    }
    t.bytes.insert(t.bytes.end(), buf, buf + n);
  }
  return t;
}

std::vector<const TensorData*> Pointers(const std::vector<TensorData>& tensors) {
  std::vector<const TensorData*> out;
  for (const TensorData& t : tensors) out.push_back(&t);
  return out;
}

void ExpectSameTensor(const TensorData& expected, const TensorView& view) {
  EXPECT_EQ(view.name, expected.name);
  EXPECT_EQ(view.dtype, expected.dtype);
  EXPECT_EQ(view.shape, expected.shape);
  ASSERT_EQ(view.nbytes, expected.bytes.size()) << expected.name;
  EXPECT_EQ(static_cast<size_t>(view.numel()) * DTypeSize(view.dtype), view.nbytes);
  EXPECT_TRUE(expected.bytes.empty() ||
              std::memcmp(view.data, expected.bytes.data(), view.nbytes) == 0)
      << expected.name;
}

// ---------------------------------------------------------------------------------------------

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_EQ(DTypeSize(DType::kBool), 1u);
  for (DType dtype : kAllDTypes) {
    auto parsed = DTypeFromName(DTypeName(dtype));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, dtype);
  }
  EXPECT_EQ(DTypeFromName("bf16").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DTypeFromName("F8_E4M3").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsRoundTripTest, EveryDType) {
  const std::string dir = TestDir();
  std::vector<TensorData> tensors;
  uint32_t seed = 1;
  for (DType dtype : kAllDTypes) {
    const std::string base = absl::StrCat("t.", DTypeName(dtype));
    tensors.push_back(MakeTensor(base + ".matrix", dtype, {3, 5}, seed++));
    tensors.push_back(MakeTensor(base + ".scalar", dtype, {}, seed++));
    tensors.push_back(MakeTensor(base + ".empty", dtype, {0, 7}, seed++));
    tensors.push_back(MakeTensor(base + ".odd", dtype, {1, 3, 1}, seed++));
  }
  const std::string path = dir + "/all.safetensors";
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo"}};
  ASSERT_TRUE(WriteSafetensors(path, Pointers(tensors), metadata).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata(), metadata);
  std::vector<std::string> expected_names;
  for (const TensorData& t : tensors) expected_names.push_back(t.name);
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ((*file)->TensorNames(), expected_names);
  for (const TensorData& t : tensors) {
    ASSERT_TRUE((*file)->Contains(t.name));
    auto view = (*file)->Get(t.name);
    ASSERT_TRUE(view.ok()) << view.status();
    ExpectSameTensor(t, *view);
  }
  auto missing = (*file)->Get("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope"));
  EXPECT_THAT(missing.status().message(), HasSubstr(path));
}

TEST(SafetensorsRoundTripTest, FloatValuesSurviveConversion) {
  // bf16/f16 tensors built from floats read back to the same (rounded) floats.
  const std::string dir = TestDir();
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 1e-7f};
  TensorData bf16{"bf16", DType::kBF16, {static_cast<int64_t>(values.size())}, {}};
  TensorData f16{"f16", DType::kF16, {static_cast<int64_t>(values.size())}, {}};
  for (float v : values) {
    const uint16_t b = FloatToBFloat16(v), h = FloatToHalf(v);
    bf16.bytes.insert(bf16.bytes.end(), {static_cast<uint8_t>(b), static_cast<uint8_t>(b >> 8)});
    f16.bytes.insert(f16.bytes.end(), {static_cast<uint8_t>(h), static_cast<uint8_t>(h >> 8)});
  }
  const std::string path = dir + "/f.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {&bf16, &f16}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto h = (*file)->Get("f16");
  ASSERT_TRUE(h.ok());
  for (size_t i = 0; i < values.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, h->data + 2 * i, 2);  // views may be unaligned: memcpy
    EXPECT_EQ(HalfToFloat(bits), HalfToFloat(FloatToHalf(values[i])));
  }
  EXPECT_EQ(HalfToFloat(FloatToHalf(3.140625f)), 3.140625f);
}

TEST(SafetensorsWriterTest, LayoutMatchesReference) {
  const std::string dir = TestDir();
  std::vector<TensorData> tensors = {MakeTensor("b", DType::kF32, {3}),
                                     MakeTensor("a", DType::kBF16, {5}),
                                     MakeTensor("c", DType::kI8, {1})};
  const std::string path = dir + "/x.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, Pointers(tensors), {{"format", "pt"}}).ok());
  const std::string raw = ReadRaw(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  ASSERT_EQ(n % 8, 0u);
  const std::string header = raw.substr(8, n);
  EXPECT_EQ(header.find_last_not_of(' ') + 1, header.find_last_of('}') + 1);
  EXPECT_EQ(header.rfind(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[5],)"
                         R"("data_offsets":[0,10]},"b":{"dtype":"F32","shape":[3],)"
                         R"("data_offsets":[10,22]},"c":{"dtype":"I8","shape":[1],)"
                         R"("data_offsets":[22,23]}})",
                         0),
            0u)
      << header;
  std::string expected_data;
  for (const char* name : {"a", "b", "c"}) {
    for (const TensorData& t : tensors) {
      if (t.name == name) expected_data.append(t.bytes.begin(), t.bytes.end());
    }
  }
  EXPECT_EQ(raw.substr(8 + n), expected_data);
  // No temporary left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST(SafetensorsWriterTest, RejectsBadTensors) {
  const std::string path = TestDir() + "/bad.safetensors";
  TensorData ok = MakeTensor("ok", DType::kF32, {2});
  TensorData short_bytes = MakeTensor("short", DType::kF32, {2});
  short_bytes.bytes.pop_back();
  TensorData negative{"neg", DType::kF32, {-1}, {}};
  TensorData reserved = MakeTensor("__metadata__", DType::kU8, {1});
  TensorData unnamed = MakeTensor("", DType::kU8, {1});
  TensorData overflow{"huge", DType::kF64, {int64_t{1} << 62, 4}, {}};
  const std::vector<std::pair<std::vector<const TensorData*>, std::string>> cases = {
      {{&ok, &short_bytes}, "short"}, {{&negative}, "neg"},  {{&ok, &ok}, "ok"},
      {{&reserved}, "__metadata__"},  {{&unnamed}, "empty"}, {{nullptr}, "null"},
      {{&overflow}, "huge"},
  };
  for (const auto& [tensors, needle] : cases) {
    absl::Status status = WriteSafetensors(path, tensors);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << needle;
    EXPECT_THAT(status.message(), HasSubstr(needle));
    EXPECT_THAT(status.message(), HasSubstr(path));
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(WriteShardedSafetensors(TestDir(), {&ok}, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsWriterTest, IoErrorsAreStatusesAndLeaveNoPartialFile) {
  const std::string dir = TestDir();
  TensorData big = MakeTensor("big", DType::kU8, {1 << 20});

  absl::Status status = WriteSafetensors(dir + "/no/such/dir/x.safetensors", {&big});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("no/such/dir/x.safetensors"));

  // A disk that fills up mid-write: cap the file size (EFBIG, the same path as ENOSPC).
  const std::string path = dir + "/keep.safetensors";
  WriteRaw(path, "old contents");
  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit capped = saved;
  capped.rlim_cur = 64 << 10;
  sighandler_t saved_handler = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &capped), 0);
  status = WriteSafetensors(path, {&big});
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
  signal(SIGXFSZ, saved_handler);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(path));
  EXPECT_EQ(ReadRaw(path), "old contents");
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1) << "temporary file left behind";
}

TEST(ShardedSafetensorsTest, SplitsLikeTransformersAndReadsBack) {
  const std::string dir = TestDir();
  // Greedy split with max 1000 bytes, in the given order: [a b] [d: oversized, own shard] [c e].
  std::vector<TensorData> tensors = {
      MakeTensor("layers.0.a", DType::kF32, {100}, 1),   // 400 bytes
      MakeTensor("layers.0.b", DType::kBF16, {200}, 2),  // 400
      MakeTensor("layers.1.c", DType::kF16, {200}, 3),   // 400
      MakeTensor("embed.d", DType::kF32, {375}, 4),      // 1500 > max
      MakeTensor("norm.e", DType::kF64, {12, 1}, 5),     // 96
  };
  // A previous single-file save in the same directory must not shadow the new shards.
  TensorData stale = MakeTensor("stale", DType::kU8, {1});
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", {&stale}).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00007-of-00009.safetensors", {&stale}).ok());
  WriteRaw(dir + "/notes.txt", "not ours");

  ASSERT_TRUE(WriteShardedSafetensors(dir, Pointers(tensors), 1000, {{"producer", "test"}}).ok());

  std::set<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    files.insert(entry.path().filename().string());
  }
  EXPECT_EQ(files,
            (std::set<std::string>{
                "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors", "model.safetensors.index.json", "notes.txt"}));

  const std::string index_text = ReadRaw(dir + "/model.safetensors.index.json");
  EXPECT_EQ(index_text,
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_parameters\": 887,\n"
            "    \"total_size\": 2796\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"embed.d\": \"model-00002-of-00003.safetensors\",\n"
            "    \"layers.0.a\": \"model-00001-of-00003.safetensors\",\n"
            "    \"layers.0.b\": \"model-00001-of-00003.safetensors\",\n"
            "    \"layers.1.c\": \"model-00003-of-00003.safetensors\",\n"
            "    \"norm.e\": \"model-00003-of-00003.safetensors\"\n"
            "  }\n"
            "}\n");
  auto index = nlohmann::json::parse(index_text);
  EXPECT_EQ(index["metadata"]["total_size"], 2796);

  auto shard = SafetensorsFile::Open(dir + "/model-00003-of-00003.safetensors");
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_THAT((*shard)->TensorNames(), ElementsAre("layers.1.c", "norm.e"));
  EXPECT_EQ((*shard)->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"producer", "test"}}));

  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_THAT((*checkpoint)->TensorNames(),
              ElementsAre("embed.d", "layers.0.a", "layers.0.b", "layers.1.c", "norm.e"));
  for (const TensorData& t : tensors) {
    auto view = (*checkpoint)->Get(t.name);
    ASSERT_TRUE(view.ok()) << view.status();
    ExpectSameTensor(t, *view);
  }
  auto missing = (*checkpoint)->Get("stale");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir));

  // Saving again small enough for one file replaces the shards and the index.
  ASSERT_TRUE(WriteShardedSafetensors(dir, {&tensors[0]}, 1000).ok());
  files.clear();
  for (const auto& entry : fs::directory_iterator(dir)) {
    files.insert(entry.path().filename().string());
  }
  EXPECT_EQ(files, (std::set<std::string>{"model.safetensors", "notes.txt"}));
  checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_THAT((*checkpoint)->TensorNames(), ElementsAre("layers.0.a"));
}

TEST(ShardedSafetensorsTest, TensorsNeverSplitAndExactFitStaysTogether) {
  const std::string dir = TestDir();
  std::vector<TensorData> tensors;
  for (int i = 0; i < 10; ++i) {
    tensors.push_back(MakeTensor(absl::StrCat("w", i), DType::kU8, {100}, i));
  }
  ASSERT_TRUE(WriteShardedSafetensors(dir, Pointers(tensors), 300).ok());
  for (int i = 1; i <= 4; ++i) {
    EXPECT_TRUE(fs::exists(absl::StrCat(dir, "/model-0000", i, "-of-00004.safetensors")));
  }
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  for (const TensorData& t : tensors) {
    auto view = (*checkpoint)->Get(t.name);
    ASSERT_TRUE(view.ok());
    ExpectSameTensor(t, *view);
  }
}

// ---------------------------------------------------------------------------------------------
// Hostile files: every validation rule, the right code, a message naming file and tensor.

struct HostileCase {
  const char* label;
  std::string bytes;
  absl::StatusCode code;
  std::vector<std::string> needles;  // besides the path
};

std::vector<HostileCase> HostileCases() {
  const std::string good = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  auto file = [](const std::string& header, size_t data) { return RawFile(header, data); };
  using C = absl::StatusCode;
  return {
      {"empty file", "", C::kDataLoss, {"8-byte"}},
      {"7 bytes", std::string(7, '\0'), C::kDataLoss, {"8-byte"}},
      {"header longer than file", LengthPrefix(1000) + good, C::kDataLoss, {"header length 1000"}},
      {"absurd header length",
       LengthPrefix(uint64_t{1} << 40) + good,
       C::kInvalidArgument,
       {"header length"}},
      {"max u64 header length",
       LengthPrefix(~uint64_t{0}) + good,
       C::kInvalidArgument,
       {"header length"}},
      {"not json", file("{\"w\": nope}", 8), C::kInvalidArgument, {"not valid JSON"}},
      {"json array", file("[1,2,3]", 0), C::kInvalidArgument, {"object"}},
      {"trailing nul", file(good + std::string(3, '\0'), 8), C::kInvalidArgument, {"JSON"}},
      {"entry not object", file(R"({"w":5})", 0), C::kInvalidArgument, {"'w'"}},
      {"missing dtype",
       file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "dtype"}},
      {"missing shape",
       file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "shape"}},
      {"missing offsets",
       file(R"({"w":{"dtype":"F32","shape":[2]}})", 8),
       C::kInvalidArgument,
       {"'w'", "data_offsets"}},
      {"dtype not string",
       file(R"({"w":{"dtype":1,"shape":[2],"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "dtype"}},
      {"shape not array",
       file(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "shape"}},
      {"float dim",
       file(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "shape"}},
      {"string dim",
       file(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "shape"}},
      {"offsets not pair",
       file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "data_offsets"}},
      {"offsets object",
       file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":{}}})", 8),
       C::kInvalidArgument,
       {"'w'", "data_offsets"}},
      {"negative offset",
       file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       C::kInvalidArgument,
       {"'w'", "negative"}},
      {"unknown dtype",
       file(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
       C::kInvalidArgument,
       {"'w'", "F8_E4M3"}},
      {"negative dim",
       file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "negative"}},
      {"begin > end",
       file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8),
       C::kInvalidArgument,
       {"'w'", "begin 8 > end 4"}},
      {"end beyond data",
       file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 7),
       C::kDataLoss,
       {"'w'", "beyond"}},
      {"huge end",
       file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", 8),
       C::kInvalidArgument,
       {"'w'", "too large"}},
      {"overlap",
       file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            12),
       C::kInvalidArgument,
       {"'a'", "'b'", "overlaps"}},
      {"same range twice",
       file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
            4),
       C::kInvalidArgument,
       {"'a'", "'b'", "overlaps"}},
      {"length != numel*size",
       file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"'w'", "need 12"}},
      {"bf16 length",
       file(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16),
       C::kInvalidArgument,
       {"'w'", "need 8"}},
      {"numel overflow",
       file(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", 0),
       C::kInvalidArgument,
       {"'w'", "overflow"}},
      {"bytes overflow wraps to 0",
       file(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})", 0),
       C::kInvalidArgument,
       {"'w'", "overflow"}},
      {"metadata not object",
       file(R"({"__metadata__":[1]})", 0),
       C::kInvalidArgument,
       {"__metadata__"}},
      {"metadata value not string",
       file(R"({"__metadata__":{"format":1}})", 0),
       C::kInvalidArgument,
       {"__metadata__", "format"}},
      {"deep nesting",
       file(std::string(100000, '[') + std::string(100000, ']'), 0),
       C::kInvalidArgument,
       {"nested"}},
      {"deep nesting in tensor",
       file(R"({"w":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", 8),
       C::kInvalidArgument,
       {"nested"}},
  };
}

TEST(SafetensorsHostileTest, EveryValidationRule) {
  const std::string dir = TestDir();
  int i = 0;
  for (const HostileCase& c : HostileCases()) {
    const std::string path = absl::StrCat(dir, "/case", i++, ".safetensors");
    WriteRaw(path, c.bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << c.label;
    EXPECT_EQ(file.status().code(), c.code) << c.label << ": " << file.status();
    EXPECT_THAT(file.status().message(), HasSubstr(path)) << c.label;
    for (const std::string& needle : c.needles) {
      EXPECT_THAT(file.status().message(), HasSubstr(needle)) << c.label;
    }
  }
}

// The in-memory parser (what the fuzzer drives) is what Open runs: same verdicts, same layout.
TEST(SafetensorsHostileTest, ParseSafetensorsLayoutAgreesWithOpen) {
  const std::string dir = TestDir();
  int i = 0;
  for (const HostileCase& c : HostileCases()) {
    const std::string path = absl::StrCat(dir, "/case", i++, ".safetensors");
    WriteRaw(path, c.bytes);
    const absl::StatusOr<SafetensorsLayout> layout = ParseSafetensorsLayout(c.bytes, path);
    EXPECT_EQ(layout.status(), SafetensorsFile::Open(path).status()) << c.label;
  }
  const std::vector<TensorData> tensors = {MakeTensor("b", DType::kBF16, {3, 2}),
                                           MakeTensor("a", DType::kI64, {}),
                                           MakeTensor("e", DType::kU8, {0})};
  const std::string path = dir + "/ok.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, Pointers(tensors), {{"format", "pt"}}).ok());
  const std::string bytes = ReadRaw(path);
  absl::StatusOr<SafetensorsLayout> layout = ParseSafetensorsLayout(bytes, "in memory");
  ASSERT_TRUE(layout.ok()) << layout.status();
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(layout->metadata, (*file)->metadata());
  ASSERT_EQ(layout->entries.size(), tensors.size());
  for (const TensorData& t : tensors) {
    const SafetensorsEntry& entry = layout->entries.at(t.name);
    EXPECT_EQ(entry.dtype, t.dtype);
    EXPECT_EQ(entry.shape, t.shape);
    ASSERT_EQ(entry.nbytes, t.bytes.size());
    ASSERT_LE(layout->data_start + entry.begin + entry.nbytes, bytes.size());
    EXPECT_EQ(bytes.substr(layout->data_start + entry.begin, entry.nbytes),
              std::string(t.bytes.begin(), t.bytes.end()))
        << t.name;
  }
}

TEST(SafetensorsHostileTest, AcceptsWhatTheFormatAllows) {
  const std::string dir = TestDir();
  const std::string path = dir + "/ok.safetensors";
  // Gaps, reordered offsets, a zero-size tensor anywhere, null metadata, trailing bytes.
  WriteRaw(path,
           RawFile(R"({"__metadata__":null,"z":{"dtype":"U8","shape":[0],"data_offsets":[3,3]},)"
                   R"("b":{"dtype":"I16","shape":[1],"data_offsets":[0,2]},)"
                   R"("a":{"dtype":"BOOL","shape":[],"data_offsets":[4,5]}}   )",
                   9));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT((*file)->TensorNames(), ElementsAre("a", "b", "z"));
  EXPECT_TRUE((*file)->metadata().empty());
  auto a = (*file)->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->numel(), 1);
  EXPECT_EQ(a->nbytes, 1u);
}

TEST(SafetensorsHostileTest, NotAFile) {
  const std::string dir = TestDir();
  auto missing = SafetensorsFile::Open(dir + "/absent.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("absent.safetensors"));
  auto directory = SafetensorsFile::Open(dir);
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(directory.status().message(), HasSubstr(dir));
}

TEST(SafetensorsHostileTest, TruncatedDataNamesTheTensor) {
  const std::string dir = TestDir();
  TensorData a = MakeTensor("alpha", DType::kF32, {4});
  TensorData z = MakeTensor("zeta", DType::kF32, {4});
  const std::string path = dir + "/t.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {&a, &z}).ok());
  fs::resize_file(path, fs::file_size(path) - 1);
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(file.status().message(), HasSubstr("'zeta'"));
  EXPECT_THAT(file.status().message(), HasSubstr(path));
}

// A valid file cut at every length, and its header with random bytes flipped: never a crash,
// and whatever opens hands out views that lie inside the file.
TEST(SafetensorsHostileTest, FuzzTruncationsAndFlips) {
  const std::string dir = TestDir();
  std::vector<TensorData> tensors = {
      MakeTensor("model.embed", DType::kBF16, {4, 3}), MakeTensor("model.norm", DType::kF32, {3}),
      MakeTensor("lm_head", DType::kF16, {2, 3}), MakeTensor("flag", DType::kBool, {1})};
  const std::string valid_path = dir + "/valid.safetensors";
  ASSERT_TRUE(WriteSafetensors(valid_path, Pointers(tensors), {{"format", "pt"}}).ok());
  const std::string valid = ReadRaw(valid_path);
  const std::string path = dir + "/fuzz.safetensors";

  auto check_views = [&](const SafetensorsFile& file) {
    uint64_t sum = 0;
    size_t total = 0;
    for (const std::string& name : file.TensorNames()) {
      auto view = file.Get(name);
      ASSERT_TRUE(view.ok());
      ASSERT_EQ(static_cast<size_t>(view->numel()) * DTypeSize(view->dtype), view->nbytes);
      for (size_t i = 0; i < view->nbytes; ++i) sum += view->data[i];  // touches every byte
      total += view->nbytes;
    }
    EXPECT_LE(total, valid.size());
    (void)sum;
  };

  for (size_t len = 0; len < valid.size(); ++len) {
    WriteRaw(path, valid.substr(0, len));
    auto file = SafetensorsFile::Open(path);
    EXPECT_FALSE(file.ok()) << "truncated to " << len;
    if (file.ok()) check_views(**file);
  }

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(valid[i]);
  std::mt19937 rng(20240607);
  int opened = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string mutated = valid;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      const size_t pos = rng() % (8 + header_len);
      if (rng() % 2 == 0) {
        mutated[pos] = static_cast<char>(mutated[pos] ^ (1 + rng() % 255));
      } else {
        // Digits and JSON punctuation make more mutants that still parse.
        static constexpr char kAlphabet[] = "0123456789[]{},:\"- e.";
        mutated[pos] = kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
      }
    }
    WriteRaw(path, mutated);
    auto file = SafetensorsFile::Open(path);
    if (file.ok()) {
      ++opened;
      check_views(**file);
    } else {
      EXPECT_THAT(file.status().message(), HasSubstr(path));
    }
  }
  // Sanity: the mutator does produce both outcomes.
  EXPECT_GT(opened, 0);
  EXPECT_LT(opened, 3000);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints with an index: what can go wrong.

class CheckpointIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TestDir();
    a_ = MakeTensor("a", DType::kF32, {2});
    b_ = MakeTensor("b", DType::kF32, {2});
    ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00001-of-00002.safetensors", {&a_}).ok());
    ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00002-of-00002.safetensors", {&b_}).ok());
  }
  void WriteIndex(const std::string& text) {
    WriteRaw(dir_ + "/model.safetensors.index.json", text);
  }
  std::string dir_;
  TensorData a_, b_;
};

TEST_F(CheckpointIndexTest, ReadsHandWrittenIndex) {
  WriteIndex(R"({"metadata": {"total_size": 16}, "weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_THAT((*checkpoint)->TensorNames(), ElementsAre("a", "b"));
  auto b = (*checkpoint)->Get("b");
  ASSERT_TRUE(b.ok());
  ExpectSameTensor(b_, *b);
}

TEST_F(CheckpointIndexTest, Errors) {
  const std::string index = dir_ + "/model.safetensors.index.json";
  struct Case {
    std::string text;
    absl::StatusCode code;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"{not json", absl::StatusCode::kInvalidArgument, {index, "JSON"}},
      {std::string("{\"weight_map\": {}}\0junk", 22),
       absl::StatusCode::kInvalidArgument,
       {index, "JSON"}},
      {"[]", absl::StatusCode::kInvalidArgument, {index}},
      {R"({"metadata": {}})", absl::StatusCode::kInvalidArgument, {index, "weight_map"}},
      {R"({"weight_map": ["a"]})", absl::StatusCode::kInvalidArgument, {index, "weight_map"}},
      {R"({"weight_map": {"a": 1}})", absl::StatusCode::kInvalidArgument, {index, "'a'"}},
      {R"({"weight_map": {"a": "model-00003-of-00003.safetensors"}})",
       absl::StatusCode::kNotFound,
       {index, dir_ + "/model-00003-of-00003.safetensors", "'a'"}},
      {R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                          "c": "model-00002-of-00002.safetensors"}})",
       absl::StatusCode::kNotFound,
       {index, "'c'", dir_ + "/model-00002-of-00002.safetensors"}},
      {R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})",
       absl::StatusCode::kInvalidArgument,
       {index, "'a'", "inside the model directory"}},
      {R"({"weight_map": {"a": "/etc/passwd"}})",
       absl::StatusCode::kInvalidArgument,
       {index, "'a'"}},
  };
  for (const Case& c : cases) {
    WriteIndex(c.text);
    auto checkpoint = Checkpoint::Open(dir_);
    ASSERT_FALSE(checkpoint.ok()) << c.text;
    EXPECT_EQ(checkpoint.status().code(), c.code) << c.text << " -> " << checkpoint.status();
    for (const std::string& needle : c.needles) {
      EXPECT_THAT(checkpoint.status().message(), HasSubstr(needle)) << c.text;
    }
  }
}

TEST_F(CheckpointIndexTest, CorruptShardIsReportedWithItsPath) {
  WriteIndex(R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                "b": "model-00002-of-00002.safetensors"}})");
  const std::string shard = dir_ + "/model-00002-of-00002.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 3);
  auto checkpoint = Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(checkpoint.status().message(), HasSubstr(shard));
  EXPECT_THAT(checkpoint.status().message(), HasSubstr("'b'"));
}

TEST(CheckpointTest, NoWeights) {
  const std::string dir = TestDir();
  auto checkpoint = Checkpoint::Open(dir);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(checkpoint.status().message(), HasSubstr(dir));
  checkpoint = Checkpoint::Open(dir + "/absent");
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(checkpoint.status().message(), HasSubstr("absent"));
}

// ---------------------------------------------------------------------------------------------
// Bit conversions

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }
float FromBits(uint32_t u) { return std::bit_cast<float>(u); }

TEST(BFloat16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3F808000)), 0x3F80);               // tie, even stays
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3F818000)), 0x3F82);               // tie, odd rounds up
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3F808001)), 0x3F81);               // above half
  EXPECT_EQ(FloatToBFloat16(FromBits(0x3F807FFF)), 0x3F80);               // below half
  EXPECT_EQ(FloatToBFloat16(FromBits(0xBF818000)), 0xBF82);               // sign symmetric
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7F80);  // overflows to inf
}

TEST(BFloat16Test, SpecialValues) {
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(FloatToBFloat16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(FloatToBFloat16(0.0f), 0x0000);
  EXPECT_EQ(FloatToBFloat16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  // A NaN whose payload sits only in the dropped bits must not become inf.
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(FromBits(0x7F800001)))));
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(FromBits(0xFF800001)))));
  EXPECT_EQ(FloatToBFloat16(FromBits(0xFF800001)) & 0x8000, 0x8000);
  // Denormals: bf16 has float's exponent range, so they are kept.
  EXPECT_EQ(FloatToBFloat16(FromBits(0x00010000)), 0x0001);
  EXPECT_EQ(Bits(BFloat16ToFloat(0x0001)), 0x00010000u);
  EXPECT_EQ(FloatToBFloat16(FromBits(0x00008000)), 0x0000);  // tie to even zero
  EXPECT_EQ(FloatToBFloat16(FromBits(0x00018000)), 0x0002);
}

TEST(BFloat16Test, EveryValueRoundTrips) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(b));
    EXPECT_EQ(Bits(f), b << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(f))));
    } else {
      ASSERT_EQ(FloatToBFloat16(f), b);
    }
  }
}

TEST(HalfTest, RoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie, even stays
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie, odd rounds up
  EXPECT_EQ(FloatToHalf(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3C01);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);  // tie above the max rounds to inf
  EXPECT_EQ(FloatToHalf(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
}

TEST(HalfTest, SpecialValuesAndSubnormals) {
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(FromBits(0x7F800001)))));
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7C00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7C01)));

  const float tiny = std::ldexp(1.0f, -24);  // smallest f16 subnormal
  EXPECT_EQ(FloatToHalf(tiny), 0x0001);
  EXPECT_EQ(FloatToHalf(tiny / 2), 0x0000);                        // tie to even zero
  EXPECT_EQ(FloatToHalf(std::nextafter(tiny / 2, 1.0f)), 0x0001);  // just above half
  EXPECT_EQ(FloatToHalf(3 * tiny / 2), 0x0002);                    // tie to even 2
  EXPECT_EQ(FloatToHalf(5 * tiny / 2), 0x0002);                    // tie to even 2
  EXPECT_EQ(FloatToHalf(-tiny), 0x8001);
  EXPECT_EQ(FloatToHalf(1023 * tiny), 0x03FF);           // largest subnormal
  EXPECT_EQ(FloatToHalf(1023.5f * tiny), 0x0400);        // carries into normal
  EXPECT_EQ(FloatToHalf(FromBits(0x00000001)), 0x0000);  // float denormal
  EXPECT_EQ(HalfToFloat(0x0001), tiny);
  EXPECT_EQ(HalfToFloat(0x03FF), 1023 * tiny);
  EXPECT_EQ(Bits(HalfToFloat(0x8000)), 0x80000000u);
}

TEST(HalfTest, EveryValueRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(FloatToHalf(f) & 0x7C00, 0x7C00);
      EXPECT_NE(FloatToHalf(f) & 0x03FF, 0);
    } else {
      ASSERT_EQ(FloatToHalf(f), h) << h;
    }
  }
}

#ifdef __FLT16_MAX__
// The compiler's own float -> _Float16 conversion is correctly rounded: agree with it on a
// spread of float bit patterns (every exponent, random mantissas).
TEST(HalfTest, AgreesWithCompilerFloat16) {
  std::mt19937 rng(7);
  for (int i = 0; i < 2'000'000; ++i) {
    uint32_t bits = static_cast<uint32_t>(rng());
    if (i % 2 == 0) {  // half the samples around f16's range: exponents 2^-31 .. 2^17
      bits = (bits & 0x807FFFFFu) | ((96u + rng() % 48) << 23);
    }
    const float f = FromBits(bits);
    if (std::isnan(f)) continue;
    const _Float16 reference = static_cast<_Float16>(f);
    uint16_t expected;
    std::memcpy(&expected, &reference, 2);
    ASSERT_EQ(FloatToHalf(f), expected) << std::hex << Bits(f);
  }
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    _Float16 half;
    std::memcpy(&half, &bits, 2);
    const float reference = static_cast<float>(half);
    if (std::isnan(reference)) continue;
    ASSERT_EQ(Bits(HalfToFloat(bits)), Bits(reference)) << h;
  }
}
#endif

}  // namespace
}  // namespace anchorserve::model
