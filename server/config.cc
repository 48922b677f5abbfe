#include "server/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <type_traits>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

extern char** environ;  // POSIX; not declared by any standard header

namespace anchorserve::server {
namespace {

constexpr absl::string_view kEnvPrefix = "ANCHORSERVE_";
constexpr absl::string_view kConfigEnvVar = "ANCHORSERVE_CONFIG";
// Config and token files are small; a cap keeps a mistaken path (/dev/zero, a model file) from
// being read whole.
constexpr std::uintmax_t kMaxFileBytes = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Enum spellings.

template <typename E>
struct EnumSpelling {
  absl::string_view name;
  E value;
};

constexpr EnumSpelling<ServerConfig::Device> kDevices[] = {{"cpu", ServerConfig::Device::kCpu},
                                                           {"cuda", ServerConfig::Device::kCuda}};
constexpr EnumSpelling<ServerConfig::Dtype> kDtypes[] = {
    {"float32", ServerConfig::Dtype::kFloat32}, {"bfloat16", ServerConfig::Dtype::kBFloat16}};
constexpr EnumSpelling<DefaultsConfig::Mode> kModes[] = {{"anchor", DefaultsConfig::Mode::kAnchor},
                                                         {"full", DefaultsConfig::Mode::kFull}};
constexpr EnumSpelling<DefaultsConfig::PositionPolicy> kPositionPolicies[] = {
    {"absolute", DefaultsConfig::PositionPolicy::kAbsolute},
    {"compact", DefaultsConfig::PositionPolicy::kCompact}};
constexpr EnumSpelling<DefaultsConfig::AnchorInsertion> kAnchorInsertions[] = {
    {"sentences", DefaultsConfig::AnchorInsertion::kSentences},
    {"messages", DefaultsConfig::AnchorInsertion::kMessages},
    {"none", DefaultsConfig::AnchorInsertion::kNone},
    {"client", DefaultsConfig::AnchorInsertion::kClient}};

template <typename E, size_t N>
absl::string_view SpellingOf(const EnumSpelling<E> (&table)[N], E value) {
  for (const auto& entry : table) {
    if (entry.value == value) return entry.name;
  }
  return "invalid";
}

template <typename E, size_t N>
std::string Alternatives(const EnumSpelling<E> (&table)[N]) {
  std::vector<absl::string_view> names;
  for (const auto& entry : table) names.push_back(entry.name);
  return absl::StrJoin(names, "|");
}

// ---------------------------------------------------------------------------------------------
// Scalar parsing and formatting. Parsers return the problem only; callers add where and which key.

// `, got 'text'`, or nothing for values that must not be repeated (auth.*, tls.*).
std::string Got(absl::string_view text, bool sensitive) {
  if (sensitive) return "";
  constexpr size_t kMaxShown = 80;
  std::string shown = absl::CHexEscape(text.substr(0, kMaxShown));
  if (text.size() > kMaxShown) absl::StrAppend(&shown, "...");
  return absl::StrCat(", got '", shown, "'");
}

absl::StatusOr<int64_t> ParseInteger(absl::string_view text, bool byte_suffixes, bool sensitive) {
  absl::string_view digits = absl::StripAsciiWhitespace(text);
  int shift = 0;
  if (byte_suffixes) {
    static constexpr std::pair<absl::string_view, int> kSuffixes[] = {
        {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}};
    for (const auto& [suffix, suffix_shift] : kSuffixes) {
      if (absl::ConsumeSuffix(&digits, suffix)) {
        digits = absl::StripTrailingAsciiWhitespace(digits);
        shift = suffix_shift;
        break;
      }
    }
  }
  int64_t value = 0;
  const bool all_digits =
      !digits.empty() && absl::c_all_of(digits.substr(digits[0] == '-'), absl::ascii_isdigit);
  if (!all_digits || !absl::SimpleAtoi(digits, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        byte_suffixes ? "expected a byte count (an integer, optionally with KiB, MiB, GiB or TiB)"
                      : "expected an integer",
        Got(text, sensitive)));
  }
  const int64_t limit = std::numeric_limits<int64_t>::max() >> shift;
  if (value > limit || value < -limit) {
    return absl::InvalidArgumentError(absl::StrCat("out of range", Got(text, sensitive)));
  }
  return value * (int64_t{1} << shift);
}

absl::StatusOr<double> ParseReal(absl::string_view text, bool sensitive) {
  double value = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(text), &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("expected a number", Got(text, sensitive)));
  }
  return value;
}

absl::StatusOr<bool> ParseBoolean(absl::string_view text, bool sensitive) {
  const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") return true;
  if (lower == "false" || lower == "no" || lower == "off" || lower == "0") return false;
  return absl::InvalidArgumentError(absl::StrCat("expected true or false", Got(text, sensitive)));
}

// `zero_is_never`: "0" (any zero duration), "never" and "inf" mean InfiniteDuration().
absl::StatusOr<absl::Duration> ParseConfigDuration(absl::string_view text, bool zero_is_never,
                                                   bool sensitive) {
  const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  if (zero_is_never && trimmed == "never") return absl::InfiniteDuration();
  absl::Duration value;
  if (!absl::ParseDuration(trimmed, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("expected a duration such as 30s, 5m, 1h30m",
                                                   zero_is_never ? " or 0 (never)" : "",
                                                   Got(text, sensitive)));
  }
  if (zero_is_never && value == absl::ZeroDuration()) return absl::InfiniteDuration();
  return value;
}

std::string FormatConfigDuration(absl::Duration value, bool zero_is_never) {
  if (value == absl::InfiniteDuration()) return zero_is_never ? "never" : "inf";
  return absl::FormatDuration(value);
}

// 268435456 -> "256MiB": the largest binary unit that divides the value exactly.
std::string FormatByteCount(int64_t value) {
  static constexpr std::pair<absl::string_view, int> kUnits[] = {
      {"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}};
  for (const auto& [unit, shift] : kUnits) {
    const int64_t size = int64_t{1} << shift;
    if (value != 0 && value % size == 0) return absl::StrCat(value / size, unit);
  }
  return absl::StrCat(value);
}

// The shortest text that reads back as exactly `value`.
std::string FormatReal(double value) {
  for (int precision = 1; precision < 17; ++precision) {
    std::string text = absl::StrFormat("%.*g", precision, value);
    double back = 0;
    if (absl::SimpleAtod(text, &back) && back == value) return text;
  }
  return absl::StrFormat("%.17g", value);
}

// A YAML double-quoted scalar.
std::string QuoteYaml(absl::string_view text) {
  std::string out = "\"";
  for (const char ch : text) {
    const auto byte = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out.push_back('\\');
      out.push_back(ch);
    } else if (byte < 0x20 || byte == 0x7f) {
      absl::StrAppendFormat(&out, "\\x%02x", byte);
    } else {
      out.push_back(ch);
    }
  }
  out.push_back('"');
  return out;
}

// ---------------------------------------------------------------------------------------------
// The key table.

struct Field {
  std::string key;      // "kv.budget_bytes"
  std::string section;  // "kv"; empty for top-level keys
  std::string leaf;     // "budget_bytes"
  std::string env_var;
  std::string value_syntax;
  std::string description;
  bool is_bool = false;
  bool is_string = false;  // YAML null reads as ""; written quoted
  bool sensitive = false;  // never repeat the value in a message
  // Parses `text` into the config; the error is the problem alone.
  std::function<absl::Status(absl::string_view text, ServerConfig& config)> set;
  // The value as text (unquoted); `set` of it restores the value.
  std::function<std::string(const ServerConfig& config)> get;
};

std::string EnvVarName(absl::string_view key) {
  std::string name = absl::StrCat(kEnvPrefix, key);
  for (char& ch : name) ch = ch == '.' ? '_' : absl::ascii_toupper(ch);
  return name;
}

Field NewField(absl::string_view key, absl::string_view value_syntax,
               absl::string_view description) {
  Field field;
  field.key = std::string(key);
  if (const size_t dot = key.find('.'); dot != absl::string_view::npos) {
    field.section = std::string(key.substr(0, dot));
    field.leaf = std::string(key.substr(dot + 1));
  } else {
    field.leaf = field.key;
  }
  field.env_var = EnvVarName(key);
  field.value_syntax = std::string(value_syntax);
  field.description = std::string(description);
  field.sensitive = field.section == "auth" || field.section == "tls";
  return field;
}

// `access` is a generic lambda `[](auto& c) -> auto& { return c.<member>; }`, so one accessor
// serves both the const getter and the setter.
template <typename Access>
Field StringField(Field field, Access access) {
  field.is_string = true;
  field.set = [access](absl::string_view text, ServerConfig& config) {
    access(config) = std::string(text);
    return absl::OkStatus();
  };
  field.get = [access](const ServerConfig& config) { return std::string(access(config)); };
  return field;
}

enum class IntegerUnit { kCount, kBytes };

template <typename Access>
Field IntegerField(Field field, Access access, IntegerUnit unit = IntegerUnit::kCount) {
  using T = std::remove_cvref_t<decltype(access(std::declval<ServerConfig&>()))>;
  const bool sensitive = field.sensitive;
  field.set = [access, unit, sensitive](absl::string_view text, ServerConfig& config) {
    ASSIGN_OR_RETURN(const int64_t value,
                     ParseInteger(text, unit == IntegerUnit::kBytes, sensitive));
    if (value < std::numeric_limits<T>::min() || value > std::numeric_limits<T>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("out of range [", std::numeric_limits<T>::min(), ", ",
                       std::numeric_limits<T>::max(), "]", Got(text, sensitive)));
    }
    access(config) = static_cast<T>(value);
    return absl::OkStatus();
  };
  field.get = [access, unit](const ServerConfig& config) {
    return unit == IntegerUnit::kBytes ? FormatByteCount(access(config))
                                       : absl::StrCat(access(config));
  };
  return field;
}

template <typename Access>
Field RealField(Field field, Access access) {
  const bool sensitive = field.sensitive;
  field.set = [access, sensitive](absl::string_view text, ServerConfig& config) {
    ASSIGN_OR_RETURN(access(config), ParseReal(text, sensitive));
    return absl::OkStatus();
  };
  field.get = [access](const ServerConfig& config) { return FormatReal(access(config)); };
  return field;
}

template <typename Access>
Field BooleanField(Field field, Access access) {
  field.is_bool = true;
  const bool sensitive = field.sensitive;
  field.set = [access, sensitive](absl::string_view text, ServerConfig& config) {
    ASSIGN_OR_RETURN(access(config), ParseBoolean(text, sensitive));
    return absl::OkStatus();
  };
  field.get = [access](const ServerConfig& config) {
    return std::string(access(config) ? "true" : "false");
  };
  return field;
}

enum class ZeroDuration { kIsZero, kIsNever };

template <typename Access>
Field DurationField(Field field, Access access, ZeroDuration zero = ZeroDuration::kIsZero) {
  const bool never = zero == ZeroDuration::kIsNever;
  const bool sensitive = field.sensitive;
  field.set = [access, never, sensitive](absl::string_view text, ServerConfig& config) {
    ASSIGN_OR_RETURN(access(config), ParseConfigDuration(text, never, sensitive));
    return absl::OkStatus();
  };
  field.get = [access, never](const ServerConfig& config) {
    return FormatConfigDuration(access(config), never);
  };
  return field;
}

template <typename E, size_t N, typename Access>
Field EnumField(Field field, const EnumSpelling<E> (&table)[N], Access access) {
  const bool sensitive = field.sensitive;
  field.set = [&table, access, sensitive](absl::string_view text, ServerConfig& config) {
    const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
    for (const auto& entry : table) {
      if (entry.name == trimmed) {
        access(config) = entry.value;
        return absl::OkStatus();
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("expected one of ", Alternatives(table), Got(text, sensitive)));
  };
  field.get = [&table, access](const ServerConfig& config) {
    return std::string(SpellingOf(table, access(config)));
  };
  return field;
}

#define CONFIG_MEMBER(path) \
  [](auto& c) -> auto& { return c.path; }

std::vector<Field> BuildFields() {
  std::vector<Field> f;
  // Top level.
  f.push_back(
      StringField(NewField("model", "<dir>",
                           "Model directory (config.json, weights, tokenizer.model). Required."),
                  CONFIG_MEMBER(model)));
  f.push_back(StringField(
      NewField("listen", "<host:port>",
               "gRPC address; port 0 picks a free port (logged at start). unix:<path> also works."),
      CONFIG_MEMBER(listen)));
  f.push_back(StringField(NewField("metrics_listen", "<host:port>",
                                   "Prometheus /metrics address; empty turns the endpoint off."),
                          CONFIG_MEMBER(metrics_listen)));
  f.push_back(
      EnumField(NewField("device", Alternatives(kDevices),
                         "Where the model runs; cuda needs a CUDA build and a visible GPU."),
                kDevices, CONFIG_MEMBER(device)));
  f.push_back(
      EnumField(NewField("dtype", Alternatives(kDtypes),
                         "Weight and KV precision; bfloat16 halves memory (use it on cuda)."),
                kDtypes, CONFIG_MEMBER(dtype)));
  f.push_back(IntegerField(
      NewField("threads", "<int>", "CPU intra-op threads; 0 = the library's default (all cores)."),
      CONFIG_MEMBER(threads)));
  f.push_back(IntegerField(
      NewField("workers", "<int>",
               "Engine workers, each with its own model copy and KV pool; 0 = one per visible "
               "GPU on cuda, one on cpu. Sessions stay on the worker that created them."),
      CONFIG_MEMBER(workers)));
  // kv
  f.push_back(IntegerField(
      NewField("kv.budget_bytes", "<bytes>",
               "KV pool size; with kv.gpu_memory_fraction the larger of the two wins."),
      CONFIG_MEMBER(kv.budget_bytes), IntegerUnit::kBytes));
  f.push_back(
      RealField(NewField("kv.gpu_memory_fraction", "<0..1>",
                         "cuda only: size the KV pool as this share of free GPU memory; 0 = off."),
                CONFIG_MEMBER(kv.gpu_memory_fraction)));
  f.push_back(IntegerField(
      NewField("kv.block_tokens", "<int>",
               "Tokens per KV block; smaller wastes less memory per sequence, larger is faster."),
      CONFIG_MEMBER(kv.block_tokens)));
  // scheduler
  f.push_back(IntegerField(
      NewField("scheduler.max_waiting", "<int>",
               "Queued requests; beyond it requests fail fast with RESOURCE_EXHAUSTED."),
      CONFIG_MEMBER(scheduler.max_waiting)));
  f.push_back(IntegerField(
      NewField("scheduler.max_running", "<int>", "Sequences decoded together in one batch."),
      CONFIG_MEMBER(scheduler.max_running)));
  f.push_back(IntegerField(
      NewField("scheduler.max_batched_tokens", "<int>",
               "Tokens per engine step (prefill chunks plus decodes); bounds step latency."),
      CONFIG_MEMBER(scheduler.max_batched_tokens)));
  f.push_back(IntegerField(
      NewField("scheduler.max_prefill_chunk", "<int>",
               "Prompt tokens of one request per step, so long prompts do not stall decodes."),
      CONFIG_MEMBER(scheduler.max_prefill_chunk)));
  // limits
  f.push_back(IntegerField(
      NewField("limits.max_prompt_tokens", "<int>",
               "Longest accepted prompt (one turn's new tokens); longer is OUT_OF_RANGE."),
      CONFIG_MEMBER(limits.max_prompt_tokens)));
  f.push_back(
      IntegerField(NewField("limits.max_new_tokens", "<int>",
                            "Largest max_tokens a request may ask for; more is OUT_OF_RANGE."),
                   CONFIG_MEMBER(limits.max_new_tokens)));
  f.push_back(IntegerField(
      NewField("limits.max_message_bytes", "<bytes>",
               "gRPC max receive and send message size; session export/import need the most."),
      CONFIG_MEMBER(limits.max_message_bytes), IntegerUnit::kBytes));
  f.push_back(IntegerField(NewField("limits.max_sessions_per_tenant", "<int>",
                                    "Sessions one tenant may hold; more is RESOURCE_EXHAUSTED."),
                           CONFIG_MEMBER(limits.max_sessions_per_tenant)));
  // sessions
  f.push_back(StringField(
      NewField("sessions.disk_dir", "<dir>",
               "Disk tier for idle sessions, kept across restarts; empty = no disk tier."),
      CONFIG_MEMBER(sessions.disk_dir)));
  f.push_back(
      IntegerField(NewField("sessions.host_max_bytes", "<bytes>",
                            "Host-RAM tier for sessions moved off the device; 0 turns it off."),
                   CONFIG_MEMBER(sessions.host_max_bytes), IntegerUnit::kBytes));
  f.push_back(IntegerField(
      NewField("sessions.disk_max_bytes", "<bytes>", "Disk tier capacity (with disk_dir)."),
      CONFIG_MEMBER(sessions.disk_max_bytes), IntegerUnit::kBytes));
  f.push_back(
      DurationField(NewField("sessions.idle_ttl", "<duration>",
                             "Delete a session idle this long; 0 or never = keep until deleted."),
                    CONFIG_MEMBER(sessions.idle_ttl), ZeroDuration::kIsNever));
  f.push_back(DurationField(
      NewField("sessions.idle_offload_after", "<duration>",
               "Move a session idle this long off the device; 0 or never = only under pressure."),
      CONFIG_MEMBER(sessions.idle_offload_after), ZeroDuration::kIsNever));
  // defaults
  f.push_back(EnumField(
      NewField("defaults.mode", Alternatives(kModes),
               "Attention mode of requests that leave it unset (full keeps every token)."),
      kModes, CONFIG_MEMBER(defaults.mode)));
  f.push_back(
      EnumField(NewField("defaults.position_policy", Alternatives(kPositionPolicies),
                         "RoPE positions after reduction: absolute (as trained) or compact."),
                kPositionPolicies, CONFIG_MEMBER(defaults.position_policy)));
  f.push_back(EnumField(NewField("defaults.anchor_insertion", Alternatives(kAnchorInsertions),
                                 "Where the server inserts <AC> into prompts of an AC model."),
                        kAnchorInsertions, CONFIG_MEMBER(defaults.anchor_insertion)));
  // auth
  f.push_back(BooleanField(
      NewField("auth.enabled", "<bool>",
               "Require 'authorization: Bearer <token>'; sessions become tenant-scoped."),
      CONFIG_MEMBER(auth.enabled)));
  f.push_back(StringField(
      NewField("auth.tokens_file", "<file>",
               "YAML map token -> tenant id (a secret: mount it, never inline tokens)."),
      CONFIG_MEMBER(auth.tokens_file)));
  // tls
  f.push_back(StringField(
      NewField("tls.cert_file", "<file>", "PEM server certificate chain; TLS when set with key."),
      CONFIG_MEMBER(tls.cert_file)));
  f.push_back(StringField(NewField("tls.key_file", "<file>", "PEM private key of cert_file."),
                          CONFIG_MEMBER(tls.key_file)));
  f.push_back(StringField(
      NewField("tls.client_ca_file", "<file>",
               "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."),
      CONFIG_MEMBER(tls.client_ca_file)));
  // grpc
  f.push_back(
      BooleanField(NewField("grpc.reflection", "<bool>",
                            "Serve gRPC server reflection (grpcurl and friends discover the API)."),
                   CONFIG_MEMBER(grpc.reflection)));
  f.push_back(DurationField(
      NewField("grpc.keepalive_time", "<duration>",
               "Ping idle connections this often, to find dead clients behind proxies."),
      CONFIG_MEMBER(grpc.keepalive_time)));
  f.push_back(DurationField(NewField("grpc.keepalive_timeout", "<duration>",
                                     "Close a connection whose ping is unanswered this long."),
                            CONFIG_MEMBER(grpc.keepalive_timeout)));
  // top level again
  f.push_back(DurationField(
      NewField("drain_timeout", "<duration>",
               "On SIGTERM: how long in-flight streams may finish before they are cancelled."),
      CONFIG_MEMBER(drain_timeout)));
  // log
  f.push_back(BooleanField(
      NewField("log.prompts", "<bool>",
               "Log prompt and generated text (debugging only: they are users' data)."),
      CONFIG_MEMBER(log.prompts)));
  return f;
}

#undef CONFIG_MEMBER

const std::vector<Field>& Fields() {
  static const std::vector<Field>* const kFields = new std::vector<Field>(BuildFields());
  return *kFields;
}

const Field* FindField(absl::string_view key) {
  for (const Field& field : Fields()) {
    if (field.key == key) return &field;
  }
  return nullptr;
}

const Field* FindFieldByEnvVar(absl::string_view name) {
  for (const Field& field : Fields()) {
    if (field.env_var == name) return &field;
  }
  return nullptr;
}

bool IsSection(absl::string_view name) {
  for (const Field& field : Fields()) {
    if (!field.section.empty() && field.section == name) return true;
  }
  return false;
}

std::string LeavesOf(absl::string_view section) {
  std::vector<std::string> leaves;
  for (const Field& field : Fields()) {
    if (field.section == section) leaves.push_back(field.leaf);
  }
  return absl::StrJoin(leaves, ", ");
}

std::string TopLevelNames() {
  std::vector<std::string> names;
  for (const Field& field : Fields()) {
    const std::string& name = field.section.empty() ? field.leaf : field.section;
    if (names.empty() || names.back() != name) names.push_back(name);
  }
  return absl::StrJoin(names, ", ");
}

// A key that is not ours is repeated in the message (as `shown`, its dotted path) only when
// `name` could be a misspelt key name: short, letters, '_' and '-'. Anything else (say a bearer
// token, when the tokens file is passed as --config by mistake) is not shown.
std::string ShownKeyName(absl::string_view shown, absl::string_view name) {
  const bool looks_like_key =
      !name.empty() && name.size() <= 32 && absl::c_all_of(name, [](char ch) {
        return absl::ascii_isalpha(ch) || ch == '_' || ch == '-';
      });
  if (looks_like_key) return absl::StrCat("'", shown, "'");
  return "(name not shown: it does not look like a configuration key)";
}

absl::Status SetField(const Field& field, absl::string_view text, absl::string_view where,
                      ServerConfig* config, ConfigSources* sources) {
  if (absl::Status status = field.set(text, *config); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", field.key, ": ", status.message()));
  }
  if (sources != nullptr) (*sources)[field.key] = std::string(where);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Files.

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (status.type() == std::filesystem::file_type::not_found) {
    return absl::NotFoundError(absl::StrCat(what, " '", path, "' does not exist"));
  }
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " '", path, "': cannot read: ", error.message()));
  }
  if (std::filesystem::is_directory(status)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' is a directory"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " '", path, "': cannot open: ", std::strerror(errno)));
  }
  std::string text;
  char buffer[8192];
  while (in.read(buffer, sizeof(buffer)) || in.gcount() > 0) {
    text.append(buffer, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxFileBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " '", path, "' is larger than ", kMaxFileBytes, " bytes"));
    }
  }
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(what, " '", path, "': read failed"));
  }
  return text;
}

std::string Location(absl::string_view file, const YAML::Mark& mark) {
  if (mark.is_null()) return std::string(file);
  return absl::StrCat(file, ":", mark.line + 1, ":", mark.column + 1);
}

absl::string_view NodeKind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "no value";
    case YAML::NodeType::Scalar:
      return "a value";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// Counts the documents of a YAML stream without building them, and stops where yaml-cpp 0.7
// would loop forever: after a top-level flow collection, a stray ',' ("[],", "{a: 1},") is
// never consumed, and the parser hands out one empty document after another, each starting at
// that same mark (jbeder/yaml-cpp#1040; YAML::LoadAll grows without bound until the process
// runs out of memory; found by fuzz/config_fuzzer.cc). A real document always consumes text, so
// a document starting where the previous one started is that loop.
class YamlDocumentCounter : public YAML::EventHandler {
 public:
  // Throws YAML::Exception as YAML::LoadAll would; `*stuck` is set to the mark where parsing
  // stopped advancing, if it did.
  static int Count(const std::string& text, std::optional<YAML::Mark>* stuck) {
    std::istringstream input(text);
    YAML::Parser parser(input);
    YamlDocumentCounter counter;
    int documents = 0;
    while (parser.HandleNextDocument(counter)) {
      if (counter.starts_ > 1 && counter.start_.pos <= counter.previous_start_.pos) {
        *stuck = counter.start_;
        break;
      }
      ++documents;
    }
    return documents;
  }

  void OnDocumentStart(const YAML::Mark& mark) override {
    previous_start_ = start_;
    start_ = mark;
    ++starts_;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  int starts_ = 0;
  YAML::Mark start_;
  YAML::Mark previous_start_;
};

// One YAML document (an empty text has none). `error_detail`: whether yaml-cpp's message may be
// repeated (not for the tokens file: it can quote a character of the text).
absl::StatusOr<YAML::Node> ParseYamlDocument(absl::string_view text, absl::string_view file,
                                             bool error_detail) {
  try {
    const std::string input(text);
    std::optional<YAML::Mark> stuck;
    const int documents = YamlDocumentCounter::Count(input, &stuck);
    if (stuck.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Location(file, *stuck), ": YAML syntax error",
                       error_detail ? ": unexpected text after the document" : ""));
    }
    if (documents > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": holds ", documents, " YAML documents ('---'); expected one"));
    }
    // The first document, exactly as LoadAll builds it (an empty text: a null node).
    return YAML::Load(input);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(Location(file, e.mark), ": YAML syntax error",
                                                   error_detail ? ": " : "",
                                                   error_detail ? e.msg : ""));
  }
}

class YamlConfigReader {
 public:
  YamlConfigReader(absl::string_view file, ServerConfig* config, ConfigSources* sources)
      : file_(file), config_(config), sources_(sources) {}

  absl::Status Read(const YAML::Node& root) {
    if (!root.IsDefined() || root.IsNull()) return absl::OkStatus();
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(Location(file_, root.Mark()),
                                                     ": expected a map of configuration keys, got ",
                                                     NodeKind(root)));
    }
    for (const auto& entry : root) {
      const YAML::Node& key = entry.first;
      const YAML::Node& value = entry.second;
      ASSIGN_OR_RETURN(const std::string name, KeyName(key));
      const std::string where = Location(file_, key.Mark());
      if (const Field* field = FindField(name); field != nullptr && field->section.empty()) {
        RETURN_IF_ERROR(Claim(name, key.Mark()));
        RETURN_IF_ERROR(ReadValue(*field, key, value));
      } else if (IsSection(name)) {
        RETURN_IF_ERROR(Claim(name, key.Mark()));
        RETURN_IF_ERROR(ReadSection(name, key, value));
      } else if (FindField(name) != nullptr) {
        const Field* dotted = FindField(name);
        return absl::InvalidArgumentError(absl::StrCat(where, ": write '", name, "' nested: '",
                                                       dotted->section, ":' then '  ", dotted->leaf,
                                                       ": ...'"));
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": unknown key ", ShownKeyName(name, name), " (known: ", TopLevelNames(), ")"));
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::string> KeyName(const YAML::Node& key) {
    if (!key.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(
          Location(file_, key.Mark()), ": a key must be a plain name, got ", NodeKind(key)));
    }
    return key.Scalar();
  }

  // Refuses a key seen before in this file.
  absl::Status Claim(const std::string& key, const YAML::Mark& mark) {
    const auto [it, inserted] = seen_.emplace(key, mark.line + 1);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(Location(file_, mark), ": duplicate key '",
                                                     key, "' (first at line ", it->second, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status ReadSection(const std::string& section, const YAML::Node& key,
                           const YAML::Node& value) {
    if (value.IsNull()) return absl::OkStatus();  // "kv:" with nothing under it
    if (!value.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(
          Location(file_, value.Mark().is_null() ? key.Mark() : value.Mark()), ": ", section,
          ": expected a map of ", LeavesOf(section), "; got ", NodeKind(value)));
    }
    for (const auto& entry : value) {
      ASSIGN_OR_RETURN(const std::string name, KeyName(entry.first));
      const std::string dotted = absl::StrCat(section, ".", name);
      const Field* field = FindField(dotted);
      if (field == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            Location(file_, entry.first.Mark()), ": unknown key ", ShownKeyName(dotted, name),
            " (known under '", section, "': ", LeavesOf(section), ")"));
      }
      RETURN_IF_ERROR(Claim(dotted, entry.first.Mark()));
      RETURN_IF_ERROR(ReadValue(*field, entry.first, entry.second));
    }
    return absl::OkStatus();
  }

  absl::Status ReadValue(const Field& field, const YAML::Node& key, const YAML::Node& value) {
    const YAML::Mark mark = value.Mark().is_null() ? key.Mark() : value.Mark();
    const std::string where = Location(file_, mark);
    if (value.IsNull() && field.is_string) {
      return SetField(field, "", where, config_, sources_);
    }
    if (!value.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": ", field.key, ": expected ", field.value_syntax, ", got ", NodeKind(value)));
    }
    return SetField(field, value.Scalar(), where, config_, sources_);
  }

  const std::string file_;
  ServerConfig* const config_;
  ConfigSources* const sources_;
  std::map<std::string, int> seen_;  // dotted key -> line of its first occurrence
};

// ---------------------------------------------------------------------------------------------
// Validation.

class Problems {
 public:
  explicit Problems(const ConfigSources* sources) : sources_(sources) {}

  void Add(absl::string_view key, absl::string_view problem) {
    std::string from = "default";
    if (sources_ != nullptr) {
      if (auto it = sources_->find(std::string(key)); it != sources_->end()) from = it->second;
    }
    problems_.push_back(absl::StrCat(key, " (from ", from, "): ", problem));
  }

  absl::Status ToStatus() const {
    if (problems_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("invalid configuration: ", absl::StrJoin(problems_, "; ")));
  }

 private:
  const ConfigSources* const sources_;
  std::vector<std::string> problems_;
};

// Empty when `address` is a usable listening address; otherwise what is wrong with it.
std::string AddressProblem(absl::string_view address, bool allow_unix) {
  if (allow_unix && absl::StartsWith(address, "unix:")) {
    return address.size() > 5 ? "" : "unix: needs a socket path";
  }
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::StrCat("expected host:port such as 0.0.0.0:50051, got '", address, "'");
  }
  const absl::string_view host = address.substr(0, colon);
  const absl::string_view port = address.substr(colon + 1);
  if (host.empty()) {
    return absl::StrCat("'", address, "' has no host (0.0.0.0 or [::] listens everywhere)");
  }
  const bool bracketed = absl::StartsWith(host, "[") && absl::EndsWith(host, "]");
  if (absl::StartsWith(host, "[") != absl::EndsWith(host, "]") ||
      (!bracketed && absl::StrContains(host, ':'))) {
    return absl::StrCat("'", address, "': an IPv6 host goes in brackets, as [::1]:50051");
  }
  int port_number = -1;
  if (port.empty() || port.size() > 5 || !absl::c_all_of(port, absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &port_number) || port_number > 65535) {
    return absl::StrCat("'", address, "': the port must be 0-65535");
  }
  return "";
}

int PortOf(absl::string_view address) {
  int port = 0;
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return 0;
  }
  return port;
}

void CheckPositive(Problems& problems, absl::string_view key, int64_t value) {
  if (value <= 0) problems.Add(key, absl::StrCat("must be positive, got ", value));
}

void CheckNotNegative(Problems& problems, absl::string_view key, int64_t value) {
  if (value < 0) problems.Add(key, absl::StrCat("must not be negative, got ", value));
}

// gRPC takes keepalive settings as int milliseconds.
void CheckKeepalive(Problems& problems, absl::string_view key, absl::Duration value) {
  if (value <= absl::ZeroDuration() || value > absl::Milliseconds(INT32_MAX)) {
    problems.Add(
        key, absl::StrCat("must be positive and at most 596h (gRPC takes int milliseconds), got ",
                          FormatConfigDuration(value, false)));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API.

absl::string_view ConfigValueName(ServerConfig::Device value) {
  return SpellingOf(kDevices, value);
}
absl::string_view ConfigValueName(ServerConfig::Dtype value) { return SpellingOf(kDtypes, value); }
absl::string_view ConfigValueName(DefaultsConfig::Mode value) { return SpellingOf(kModes, value); }
absl::string_view ConfigValueName(DefaultsConfig::PositionPolicy value) {
  return SpellingOf(kPositionPolicies, value);
}
absl::string_view ConfigValueName(DefaultsConfig::AnchorInsertion value) {
  return SpellingOf(kAnchorInsertions, value);
}

const std::vector<ConfigKeyInfo>& ConfigKeys() {
  static const std::vector<ConfigKeyInfo>* const kKeys = [] {
    auto* keys = new std::vector<ConfigKeyInfo>();
    const ServerConfig defaults;
    for (const Field& field : Fields()) {
      keys->push_back({field.key, absl::StrCat("--", field.key), field.env_var, field.value_syntax,
                       field.get(defaults), field.description});
    }
    return keys;
  }();
  return *kKeys;
}

Environment ReadProcessEnvironment() {
  Environment env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const absl::string_view text(*entry);
    if (!absl::StartsWith(text, kEnvPrefix)) continue;
    const size_t eq = text.find('=');
    if (eq == absl::string_view::npos) continue;
    env[std::string(text.substr(0, eq))] = std::string(text.substr(eq + 1));
  }
  return env;
}

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args) {
  CommandLine command_line;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      command_line.help = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--") || arg == "--") {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", arg,
          "': settings are flags, --key=value (booleans: --key or --key=false); see --help"));
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    const Field* field = FindField(name);
    const bool is_bool = field != nullptr && field->is_bool;
    if (field == nullptr && name != "config") {
      std::string hint;
      std::string underscored = name;
      for (char& ch : underscored) ch = ch == '-' ? '_' : ch;
      if (FindField(underscored) != nullptr || underscored == "config") {
        hint = absl::StrCat(" (did you mean --", underscored, "?)");
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, hint, "; --help lists every flag"));
    }
    if (!value.has_value()) {
      if (is_bool) {
        value = "true";
      } else if (i + 1 < args.size() && !absl::StartsWith(args[i + 1], "--")) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "flag --", name, " needs a value: --", name, "=",
            field != nullptr ? field->value_syntax : "<file>", " or --", name, " <value>"));
      }
    }
    if (field == nullptr) {
      command_line.config_file = *value;
    } else {
      command_line.settings.push_back({field->key, *value, absl::StrCat("flag --", field->key)});
    }
  }
  return command_line;
}

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return ParseCommandLine(args);
}

std::string ConfigHelpText() {
  std::string text =
      "Usage: anchorserve --model=<dir> [--config=<file>] [--<key>=<value> ...]\n"
      "\n"
      "Settings, lowest precedence first: built-in defaults < the YAML file named by --config\n"
      "(or ANCHORSERVE_CONFIG) < environment variables ANCHORSERVE_<KEY> (key upper-cased, dots\n"
      "as underscores) < flags. Flags: --key=value or --key value; booleans --key or\n"
      "--key=false. In YAML, dotted keys nest: kv.budget_bytes is 'kv:' then 'budget_bytes:'.\n"
      "Byte sizes take KiB/MiB/GiB/TiB; durations look like 30s, 5m, 1h30m.\n"
      "\n"
      "  --config=<file>  (env ANCHORSERVE_CONFIG)\n"
      "      YAML configuration file; deploy/config/anchorserve.yaml lists every key.\n"
      "  --help\n"
      "      Print this help and exit.\n";
  for (const ConfigKeyInfo& key : ConfigKeys()) {
    const Field* field = FindField(key.key);
    const std::string shown_default =
        field->is_string ? QuoteYaml(key.default_value) : key.default_value;
    absl::StrAppend(&text, "  ", key.flag, "=", key.value_syntax, "  (env ", key.env_var,
                    "; default ", shown_default, ")\n      ", key.description, "\n");
  }
  return text;
}

absl::Status ApplyYamlText(absl::string_view yaml_text, absl::string_view file_name,
                           ServerConfig* config, ConfigSources* sources) {
  ASSIGN_OR_RETURN(const YAML::Node root,
                   ParseYamlDocument(yaml_text, file_name, /*error_detail=*/true));
  try {
    return YamlConfigReader(file_name, config, sources).Read(root);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(Location(file_name, e.mark), ": cannot read the YAML: ", e.msg));
  }
}

absl::Status ApplyYamlFile(const std::string& path, ServerConfig* config, ConfigSources* sources) {
  ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(path, "config file"));
  return ApplyYamlText(text, path, config, sources);
}

absl::Status ApplyEnvironment(const Environment& env, ServerConfig* config,
                              ConfigSources* sources) {
  for (const auto& [name, value] : env) {
    if (!absl::StartsWith(name, kEnvPrefix) || name == kConfigEnvVar) continue;
    const Field* field = FindFieldByEnvVar(name);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown environment variable ", name,
          ": ANCHORSERVE_ variables are configuration keys (--help lists them); unset it"));
    }
    RETURN_IF_ERROR(
        SetField(*field, value, absl::StrCat("environment variable ", name), config, sources));
  }
  return absl::OkStatus();
}

absl::Status ApplyCommandLine(const CommandLine& command_line, ServerConfig* config,
                              ConfigSources* sources) {
  for (const CommandLine::Setting& setting : command_line.settings) {
    const Field* field = FindField(setting.key);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(setting.source, ": unknown key"));
    }
    RETURN_IF_ERROR(SetField(*field, setting.value, setting.source, config, sources));
  }
  return absl::OkStatus();
}

absl::Status ValidateServerConfig(const ServerConfig& config, const ConfigSources* sources) {
  Problems problems(sources);
  if (config.model.empty()) {
    problems.Add("model", "required: the model directory (--model, ANCHORSERVE_MODEL or model:)");
  }
  if (config.listen.empty()) {
    problems.Add("listen", "required: the gRPC address, such as 0.0.0.0:50051");
  } else if (std::string problem = AddressProblem(config.listen, true); !problem.empty()) {
    problems.Add("listen", problem);
  }
  if (!config.metrics_listen.empty()) {
    if (std::string problem = AddressProblem(config.metrics_listen, false); !problem.empty()) {
      problems.Add("metrics_listen", problem);
    } else if (const int port = PortOf(config.metrics_listen);
               port != 0 && port == PortOf(config.listen)) {
      problems.Add("metrics_listen", absl::StrCat("uses the gRPC port ", port, " of listen"));
    }
  }
  CheckNotNegative(problems, "threads", config.threads);
  CheckNotNegative(problems, "workers", config.workers);

  CheckPositive(problems, "kv.budget_bytes", config.kv.budget_bytes);
  const double fraction = config.kv.gpu_memory_fraction;
  if (!(fraction >= 0.0 && fraction < 1.0)) {
    problems.Add("kv.gpu_memory_fraction",
                 absl::StrCat("must be 0 (off) or in (0, 1), got ", FormatReal(fraction)));
  } else if (fraction > 0.0 && config.device != ServerConfig::Device::kCuda) {
    problems.Add("kv.gpu_memory_fraction",
                 "applies to device cuda only; on cpu size the pool with kv.budget_bytes");
  }
  CheckPositive(problems, "kv.block_tokens", config.kv.block_tokens);

  CheckPositive(problems, "scheduler.max_waiting", config.scheduler.max_waiting);
  CheckPositive(problems, "scheduler.max_running", config.scheduler.max_running);
  CheckPositive(problems, "scheduler.max_batched_tokens", config.scheduler.max_batched_tokens);
  CheckPositive(problems, "scheduler.max_prefill_chunk", config.scheduler.max_prefill_chunk);
  if (config.scheduler.max_prefill_chunk > config.scheduler.max_batched_tokens &&
      config.scheduler.max_batched_tokens > 0) {
    problems.Add(
        "scheduler.max_prefill_chunk",
        absl::StrCat("must not exceed scheduler.max_batched_tokens (",
                     config.scheduler.max_batched_tokens, "): a chunk must fit in one step"));
  }

  CheckPositive(problems, "limits.max_prompt_tokens", config.limits.max_prompt_tokens);
  CheckPositive(problems, "limits.max_new_tokens", config.limits.max_new_tokens);
  CheckPositive(problems, "limits.max_message_bytes", config.limits.max_message_bytes);
  CheckPositive(problems, "limits.max_sessions_per_tenant", config.limits.max_sessions_per_tenant);

  CheckNotNegative(problems, "sessions.host_max_bytes", config.sessions.host_max_bytes);
  CheckNotNegative(problems, "sessions.disk_max_bytes", config.sessions.disk_max_bytes);
  if (!config.sessions.disk_dir.empty() && config.sessions.disk_max_bytes == 0) {
    problems.Add("sessions.disk_max_bytes",
                 "is 0 while sessions.disk_dir is set; give the disk tier room or unset disk_dir");
  }
  for (const auto& [key, value] :
       {std::pair<absl::string_view, absl::Duration>{"sessions.idle_ttl", config.sessions.idle_ttl},
        {"sessions.idle_offload_after", config.sessions.idle_offload_after}}) {
    if (value < absl::ZeroDuration()) {
      problems.Add(key, absl::StrCat("must not be negative, got ", absl::FormatDuration(value)));
    }
  }

  if (config.auth.enabled && config.auth.tokens_file.empty()) {
    problems.Add("auth.tokens_file", "required when auth.enabled is true");
  }
  if (config.tls.cert_file.empty() != config.tls.key_file.empty()) {
    problems.Add(config.tls.cert_file.empty() ? "tls.cert_file" : "tls.key_file",
                 "tls.cert_file and tls.key_file go together: set both or neither");
  }
  if (!config.tls.client_ca_file.empty() && config.tls.cert_file.empty()) {
    problems.Add("tls.client_ca_file",
                 "mutual TLS needs server TLS too: set tls.cert_file and tls.key_file");
  }

  CheckKeepalive(problems, "grpc.keepalive_time", config.grpc.keepalive_time);
  CheckKeepalive(problems, "grpc.keepalive_timeout", config.grpc.keepalive_timeout);
  if (config.drain_timeout < absl::ZeroDuration() ||
      config.drain_timeout == absl::InfiniteDuration()) {
    problems.Add("drain_timeout", absl::StrCat("must be finite and not negative, got ",
                                               FormatConfigDuration(config.drain_timeout, false)));
  }
  return problems.ToStatus();
}

absl::StatusOr<ServerConfig> LoadServerConfig(const CommandLine& command_line,
                                              const Environment& env) {
  ServerConfig config;
  ConfigSources sources;
  std::optional<std::string> config_file = command_line.config_file;
  std::string named_by = "flag --config";
  if (!config_file.has_value()) {
    if (auto it = env.find(std::string(kConfigEnvVar)); it != env.end()) {
      config_file = it->second;
      named_by = absl::StrCat("environment variable ", kConfigEnvVar);
    }
  }
  if (config_file.has_value() && !config_file->empty()) {
    if (absl::Status status = ApplyYamlFile(*config_file, &config, &sources); !status.ok()) {
      if (!absl::IsNotFound(status)) return status;
      return absl::NotFoundError(absl::StrCat(status.message(), " (named by ", named_by, ")"));
    }
  }
  RETURN_IF_ERROR(ApplyEnvironment(env, &config, &sources));
  RETURN_IF_ERROR(ApplyCommandLine(command_line, &config, &sources));
  RETURN_IF_ERROR(ValidateServerConfig(config, &sources));
  return config;
}

std::string EffectiveConfigYaml(const ServerConfig& config) {
  std::string yaml;
  std::string section;
  for (const Field& field : Fields()) {
    if (field.section != section) {
      section = field.section;
      if (!section.empty()) absl::StrAppend(&yaml, section, ":\n");
    }
    const std::string value = field.get(config);
    absl::StrAppend(&yaml, section.empty() ? "" : "  ", field.leaf, ": ",
                    field.is_string ? QuoteYaml(value) : value, "\n");
  }
  return yaml;
}

absl::StatusOr<std::map<std::string, std::string>> ParseAuthTokens(absl::string_view yaml_text,
                                                                   absl::string_view file_name) {
  // Nothing from the text goes into a message: keys are tokens, and a file written the wrong way
  // round has tokens as values.
  ASSIGN_OR_RETURN(const YAML::Node root,
                   ParseYamlDocument(yaml_text, file_name, /*error_detail=*/false));
  const auto error = [&](const YAML::Mark& mark, absl::string_view problem) {
    return absl::InvalidArgumentError(
        absl::StrCat("auth tokens file ", Location(file_name, mark), ": ", problem));
  };
  if (!root.IsDefined() || root.IsNull()) {
    return absl::InvalidArgumentError(
        absl::StrCat("auth tokens file ", file_name, ": defines no tokens"));
  }
  if (!root.IsMap()) {
    return error(root.Mark(), "expected a map of \"<token>\": \"<tenant id>\" entries");
  }
  std::map<std::string, std::string> tokens;
  std::map<std::string, int> line_of;
  try {
    for (const auto& entry : root) {
      const YAML::Mark mark = entry.first.Mark();
      if (!entry.first.IsScalar() || entry.first.Scalar().empty()) {
        return error(mark, "a token must be a non-empty string");
      }
      const std::string& token = entry.first.Scalar();
      const bool printable = absl::c_all_of(token, [](char ch) {
        return static_cast<unsigned char>(ch) > 0x20 && static_cast<unsigned char>(ch) < 0x7f;
      });
      if (!printable) {
        return error(mark,
                     "a token must be printable ASCII without spaces (the token is not shown)");
      }
      if (!entry.second.IsScalar()) {
        return error(mark, "the tenant id of this token must be a string");
      }
      const std::string& tenant = entry.second.Scalar();
      const bool tenant_ok =
          !tenant.empty() && tenant.size() <= 128 && absl::c_all_of(tenant, [](char ch) {
            return absl::ascii_isalnum(ch) || ch == '.' || ch == '_' || ch == ':' || ch == '@' ||
                   ch == '-';
          });
      if (!tenant_ok) {
        return error(entry.second.Mark(),
                     "a tenant id is 1-128 characters of letters, digits and . _ : @ - "
                     "(the value is not shown)");
      }
      if (const auto [it, inserted] = line_of.emplace(token, mark.line + 1); !inserted) {
        return error(mark, absl::StrCat("duplicate token (also at line ", it->second,
                                        "; the token is not shown)"));
      }
      tokens.emplace(token, tenant);
    }
  } catch (const YAML::Exception& e) {
    return error(e.mark, "cannot read the YAML");
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("auth tokens file ", file_name, ": defines no tokens"));
  }
  return tokens;
}

absl::StatusOr<std::map<std::string, std::string>> LoadAuthTokens(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(path, "auth tokens file"));
  return ParseAuthTokens(text, path);
}

}  // namespace anchorserve::server
