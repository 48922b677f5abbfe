// Writes the seed corpora of fuzz/corpus/ (fuzz/README.md): valid examples made with the real
// encoders, so the seeds follow the formats when they change, plus a few edge cases.
//
//   build-fuzz/bin/fuzz_seed_writer fuzz/corpus
//
// Overwrites the files it names and leaves any others (seeds added by hand, regression inputs)
// alone. Deterministic: the same sources write the same bytes.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "anchorserve/v1/anchorserve.pb.h"
#include "cache/session_file.h"
#include "cache/session_snapshot.h"
#include "model/safetensors.h"

namespace anchorserve::fuzz {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::anchorserve::v1;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class Corpus {
 public:
  explicit Corpus(fs::path root) : root_(std::move(root)) {}

  void Write(const std::string& target, const std::string& name, const std::string& bytes) {
    const fs::path dir = root_ / target;
    fs::create_directories(dir);
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", (dir / name).c_str());
      std::exit(1);
    }
    ++written_;
  }
  int written() const { return written_; }

 private:
  fs::path root_;
  int written_ = 0;
};

// request_validation_fuzzer: selector byte (type in bits 0-2, default insertion in 3-4), then
// the message.
std::string Request(int type, int insertion, const google::protobuf::Message& message) {
  return std::string(1, static_cast<char>(type | (insertion << 3))) + message.SerializeAsString();
}

cache::SessionSnapshot Snapshot(const std::string& dtype, int entries) {
  cache::SessionSnapshot s;
  s.model_fingerprint = "llama-4x128-default";
  s.num_layers = 2;
  s.num_kv_heads = 1;
  s.head_dim = 2;
  s.dtype = dtype;
  s.mode = "anchor";
  s.position_policy = "absolute";
  s.next_position = 9;
  s.accounting = {entries, 9, 1, 6, 2 * 2 * 1 * 2 * (dtype == "float32" ? 4 : 2)};
  for (int i = 0; i < entries; ++i) {
    s.entries.push_back(
        {4 + i, 3 * i, i == 0 ? cache::EntryKind::kAnchor : cache::EntryKind::kSentence});
  }
  s.kv.resize(static_cast<size_t>(s.ExpectedKvBytes()));
  for (size_t i = 0; i < s.kv.size(); ++i) s.kv[i] = static_cast<uint8_t>(i * 37);
  return s;
}

void WriteRequestSeeds(Corpus& corpus) {
  const std::string t = "request_validation_fuzzer";
  v1::GenerateRequest text;
  text.set_prompt("The cat sat on the mat. It was warm! Was it? Dr. Smith said \"yes.\"");
  text.set_max_tokens(16);
  text.set_temperature(0.7f);
  text.set_top_k(40);
  text.set_top_p(0.9f);
  text.set_seed(42);
  text.add_stop("\n\n");
  corpus.Write(t, "generate_prompt", Request(0, 0, text));

  v1::GenerateRequest messages;
  messages.add_messages("You are terse.");
  messages.add_messages("Name three colours.");
  messages.set_session_id("chat-1");
  messages.set_max_tokens(8);
  messages.set_anchor_insertion(v1::ANCHOR_INSERTION_MESSAGES);
  messages.set_mode(v1::ATTENTION_MODE_FULL);
  messages.set_position_policy(v1::POSITION_POLICY_COMPACT);
  messages.set_min_p(0.05f);
  messages.set_repetition_penalty(1.1f);
  corpus.Write(t, "generate_messages", Request(1, 1, messages));

  v1::GenerateRequest ids;
  for (int id : {1, 300, 4, 17, 4}) ids.add_prompt_token_ids(id);
  ids.set_max_tokens(4);
  auto* span = ids.add_kept_full_spans();
  span->set_begin(0);
  span->set_end(2);
  ids.add_stop_token_ids(2);
  ids.set_include_anchor_tokens(true);
  ids.set_ignore_eos(true);
  ids.set_priority(3);
  corpus.Write(t, "generate_token_ids", Request(2, 2, ids));

  v1::GenerateRequest client;  // the client writes <AC> itself; unicode and byte pieces
  client.set_prompt(
      "Grüße aus Köln.<AC> 東京に行きました。<AC> \t emoji 🙂 ▁ [PAD] </s>");
  client.set_anchor_insertion(v1::ANCHOR_INSERTION_CLIENT);
  client.set_add_bos(true);
  client.set_max_tokens(1);
  corpus.Write(t, "generate_client_anchors", Request(0, 3, client));

  v1::GenerateRequest bad;  // an unknown enum number and two inputs at once
  bad.set_prompt("x");
  bad.add_prompt_token_ids(1);
  bad.set_mode(static_cast<v1::AttentionMode>(7));
  corpus.Write(t, "generate_invalid", Request(0, 0, bad));

  v1::TokenizeRequest tokenize;
  tokenize.set_text("Hello world. How are you? Fine.");
  tokenize.set_add_bos(true);
  corpus.Write(t, "tokenize", Request(3, 0, tokenize));

  v1::CreateSessionRequest create;
  create.set_session_id("s-0123_abc.def");
  corpus.Write(t, "create_session", Request(4, 0, create));

  v1::ListSessionsRequest list;
  list.set_page_size(1000);
  list.set_page_token("s-0123");
  corpus.Write(t, "list_sessions", Request(5, 0, list));

  v1::ImportSessionRequest import;
  import.set_session_id("imported");
  import.set_state(cache::EncodeSnapshot(Snapshot("float32", 3)));
  corpus.Write(t, "import_session", Request(6, 0, import));
}

void WriteSessionSeeds(Corpus& corpus) {
  const std::string t = "session_decoder_fuzzer";
  const std::string f32 = cache::EncodeSnapshot(Snapshot("float32", 3));
  const std::string bf16 = cache::EncodeSnapshot(Snapshot("bfloat16", 1));
  corpus.Write(t, "snapshot_float32", f32);
  corpus.Write(t, "snapshot_bfloat16", bf16);
  corpus.Write(t, "snapshot_empty", cache::EncodeSnapshot(Snapshot("float32", 0)));

  cache::SessionFileHeader header;
  header.tenant = "default";
  header.session_id = "chat-1";
  header.model_fingerprint = "llama-4x128-default";
  header.created_us = 1'795'000'000'000'000;
  header.last_used_us = 1'795'000'060'000'000;
  header.turns = 2;
  header.accounting = {3, 9, 1, 6, 16};
  header.has_state = true;
  corpus.Write(t, "session_file", cache::EncodeSessionFile(header, f32));
  header.has_state = false;
  header.turns = 0;
  header.accounting = {};
  corpus.Write(t, "session_file_empty", cache::EncodeSessionFile(header, ""));
}

void WriteSafetensorsSeeds(Corpus& corpus, const fs::path& scratch) {
  const std::string t = "safetensors_fuzzer";
  const std::string q_proj = "model.layers.0.self_attn.q_proj.weight";
  model::TensorData weight{q_proj, model::DType::kF32, {2, 3}, std::vector<uint8_t>(24, 0x3f)};
  model::TensorData norm{"model.norm.weight", model::DType::kBF16, {3}, {0x80, 0x3f, 0, 0, 1, 2}};
  model::TensorData scalar{"step", model::DType::kI64, {}, std::vector<uint8_t>(8, 1)};
  model::TensorData empty{"empty", model::DType::kU8, {0, 4}, {}};
  const fs::path path = scratch / "seed.safetensors";
  const absl::Status written =
      model::WriteSafetensors(path.string(), {&weight, &norm, &scalar, &empty}, {{"format", "pt"}});
  if (!written.ok()) {
    std::fprintf(stderr, "%s\n", written.ToString().c_str());
    std::exit(1);
  }
  const std::string file = ReadFile(path);
  corpus.Write(t, "file", file);
  // The same header alone: the fuzzer's second reading makes up prefix and data.
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(file[i]);
  corpus.Write(t, "header_only", file.substr(8, header_len));
  corpus.Write(t, "header_edge_cases",
               R"({"__metadata__":null,"a":{"dtype":"F16","shape":[1,2],"data_offsets":[0,4]},)"
               R"("b":{"dtype":"BOOL","shape":[],"data_offsets":[4,5]},)"
               R"("big":{"dtype":"F64","shape":[9223372036854775807,2],"data_offsets":[5,5]}})");
  fs::remove(path);
}

void WriteTokenizerSeeds(Corpus& corpus) {
  const std::string t = "tokenizer_fuzzer";
  // First byte: bit 0 add_bos, bit 1 keep special tokens, bit 2 hide added tokens.
  corpus.Write(t, "sentences",
               std::string("\x01") + "The cat sat on the mat. It was warm!<AC> Was it?");
  corpus.Write(t, "whitespace", std::string("\x00", 1) + "  leading\tand\n\ntrailing   <AC>\n ");
  corpus.Write(t, "unicode", std::string("\x02") + "Grüße 東京 🙂 ▁▁ é");
  corpus.Write(t, "invalid_utf8",
               std::string("\x04") + "ab\xC3\x28\xE2\x82\xF0\x9F\x98\xFF\xFE cd");
  corpus.Write(t, "numbers",
               std::string("\x00", 1) + "In 2024, 3.14159 and 1,000,000 (U.S.) </s> <s> [PAD]");
  std::string ids = "\x06";  // ids: BOS, pieces, byte pieces, <AC>, out of range
  for (int32_t id : {1, 4, 3, 2, 0, 100, 500, 1023, 1024, -1, 7, 8, 260}) {
    for (int i = 0; i < 4; ++i) {
      ids.push_back(static_cast<char>((static_cast<uint32_t>(id) >> (8 * i)) & 0xff));
    }
  }
  corpus.Write(t, "ids", ids);
}

void WriteConfigSeeds(Corpus& corpus, const fs::path& source_dir) {
  const std::string t = "config_fuzzer";
  corpus.Write(t, "anchorserve.yaml", ReadFile(source_dir / "deploy/config/anchorserve.yaml"));
  corpus.Write(t, "small.yaml",
               "model: /models/anllm\nlisten: 127.0.0.1:0\nkv:\n  budget_bytes: 64MiB\n"
               "  gpu_memory_fraction: 0.5\nsessions:\n  disk_dir:\n  idle_ttl: 1h30m\n"
               "  idle_offload_after: never\ndefaults:\n  anchor_insertion: messages\n"
               "auth:\n  enabled: true\n  tokens_file: /etc/anchorserve/tokens.yaml\n");
  corpus.Write(t, "tokens.yaml",
               "# bearer token: tenant\n\"s3cr3t-token-1\": team-a\nabc.DEF_123: \"tenant@b:c\"\n");
  corpus.Write(t, "flags_and_env",
               "ANCHORSERVE_MODEL=/models/x\nANCHORSERVE_KV_BUDGET_BYTES=1GiB\n--threads=2\n"
               "--listen\n0.0.0.0:1\n--log.prompts\n--drain_timeout=45s\n--config=/dev/null\n");
  corpus.Write(t, "config.json", ReadFile(source_dir / "fuzz/data/default_model/config.json"));
  corpus.Write(t, "config_hf_tiny.json",
               ReadFile(source_dir / "tests/data/hf_tiny_gqa/config.json"));
  corpus.Write(t, "config_edge_cases.json",
               R"({"vocab_size":32002,"hidden_size":4096,"intermediate_size":11008,)"
               R"("num_hidden_layers":32,"num_attention_heads":32,"eos_token_id":[2,32001],)"
               R"("bos_token_id":null,"pad_token_id":null,"rope_theta":1e6,"rms_norm_eps":1e-300,)"
               R"("rope_scaling":{"type":"linear","factor":2.0}})");
}

}  // namespace
}  // namespace anchorserve::fuzz

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir, e.g. fuzz/corpus>\n", argv[0]);
    return 2;
  }
  const fs::path root(argv[1]);
  const fs::path source_dir = fs::path(ANCHORSERVE_SOURCE_DIR);
  anchorserve::fuzz::Corpus corpus(root);
  anchorserve::fuzz::WriteRequestSeeds(corpus);
  anchorserve::fuzz::WriteSessionSeeds(corpus);
  anchorserve::fuzz::WriteSafetensorsSeeds(corpus, fs::temp_directory_path());
  anchorserve::fuzz::WriteTokenizerSeeds(corpus);
  anchorserve::fuzz::WriteConfigSeeds(corpus, source_dir);
  std::printf("fuzz_seed_writer: %d seeds under %s\n", corpus.written(), root.c_str());
  return 0;
}
