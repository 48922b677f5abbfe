// The anchorserve configuration: one struct with a default for every setting, filled in layers
// defaults < YAML file (--config) < environment (ANCHORSERVE_...) < command-line flags, then
// validated as a whole. Every key, its default and its meaning live in one table in config.cc,
// so the YAML reader, the environment and flag names, --help and the effective-config log can
// never disagree about which keys exist (docs/CONFIG.md, deploy/config/anchorserve.yaml).
//
// Secrets never live in ServerConfig: it holds the *paths* of the bearer-token file and the TLS
// key, never their contents, which is what makes EffectiveConfigYaml safe to log. Error messages
// name the key and where its value came from ("file.yaml:3:17", "environment variable
// ANCHORSERVE_LISTEN", "flag --listen"); they never repeat values of auth.* and tls.* keys, and
// LoadAuthTokens never repeats a token.
//
// Thread-safety: everything here is a pure function of its arguments (plus the files it is told
// to read), callable from any thread, except ReadProcessEnvironment (see there).
#ifndef ANCHORSERVE_SERVER_CONFIG_H_
#define ANCHORSERVE_SERVER_CONFIG_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace anchorserve::server {

// KV pool of each worker. The pool gets max(budget_bytes, gpu_memory_fraction * free GPU memory).
struct KvConfig {
  int64_t budget_bytes = int64_t{256} << 20;  // 256 MiB
  double gpu_memory_fraction = 0.0;           // 0 = off; otherwise in (0, 1), cuda only
  int64_t block_tokens = 16;

  friend bool operator==(const KvConfig&, const KvConfig&) = default;
};

struct SchedulerConfig {
  int32_t max_waiting = 256;  // queue length; a full queue answers RESOURCE_EXHAUSTED at once
  int32_t max_running = 64;   // sequences decoded together
  int64_t max_batched_tokens = 2048;  // tokens per engine step (prefill chunks + decodes)
  int64_t max_prefill_chunk = 512;    // prompt tokens of one request per step

  friend bool operator==(const SchedulerConfig&, const SchedulerConfig&) = default;
};

struct LimitsConfig {
  int64_t max_prompt_tokens = 8192;
  int32_t max_new_tokens = 4096;
  int32_t max_message_bytes = 64 << 20;  // gRPC max receive and send message size
  int32_t max_sessions_per_tenant = 10'000;

  friend bool operator==(const LimitsConfig&, const LimitsConfig&) = default;
};

struct SessionsConfig {
  std::string disk_dir;                       // empty = no disk tier
  int64_t host_max_bytes = int64_t{1} << 30;  // 0 turns the host tier off
  int64_t disk_max_bytes = int64_t{16} << 30;
  absl::Duration idle_ttl = absl::Hours(24);                     // InfiniteDuration() = never
  absl::Duration idle_offload_after = absl::InfiniteDuration();  // device -> host; never

  friend bool operator==(const SessionsConfig&, const SessionsConfig&) = default;
};

// What a request gets when it leaves the field unset.
struct DefaultsConfig {
  enum class Mode { kAnchor, kFull };
  enum class PositionPolicy { kAbsolute, kCompact };
  // sentences: <AC> after each sentence of the prompt (the trainer's splitter); messages: after
  // each chat message; none: no anchors inserted; client: the client writes <AC> itself.
  enum class AnchorInsertion { kSentences, kMessages, kNone, kClient };

  Mode mode = Mode::kAnchor;
  PositionPolicy position_policy = PositionPolicy::kAbsolute;
  AnchorInsertion anchor_insertion = AnchorInsertion::kSentences;

  friend bool operator==(const DefaultsConfig&, const DefaultsConfig&) = default;
};

struct AuthConfig {
  bool enabled = false;
  std::string tokens_file;  // YAML map bearer token -> tenant id; read by LoadAuthTokens

  friend bool operator==(const AuthConfig&, const AuthConfig&) = default;
};

// Server TLS when cert_file and key_file are set; mutual TLS when client_ca_file is set too.
struct TlsConfig {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;

  friend bool operator==(const TlsConfig&, const TlsConfig&) = default;
};

struct GrpcConfig {
  bool reflection = true;
  absl::Duration keepalive_time = absl::Minutes(2);
  absl::Duration keepalive_timeout = absl::Seconds(20);

  friend bool operator==(const GrpcConfig&, const GrpcConfig&) = default;
};

struct LogConfig {
  bool prompts = false;  // never log prompt or generated text unless an operator opts in

  friend bool operator==(const LogConfig&, const LogConfig&) = default;
};

// The member initialisers are the defaults; deploy/config/anchorserve.yaml spells out the same
// values (a test holds them equal).
struct ServerConfig {
  enum class Device { kCpu, kCuda };
  enum class Dtype { kFloat32, kBFloat16 };

  std::string model;                            // model directory; required
  std::string listen = "0.0.0.0:50051";         // gRPC address (host:port, port 0 = any)
  std::string metrics_listen = "0.0.0.0:9464";  // Prometheus /metrics; empty = off
  Device device = Device::kCpu;
  Dtype dtype = Dtype::kFloat32;
  int32_t threads = 0;  // CPU intra-op threads; 0 = the library's default
  // Engine workers (scheduler/worker_pool.h): 0 = one per visible GPU on cuda, one on cpu;
  // on cuda at most one per visible GPU (checked at start, where the GPUs are known).
  int32_t workers = 0;
  KvConfig kv;
  SchedulerConfig scheduler;
  LimitsConfig limits;
  SessionsConfig sessions;
  DefaultsConfig defaults;
  AuthConfig auth;
  TlsConfig tls;
  GrpcConfig grpc;
  absl::Duration drain_timeout = absl::Seconds(30);
  LogConfig log;

  friend bool operator==(const ServerConfig&, const ServerConfig&) = default;
};

// The YAML spelling of an enum value ("cuda", "bfloat16", "anchor", "compact", "sentences");
// the same words model::ParseDevice / ParsePrecision / ParseAttentionMode / ParsePositionPolicy
// accept, so the server can hand them on.
absl::string_view ConfigValueName(ServerConfig::Device value);
absl::string_view ConfigValueName(ServerConfig::Dtype value);
absl::string_view ConfigValueName(DefaultsConfig::Mode value);
absl::string_view ConfigValueName(DefaultsConfig::PositionPolicy value);
absl::string_view ConfigValueName(DefaultsConfig::AnchorInsertion value);

// One configuration key, for --help, docs and tests.
struct ConfigKeyInfo {
  std::string key;            // dotted YAML path: "kv.budget_bytes"
  std::string flag;           // "--kv.budget_bytes"
  std::string env_var;        // "ANCHORSERVE_KV_BUDGET_BYTES"
  std::string value_syntax;   // "<bytes>", "<duration>", "cpu|cuda", ...
  std::string default_value;  // as EffectiveConfigYaml writes it, unquoted
  std::string description;
};

// Every key, in the order of the default config file. Never empty; keys and env vars unique.
const std::vector<ConfigKeyInfo>& ConfigKeys();

// Where each key's final value came from, for messages: dotted key -> "path.yaml:3:17",
// "environment variable ANCHORSERVE_X" or "flag --x". A key that is absent kept its default.
using ConfigSources = std::map<std::string, std::string>;

// Only the variables that start with "ANCHORSERVE_" matter; others are ignored.
using Environment = std::map<std::string, std::string>;

// The ANCHORSERVE_* variables of this process. Reads `environ`: call it at start-up, before
// threads that might setenv() exist.
Environment ReadProcessEnvironment();

// A parsed command line (flag names checked, values not yet: ApplyCommandLine parses them).
struct CommandLine {
  struct Setting {
    std::string key;     // dotted key
    std::string value;   // raw text
    std::string source;  // "flag --key"
  };
  bool help = false;                       // --help or -h: print ConfigHelpText, exit 0
  std::optional<std::string> config_file;  // --config; wins over ANCHORSERVE_CONFIG
  std::vector<Setting> settings;           // in command-line order; a later one wins
};

// Parses the arguments after the program name. Forms: --key=value, --key value, and for boolean
// keys --key (true) or --key=false (a boolean never consumes the next argument). Errors
// (InvalidArgument, naming the argument): an unknown flag, a missing value, a positional
// argument. Values are parsed later, by ApplyCommandLine.
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args);
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv);  // skips argv[0]

// Usage: every flag with its env var, default and one-line description (for --help).
std::string ConfigHelpText();

// Layers. Each parses and assigns the keys its input sets, recording them in `sources` (may be
// null); on error `config` may hold some of the layer's values. Errors are InvalidArgument
// naming the source and the dotted key: "f.yaml:4:3: unknown key 'kv.budget'", "environment
// variable ANCHORSERVE_THREADS: threads: expected an integer, got 'many'".
//
// YAML: a map of maps mirroring the dotted keys; an empty file sets nothing. Unknown and
// duplicate keys, values of the wrong type (a map where a value goes, text where a number goes)
// and YAML syntax errors are refused with file:line:column. For string keys, a null value
// (`disk_dir:`) means "". `file_name` only labels messages.
absl::Status ApplyYamlText(absl::string_view yaml_text, absl::string_view file_name,
                           ServerConfig* config, ConfigSources* sources);
// As ApplyYamlText on the file's content. NotFound when the file does not exist; other I/O
// errors name the path.
absl::Status ApplyYamlFile(const std::string& path, ServerConfig* config, ConfigSources* sources);
// ANCHORSERVE_<KEY> with the key upper-cased and dots as underscores (ANCHORSERVE_KV_BUDGET_BYTES);
// ANCHORSERVE_CONFIG (the config file) is read by LoadServerConfig and skipped here. Any other
// ANCHORSERVE_ variable is refused, naming it.
absl::Status ApplyEnvironment(const Environment& env, ServerConfig* config, ConfigSources* sources);
absl::Status ApplyCommandLine(const CommandLine& command_line, ServerConfig* config,
                              ConfigSources* sources);

// Checks the merged configuration: model and listen set, addresses host:port, sizes and counts
// positive (threads and workers may be 0: automatic), kv.gpu_memory_fraction 0 or in (0, 1) and only with device cuda, prefill chunk within
// the step budget, durations non-negative (keepalives positive and finite), TLS cert and key both
// or neither (client CA only with them), auth.enabled only with a tokens file. InvalidArgument
// listing every problem, each with its key and, when `sources` knows it, where the value came
// from. Does not touch the files the config names.
absl::Status ValidateServerConfig(const ServerConfig& config,
                                  const ConfigSources* sources = nullptr);

// The whole pipeline: defaults, then the YAML file named by --config (or ANCHORSERVE_CONFIG; none
// = no file; a named file that is missing is NotFound), then `env`, then the flags, then
// ValidateServerConfig. `command_line.help` is ignored: the caller prints ConfigHelpText first.
absl::StatusOr<ServerConfig> LoadServerConfig(const CommandLine& command_line,
                                              const Environment& env);

// The configuration as YAML, every key in ConfigKeys() order, for the start-up log. Safe to log:
// it holds file paths, never secrets. ApplyYamlText of the result reproduces `config`.
std::string EffectiveConfigYaml(const ServerConfig& config);

// Bearer tokens: a YAML map "<token>": "<tenant id>". Tokens: non-empty, printable ASCII without
// spaces, unique. Tenant ids: 1-128 characters of [A-Za-z0-9._:@-]. At least one entry.
// Errors (InvalidArgument; NotFound for a missing file) name the file and line and never contain
// a token: the file is a secret.
absl::StatusOr<std::map<std::string, std::string>> ParseAuthTokens(absl::string_view yaml_text,
                                                                   absl::string_view file_name);
absl::StatusOr<std::map<std::string, std::string>> LoadAuthTokens(const std::string& path);

}  // namespace anchorserve::server

#endif  // ANCHORSERVE_SERVER_CONFIG_H_
