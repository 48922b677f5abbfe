// anchor-train: make an AnLLM from text. Subcommands so far:
//
//   anchor-train tokenizer --input FILE[,FILE...] --out DIR [--vocab-size 8000]
//   anchor-train prepare   --input FILE[,FILE...] --tokenizer DIR --out DIR
//                          [--anchors ac|ep|none] [--shard-tokens N] [--max-documents N]
//
// Bad arguments: one line on stderr, exit 2. Failures: one line, exit 1.
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "model/tokenizer_trainer.h"
#include "train/prepare.h"

namespace {

struct Args {
  std::map<std::string, std::string> values;
  std::string error;
};

Args Parse(int argc, char** argv, const std::set<std::string>& known) {
  Args args;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) return {{}, "unexpected argument \"" + a + "\""};
    std::string name = a.substr(2), value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return {{}, "--" + name + " needs a value"};
    }
    if (!known.count(name)) return {{}, "unknown flag --" + name};
    args.values[name] = value;
  }
  return args;
}

int Usage(const std::string& message) {
  std::fprintf(stderr, "anchor-train: %s (usage: anchor-train tokenizer|prepare ...)\n",
               message.c_str());
  return 2;
}

int64_t Int(const Args& a, const std::string& k, int64_t fallback, bool* ok) {
  auto it = a.values.find(k);
  if (it == a.values.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v) || v < 0) *ok = false;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage("missing subcommand");
  const std::string command = argv[1];
  if (command == "tokenizer") {
    Args a = Parse(argc, argv, {"input", "out", "vocab-size"});
    if (!a.error.empty()) return Usage(a.error);
    if (!a.values.count("input") || !a.values.count("out")) return Usage("--input and --out are required");
    bool ok = true;
    anchorserve::model::TokenizerTrainOptions o;
    o.input_files = absl::StrSplit(a.values["input"], ',', absl::SkipEmpty());
    o.output_dir = a.values["out"];
    o.vocab_size = static_cast<int>(Int(a, "vocab-size", 8000, &ok));
    if (!ok) return Usage("--vocab-size must be a positive integer");
    if (auto s = anchorserve::model::TrainTokenizer(o); !s.ok()) {
      std::fprintf(stderr, "anchor-train: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    std::fprintf(stderr, "anchor-train: wrote %s/tokenizer.model\n", o.output_dir.c_str());
    return 0;
  }
  if (command == "prepare") {
    Args a = Parse(argc, argv, {"input", "tokenizer", "out", "anchors", "shard-tokens", "max-documents"});
    if (!a.error.empty()) return Usage(a.error);
    for (const char* k : {"input", "tokenizer", "out"}) {
      if (!a.values.count(k)) return Usage(std::string("--") + k + " is required");
    }
    bool ok = true;
    anchorserve::train::PrepareOptions o;
    o.input_files = absl::StrSplit(a.values["input"], ',', absl::SkipEmpty());
    o.tokenizer_dir = a.values["tokenizer"];
    o.output_dir = a.values["out"];
    if (a.values.count("anchors")) o.anchors = a.values["anchors"];
    if (o.anchors != "ac" && o.anchors != "ep" && o.anchors != "none") {
      return Usage("--anchors must be ac, ep or none");
    }
    o.shard_tokens = Int(a, "shard-tokens", o.shard_tokens, &ok);
    o.max_documents = Int(a, "max-documents", 0, &ok);
    if (!ok || o.shard_tokens == 0) return Usage("--shard-tokens/--max-documents must be positive integers");
    const auto start = std::chrono::steady_clock::now();
    o.progress = [&](int64_t bytes, int64_t tokens) {
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "\ranchor-train prepare: %.1f MB read, %lld tokens, %.0f tokens/s   ",
                   bytes / 1e6, static_cast<long long>(tokens), tokens / std::max(s, 1e-9));
    };
    auto result = anchorserve::train::PrepareCorpus(o);
    std::fprintf(stderr, "\n");
    if (!result.ok()) {
      std::fprintf(stderr, "anchor-train: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    std::printf("{\"documents\": %lld, \"sentences\": %lld, \"tokens\": %lld, \"anchors\": %lld, "
                "\"shards\": %lld}\n",
                static_cast<long long>(result->documents), static_cast<long long>(result->sentences),
                static_cast<long long>(result->tokens), static_cast<long long>(result->anchors),
                static_cast<long long>(result->shards));
    return 0;
  }
  return Usage("unknown subcommand \"" + command + "\"");
}
