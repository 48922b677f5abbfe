#include "server/config.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/remove_tree.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace anchorserve::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const std::string kRepoRoot = std::string(ANCHORSERVE_TEST_DATA_DIR) + "/../..";

absl::StatusOr<ServerConfig> Load(const std::vector<std::string>& args,
                                  const Environment& env = {}) {
  absl::StatusOr<CommandLine> command_line = ParseCommandLine(args);
  if (!command_line.ok()) return command_line.status();
  return LoadServerConfig(*command_line, env);
}

// The error message of a load that must fail.
std::string LoadError(const std::vector<std::string>& args, const Environment& env = {}) {
  absl::StatusOr<ServerConfig> config = Load(args, env);
  EXPECT_FALSE(config.ok()) << "loaded although it should not";
  return config.ok() ? "" : std::string(config.status().message());
}

std::string YamlError(absl::string_view yaml) {
  ServerConfig config;
  const absl::Status status = ApplyYamlText(yaml, "f.yaml", &config, nullptr);
  EXPECT_FALSE(status.ok()) << yaml;
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  return std::string(status.message());
}

ServerConfig ApplyYamlOrDie(absl::string_view yaml) {
  ServerConfig config;
  const absl::Status status = ApplyYamlText(yaml, "f.yaml", &config, nullptr);
  EXPECT_TRUE(status.ok()) << status;
  return config;
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/config_test.XXXXXX";
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { anchorserve::RemoveTree(path_); }

  std::string Write(const std::string& name, absl::string_view content) const {
    const std::string path = path_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// --- defaults and the shipped default file ------------------------------------------------------

TEST(ConfigDefaults, MatchTheDocumentedValues) {
  const ServerConfig config;
  EXPECT_EQ(config.model, "");
  EXPECT_EQ(config.listen, "0.0.0.0:50051");
  EXPECT_EQ(config.metrics_listen, "0.0.0.0:9464");
  EXPECT_EQ(config.device, ServerConfig::Device::kCpu);
  EXPECT_EQ(config.dtype, ServerConfig::Dtype::kFloat32);
  EXPECT_EQ(config.drain_timeout, absl::Seconds(30));
  EXPECT_FALSE(config.log.prompts);
  EXPECT_FALSE(config.auth.enabled);
  EXPECT_EQ(config.sessions.idle_offload_after, absl::InfiniteDuration());
  // Defaults are valid once a model is named.
  ServerConfig with_model;
  with_model.model = "/models/m";
  EXPECT_TRUE(ValidateServerConfig(with_model).ok()) << ValidateServerConfig(with_model);
}

TEST(ConfigDefaults, DeployFileListsEveryKeyWithItsDefault) {
  ServerConfig config;
  ConfigSources sources;
  const std::string path = kRepoRoot + "/deploy/config/anchorserve.yaml";
  const absl::Status status = ApplyYamlFile(path, &config, &sources);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(config, ServerConfig());
  EXPECT_EQ(EffectiveConfigYaml(config), EffectiveConfigYaml(ServerConfig()));
  for (const ConfigKeyInfo& key : ConfigKeys()) {
    EXPECT_TRUE(sources.count(key.key)) << key.key << " is missing from " << path;
  }
  EXPECT_EQ(sources.size(), ConfigKeys().size());
}

TEST(ConfigDefaults, DeployFileLoadsThroughTheWholePipeline) {
  absl::StatusOr<ServerConfig> config =
      Load({"--config", kRepoRoot + "/deploy/config/anchorserve.yaml", "--model=/m"});
  ASSERT_TRUE(config.ok()) << config.status();
  ServerConfig expected;
  expected.model = "/m";
  EXPECT_EQ(*config, expected);
}

TEST(ConfigDefaults, DocsTableNamesEveryKeyAndVariable) {
  std::ifstream in(kRepoRoot + "/docs/CONFIG.md");
  ASSERT_TRUE(in) << "docs/CONFIG.md";
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const ConfigKeyInfo& key : ConfigKeys()) {
    EXPECT_THAT(doc, HasSubstr(absl::StrCat("`", key.key, "`")));
    EXPECT_THAT(doc, HasSubstr(absl::StrCat("`", key.env_var, "`")));
  }
}

TEST(ConfigKeys, NamesAreUniqueAndDerivedFromTheKey) {
  std::set<std::string> keys, env_vars;
  for (const ConfigKeyInfo& key : ConfigKeys()) {
    EXPECT_TRUE(keys.insert(key.key).second) << key.key;
    EXPECT_TRUE(env_vars.insert(key.env_var).second) << key.env_var;
    EXPECT_EQ(key.flag, "--" + key.key);
    EXPECT_FALSE(key.description.empty()) << key.key;
  }
  const std::vector<std::string> required = {"model",
                                             "listen",
                                             "metrics_listen",
                                             "device",
                                             "dtype",
                                             "threads",
                                             "workers",
                                             "kv.budget_bytes",
                                             "kv.gpu_memory_fraction",
                                             "kv.block_tokens",
                                             "scheduler.max_waiting",
                                             "scheduler.max_running",
                                             "scheduler.max_batched_tokens",
                                             "scheduler.max_prefill_chunk",
                                             "limits.max_prompt_tokens",
                                             "limits.max_new_tokens",
                                             "limits.max_message_bytes",
                                             "limits.max_sessions_per_tenant",
                                             "sessions.disk_dir",
                                             "sessions.host_max_bytes",
                                             "sessions.disk_max_bytes",
                                             "sessions.idle_ttl",
                                             "sessions.idle_offload_after",
                                             "defaults.mode",
                                             "defaults.position_policy",
                                             "defaults.anchor_insertion",
                                             "auth.enabled",
                                             "auth.tokens_file",
                                             "tls.cert_file",
                                             "tls.key_file",
                                             "tls.client_ca_file",
                                             "grpc.reflection",
                                             "grpc.keepalive_time",
                                             "grpc.keepalive_timeout",
                                             "drain_timeout",
                                             "log.prompts"};
  EXPECT_EQ(keys, std::set<std::string>(required.begin(), required.end()));
  EXPECT_TRUE(env_vars.count("ANCHORSERVE_KV_BUDGET_BYTES"));
  EXPECT_TRUE(env_vars.count("ANCHORSERVE_AUTH_TOKENS_FILE"));
  EXPECT_TRUE(env_vars.count("ANCHORSERVE_LISTEN"));
}

TEST(ConfigKeys, EnumSpellings) {
  EXPECT_EQ(ConfigValueName(ServerConfig::Device::kCuda), "cuda");
  EXPECT_EQ(ConfigValueName(ServerConfig::Dtype::kBFloat16), "bfloat16");
  EXPECT_EQ(ConfigValueName(DefaultsConfig::Mode::kFull), "full");
  EXPECT_EQ(ConfigValueName(DefaultsConfig::PositionPolicy::kCompact), "compact");
  EXPECT_EQ(ConfigValueName(DefaultsConfig::AnchorInsertion::kClient), "client");
}

// --- precedence ---------------------------------------------------------------------------------

struct PrecedenceCase {
  std::string key;
  std::string file_value, env_value, flag_value;
  std::function<std::string(const ServerConfig&)> read;
  std::string default_read, file_read, env_read, flag_read;
};

TEST(ConfigPrecedence, EachLayerOverridesTheOneBelow) {
  const std::vector<PrecedenceCase> cases = {
      {"listen", "\"1.1.1.1:1\"", "2.2.2.2:2", "3.3.3.3:3",
       [](const ServerConfig& c) { return c.listen; }, "0.0.0.0:50051", "1.1.1.1:1", "2.2.2.2:2",
       "3.3.3.3:3"},
      {"kv.budget_bytes", "1MiB", "2000000", "3000000",
       [](const ServerConfig& c) { return absl::StrCat(c.kv.budget_bytes); }, "268435456",
       "1048576", "2000000", "3000000"},
      {"grpc.reflection", "false", "true", "false",
       [](const ServerConfig& c) { return std::string(c.grpc.reflection ? "on" : "off"); }, "on",
       "off", "on", "off"},
      {"defaults.mode", "full", "anchor", "full",
       [](const ServerConfig& c) { return std::string(ConfigValueName(c.defaults.mode)); },
       "anchor", "full", "anchor", "full"},
      {"drain_timeout", "1m", "2m", "3s",
       [](const ServerConfig& c) { return absl::FormatDuration(c.drain_timeout); }, "30s", "1m",
       "2m", "3s"},
  };
  for (const PrecedenceCase& c : cases) {
    SCOPED_TRACE(c.key);
    TempDir dir;
    const size_t dot = c.key.find('.');
    const std::string yaml = dot == std::string::npos
                                 ? absl::StrCat(c.key, ": ", c.file_value, "\n")
                                 : absl::StrCat(c.key.substr(0, dot), ":\n  ",
                                                c.key.substr(dot + 1), ": ", c.file_value, "\n");
    const std::string file = dir.Write("c.yaml", yaml);
    std::string env_var;
    for (const ConfigKeyInfo& key : ConfigKeys()) {
      if (key.key == c.key) env_var = key.env_var;
    }
    const Environment env = {{env_var, c.env_value}};
    const std::vector<std::string> flag = {absl::StrCat("--", c.key, "=", c.flag_value)};
    auto read = [&](std::vector<std::string> args, const Environment& e) {
      args.push_back("--model=/m");
      absl::StatusOr<ServerConfig> config = Load(args, e);
      EXPECT_TRUE(config.ok()) << config.status();
      return config.ok() ? c.read(*config) : std::string("<error>");
    };
    EXPECT_EQ(read({}, {}), c.default_read);
    EXPECT_EQ(read({"--config=" + file}, {}), c.file_read);
    EXPECT_EQ(read({"--config=" + file}, env), c.env_read);
    EXPECT_EQ(read({}, env), c.env_read);
    EXPECT_EQ(read({"--config=" + file, flag[0]}, env), c.flag_read);
    EXPECT_EQ(read({flag[0], "--config=" + file}, env), c.flag_read);  // order of flags is free
  }
}

TEST(ConfigPrecedence, ConfigFileFromEnvironmentAndFlagWins) {
  TempDir dir;
  const std::string from_env = dir.Write("env.yaml", "threads: 3\n");
  const std::string from_flag = dir.Write("flag.yaml", "threads: 5\n");
  absl::StatusOr<ServerConfig> config = Load({"--model=/m"}, {{"ANCHORSERVE_CONFIG", from_env}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->threads, 3);
  config = Load({"--model=/m", "--config", from_flag}, {{"ANCHORSERVE_CONFIG", from_env}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->threads, 5);
  // An explicitly empty --config means no file, even when the environment names one.
  config = Load({"--model=/m", "--config="}, {{"ANCHORSERVE_CONFIG", from_env}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->threads, 0);
}

TEST(ConfigPrecedence, LaterFlagWins) {
  absl::StatusOr<ServerConfig> config =
      Load({"--model=/a", "--threads=2", "--threads", "4", "--model", "/b"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->threads, 4);
  EXPECT_EQ(config->model, "/b");
}

TEST(ConfigPrecedence, MissingConfigFileIsNotFound) {
  absl::StatusOr<ServerConfig> config = Load({"--model=/m", "--config=/nonexistent/as.yaml"});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("/nonexistent/as.yaml"));
  EXPECT_THAT(config.status().message(), HasSubstr("flag --config"));
  config = Load({"--model=/m"}, {{"ANCHORSERVE_CONFIG", "/nonexistent/b.yaml"}});
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("environment variable ANCHORSERVE_CONFIG"));
  TempDir dir;
  EXPECT_THAT(LoadError({"--model=/m", "--config", dir.path()}), HasSubstr("is a directory"));
}

// --- YAML ---------------------------------------------------------------------------------------

TEST(ConfigYaml, ReadsNestedKeysOfEveryType) {
  const ServerConfig config = ApplyYamlOrDie(
      "model: /models/a\n"
      "device: cuda\n"
      "dtype: bfloat16\n"
      "threads: 8\n"
      "workers: 2\n"
      "kv:\n"
      "  budget_bytes: 2GiB\n"
      "  gpu_memory_fraction: 0.85\n"
      "sessions:\n"
      "  disk_dir:\n"
      "  idle_ttl: 1h30m\n"
      "  idle_offload_after: 5m\n"
      "defaults: {mode: full, position_policy: compact, anchor_insertion: messages}\n"
      "auth:\n"
      "  enabled: yes\n"
      "  tokens_file: /secrets/tokens.yaml\n"
      "log:\n");
  EXPECT_EQ(config.model, "/models/a");
  EXPECT_EQ(config.device, ServerConfig::Device::kCuda);
  EXPECT_EQ(config.dtype, ServerConfig::Dtype::kBFloat16);
  EXPECT_EQ(config.threads, 8);
  EXPECT_EQ(config.workers, 2);
  EXPECT_EQ(config.kv.budget_bytes, int64_t{2} << 30);
  EXPECT_DOUBLE_EQ(config.kv.gpu_memory_fraction, 0.85);
  EXPECT_EQ(config.sessions.disk_dir, "");
  EXPECT_EQ(config.sessions.idle_ttl, absl::Minutes(90));
  EXPECT_EQ(config.sessions.idle_offload_after, absl::Minutes(5));
  EXPECT_EQ(config.defaults.mode, DefaultsConfig::Mode::kFull);
  EXPECT_EQ(config.defaults.position_policy, DefaultsConfig::PositionPolicy::kCompact);
  EXPECT_EQ(config.defaults.anchor_insertion, DefaultsConfig::AnchorInsertion::kMessages);
  EXPECT_TRUE(config.auth.enabled);
  EXPECT_EQ(config.auth.tokens_file, "/secrets/tokens.yaml");
}

TEST(ConfigYaml, EmptyFileSetsNothing) {
  EXPECT_EQ(ApplyYamlOrDie(""), ServerConfig());
  EXPECT_EQ(ApplyYamlOrDie("# only a comment\n"), ServerConfig());
}

TEST(ConfigYaml, UnknownKeysNameFileLineColumnAndPath) {
  EXPECT_THAT(YamlError("model: /m\nmodle: /m\n"), HasSubstr("f.yaml:2:1: unknown key 'modle'"));
  EXPECT_THAT(YamlError("kv:\n  block_tokens: 8\n  budget: 5\n"),
              HasSubstr("f.yaml:3:3: unknown key 'kv.budget'"));
  EXPECT_THAT(YamlError("kv:\n  budget: 5\n"), HasSubstr("budget_bytes"));  // lists known keys
  EXPECT_THAT(YamlError("grpc:\n  keepalive: 1s\n"),
              HasSubstr("f.yaml:2:3: unknown key 'grpc.keepalive'"));
  EXPECT_THAT(YamlError("kv.budget_bytes: 5\n"),
              HasSubstr("f.yaml:1:1: write 'kv.budget_bytes' nested"));
}

TEST(ConfigYaml, DuplicateKeysAreRefused) {
  EXPECT_THAT(YamlError("threads: 1\nthreads: 2\n"),
              HasSubstr("f.yaml:2:1: duplicate key 'threads' (first at line 1)"));
  EXPECT_THAT(YamlError("kv:\n  block_tokens: 8\nkv:\n  budget_bytes: 5\n"),
              HasSubstr("f.yaml:3:1: duplicate key 'kv'"));
}

TEST(ConfigYaml, WrongTypesNameKeyAndPosition) {
  EXPECT_THAT(YamlError("threads: many\n"),
              HasSubstr("f.yaml:1:10: threads: expected an integer, got 'many'"));
  EXPECT_THAT(YamlError("kv:\n  budget_bytes: lots\n"),
              HasSubstr("f.yaml:2:17: kv.budget_bytes: expected a byte count"));
  EXPECT_THAT(YamlError("kv: 5\n"), HasSubstr("f.yaml:1:5: kv: expected a map"));
  EXPECT_THAT(YamlError("listen: [a, b]\n"),
              HasSubstr("f.yaml:1:9: listen: expected <host:port>, got a list"));
  EXPECT_THAT(YamlError("model: {a: 1}\n"), HasSubstr("model: expected <dir>, got a map"));
  EXPECT_THAT(YamlError("threads:\n"), HasSubstr("threads: expected <int>, got no value"));
  EXPECT_THAT(YamlError("device: tpu\n"), HasSubstr("device: expected one of cpu|cuda, got 'tpu'"));
  EXPECT_THAT(YamlError("grpc:\n  reflection: maybe\n"),
              HasSubstr("grpc.reflection: expected true or false, got 'maybe'"));
  EXPECT_THAT(YamlError("kv:\n  gpu_memory_fraction: half\n"),
              HasSubstr("kv.gpu_memory_fraction: expected a number"));
  EXPECT_THAT(YamlError("threads: 1.5\n"), HasSubstr("threads: expected an integer"));
  EXPECT_THAT(YamlError("threads: 99999999999\n"), HasSubstr("threads: out of range"));
  EXPECT_THAT(YamlError("drain_timeout: 30\n"), HasSubstr("drain_timeout: expected a duration"));
}

TEST(ConfigYaml, SyntaxErrorsAndOddDocuments) {
  EXPECT_THAT(YamlError("kv:\n  budget_bytes: [1,\n"), HasSubstr("f.yaml:"));
  EXPECT_THAT(YamlError("kv:\n  budget_bytes: [1,\n"), HasSubstr("YAML syntax error"));
  EXPECT_THAT(YamlError("- a\n- b\n"),
              HasSubstr("f.yaml:1:1: expected a map of configuration keys"));
  EXPECT_THAT(YamlError("threads: 1\n---\nthreads: 2\n"), HasSubstr("2 YAML documents"));
  EXPECT_THAT(YamlError("[a]: 1\n"), HasSubstr("a key must be a plain name"));
}

// Regression (fuzz/config_fuzzer.cc): a stray ',' after a top-level flow collection made
// yaml-cpp 0.7's LoadAll return empty documents forever, growing until the process ran out of
// memory, for the config file and the tokens file alike.
TEST(ConfigYaml, StrayCommaAfterAFlowCollectionIsASyntaxError) {
  for (const char* text : {"{},", "[],", "{a: 1},", "\"a\",", "{},x", "{},\n", "[1, 2], 3\n"}) {
    SCOPED_TRACE(text);
    const std::string error = YamlError(text);
    EXPECT_THAT(error, HasSubstr("f.yaml:1:"));
    EXPECT_THAT(error, HasSubstr("YAML syntax error"));
    absl::StatusOr<std::map<std::string, std::string>> tokens = ParseAuthTokens(text, "t.yaml");
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_THAT(YamlError("threads: 1\n---\n{},\n"), HasSubstr("f.yaml:3:3: YAML syntax error"));
  // Several documents, empty ones included, are still counted, not mistaken for the loop.
  EXPECT_THAT(YamlError("threads: 1\n---\n---\n"), HasSubstr("3 YAML documents"));
}

// --- environment --------------------------------------------------------------------------------

TEST(ConfigEnvironment, MapsEveryKeyAndIgnoresOtherVariables) {
  absl::StatusOr<ServerConfig> config = Load({}, {{"ANCHORSERVE_MODEL", "/m"},
                                                  {"ANCHORSERVE_KV_BUDGET_BYTES", "512MiB"},
                                                  {"ANCHORSERVE_AUTH_ENABLED", "true"},
                                                  {"ANCHORSERVE_AUTH_TOKENS_FILE", "/t.yaml"},
                                                  {"ANCHORSERVE_METRICS_LISTEN", ""},
                                                  {"ANCHORSERVE_SESSIONS_IDLE_TTL", "0"},
                                                  {"PATH", "/usr/bin"},
                                                  {"anchorserve_threads", "x"}});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model, "/m");
  EXPECT_EQ(config->kv.budget_bytes, int64_t{512} << 20);
  EXPECT_TRUE(config->auth.enabled);
  EXPECT_EQ(config->auth.tokens_file, "/t.yaml");
  EXPECT_EQ(config->metrics_listen, "");
  EXPECT_EQ(config->sessions.idle_ttl, absl::InfiniteDuration());
}

TEST(ConfigEnvironment, UnknownVariableIsRefusedByName) {
  const std::string message =
      LoadError({"--model=/m"}, {{"ANCHORSERVE_KV_BUDGET", "5"}, {"ANCHORSERVE_LISTEN", "a:1"}});
  EXPECT_THAT(message, HasSubstr("unknown environment variable ANCHORSERVE_KV_BUDGET"));
  EXPECT_THAT(LoadError({"--model=/m"}, {{"ANCHORSERVE_BIN", "/x"}}), HasSubstr("ANCHORSERVE_BIN"));
}

TEST(ConfigEnvironment, BadValueNamesVariableAndKey) {
  EXPECT_THAT(LoadError({"--model=/m"}, {{"ANCHORSERVE_THREADS", "many"}}),
              HasSubstr("environment variable ANCHORSERVE_THREADS: threads: expected an integer, "
                        "got 'many'"));
}

TEST(ConfigEnvironment, ReadsTheProcessEnvironment) {
  ASSERT_EQ(setenv("ANCHORSERVE_CONFIG_TEST_PROBE", "value=with=equals", 1), 0);
  ASSERT_EQ(setenv("CONFIG_TEST_UNRELATED", "x", 1), 0);
  const Environment env = ReadProcessEnvironment();
  unsetenv("ANCHORSERVE_CONFIG_TEST_PROBE");
  unsetenv("CONFIG_TEST_UNRELATED");
  ASSERT_TRUE(env.count("ANCHORSERVE_CONFIG_TEST_PROBE"));
  EXPECT_EQ(env.at("ANCHORSERVE_CONFIG_TEST_PROBE"), "value=with=equals");
  EXPECT_FALSE(env.count("CONFIG_TEST_UNRELATED"));
}

// --- flags --------------------------------------------------------------------------------------

TEST(ConfigFlags, BothFormsAndBooleans) {
  absl::StatusOr<ServerConfig> config =
      Load({"--model", "/m", "--listen=127.0.0.1:0", "--metrics_listen", "127.0.0.1:9000",
            "--kv.budget_bytes=1000000", "--scheduler.max_running", "8", "--auth.enabled",
            "--auth.tokens_file=/t", "--grpc.reflection=false", "--log.prompts", "--device", "cuda",
            "--kv.gpu_memory_fraction=0.9", "--sessions.idle_ttl", "45m"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model, "/m");
  EXPECT_EQ(config->listen, "127.0.0.1:0");
  EXPECT_EQ(config->metrics_listen, "127.0.0.1:9000");
  EXPECT_EQ(config->kv.budget_bytes, 1000000);
  EXPECT_EQ(config->scheduler.max_running, 8);
  EXPECT_TRUE(config->auth.enabled);
  EXPECT_FALSE(config->grpc.reflection);
  EXPECT_TRUE(config->log.prompts);
  EXPECT_EQ(config->device, ServerConfig::Device::kCuda);
  EXPECT_DOUBLE_EQ(config->kv.gpu_memory_fraction, 0.9);
  EXPECT_EQ(config->sessions.idle_ttl, absl::Minutes(45));
}

TEST(ConfigFlags, EmptyValueDisablesMetrics) {
  absl::StatusOr<ServerConfig> config = Load({"--model=/m", "--metrics_listen="});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->metrics_listen, "");
}

TEST(ConfigFlags, HelpIsReported) {
  absl::StatusOr<CommandLine> command_line = ParseCommandLine({"--listen=a:1", "--help"});
  ASSERT_TRUE(command_line.ok()) << command_line.status();
  EXPECT_TRUE(command_line->help);
  const char* argv[] = {"anchorserve", "-h"};
  command_line = ParseCommandLine(2, argv);
  ASSERT_TRUE(command_line.ok()) << command_line.status();
  EXPECT_TRUE(command_line->help);
}

TEST(ConfigFlags, ErrorsNameTheFlag) {
  EXPECT_THAT(LoadError({"--model=/m", "--modle=/m"}), HasSubstr("unknown flag --modle"));
  EXPECT_THAT(LoadError({"--model=/m", "--kv.budget=5"}), HasSubstr("unknown flag --kv.budget"));
  EXPECT_THAT(LoadError({"--metrics-listen=a:1"}),
              HasSubstr("unknown flag --metrics-listen (did you mean --metrics_listen?)"));
  EXPECT_THAT(LoadError({"--model"}), HasSubstr("flag --model needs a value"));
  EXPECT_THAT(LoadError({"--listen", "--model=/m"}), HasSubstr("flag --listen needs a value"));
  EXPECT_THAT(LoadError({"--config"}), HasSubstr("flag --config needs a value"));
  EXPECT_THAT(LoadError({"--model=/m", "--auth.enabled", "true"}),
              HasSubstr("unexpected argument 'true'"));
  EXPECT_THAT(LoadError({"/m"}), HasSubstr("unexpected argument '/m'"));
  EXPECT_THAT(LoadError({"--model=/m", "--kv.budget_bytes=lots"}),
              HasSubstr("flag --kv.budget_bytes: kv.budget_bytes: expected a byte count"));
  EXPECT_THAT(LoadError({"--model=/m", "--defaults.anchor_insertion=auto"}),
              HasSubstr("flag --defaults.anchor_insertion: defaults.anchor_insertion: expected "
                        "one of sentences|messages|none|client, got 'auto'"));
}

TEST(ConfigFlags, HelpListsEveryKeyWithDefaultAndDescription) {
  const std::string help = ConfigHelpText();
  EXPECT_THAT(help, HasSubstr("--config=<file>"));
  EXPECT_THAT(help, HasSubstr("--help"));
  for (const ConfigKeyInfo& key : ConfigKeys()) {
    SCOPED_TRACE(key.key);
    EXPECT_THAT(help, HasSubstr(absl::StrCat(key.flag, "=", key.value_syntax)));
    EXPECT_THAT(help, HasSubstr(absl::StrCat("(env ", key.env_var, "; default ")));
    EXPECT_THAT(help, HasSubstr(key.description));
  }
  EXPECT_THAT(help, HasSubstr("--listen=<host:port>  (env ANCHORSERVE_LISTEN; default "
                              "\"0.0.0.0:50051\")"));
  EXPECT_THAT(help, HasSubstr("--drain_timeout=<duration>  (env ANCHORSERVE_DRAIN_TIMEOUT; "
                              "default 30s)"));
  EXPECT_THAT(help, HasSubstr("--kv.budget_bytes=<bytes>  (env ANCHORSERVE_KV_BUDGET_BYTES; "
                              "default 256MiB)"));
}

// --- values -------------------------------------------------------------------------------------

TEST(ConfigValues, Durations) {
  auto idle_ttl = [](const std::string& text) {
    absl::StatusOr<ServerConfig> config = Load({"--model=/m", "--sessions.idle_ttl=" + text});
    EXPECT_TRUE(config.ok()) << config.status();
    return config.ok() ? config->sessions.idle_ttl : absl::ZeroDuration();
  };
  EXPECT_EQ(idle_ttl("30m"), absl::Minutes(30));
  EXPECT_EQ(idle_ttl("1h"), absl::Hours(1));
  EXPECT_EQ(idle_ttl("1.5h"), absl::Minutes(90));
  EXPECT_EQ(idle_ttl("0"), absl::InfiniteDuration());
  EXPECT_EQ(idle_ttl("0s"), absl::InfiniteDuration());
  EXPECT_EQ(idle_ttl("never"), absl::InfiniteDuration());
  EXPECT_EQ(idle_ttl("inf"), absl::InfiniteDuration());

  absl::StatusOr<ServerConfig> config =
      Load({"--model=/m", "--grpc.keepalive_time=45s", "--drain_timeout=0"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->grpc.keepalive_time, absl::Seconds(45));
  EXPECT_EQ(config->drain_timeout, absl::ZeroDuration());  // 0 here means "no grace"

  EXPECT_THAT(LoadError({"--model=/m", "--sessions.idle_ttl=30"}),
              HasSubstr("sessions.idle_ttl: expected a duration such as 30s, 5m, 1h30m"));
  EXPECT_THAT(LoadError({"--model=/m", "--sessions.idle_ttl=-5m"}),
              HasSubstr("sessions.idle_ttl (from flag --sessions.idle_ttl): must not be negative"));
  EXPECT_THAT(LoadError({"--model=/m", "--grpc.keepalive_time=0"}),
              HasSubstr("grpc.keepalive_time (from flag --grpc.keepalive_time): must be positive"));
  EXPECT_THAT(LoadError({"--model=/m", "--drain_timeout=inf"}),
              HasSubstr("drain_timeout (from flag --drain_timeout): must be finite"));
}

TEST(ConfigValues, ByteSizes) {
  absl::StatusOr<ServerConfig> config =
      Load({"--model=/m", "--kv.budget_bytes=3KiB", "--sessions.host_max_bytes=1 GiB",
            "--limits.max_message_bytes=16MiB", "--sessions.disk_max_bytes=2TiB"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->kv.budget_bytes, 3 * 1024);
  EXPECT_EQ(config->sessions.host_max_bytes, int64_t{1} << 30);
  EXPECT_EQ(config->limits.max_message_bytes, 16 << 20);
  EXPECT_EQ(config->sessions.disk_max_bytes, int64_t{2} << 40);
  EXPECT_THAT(LoadError({"--model=/m", "--limits.max_message_bytes=4GiB"}),
              HasSubstr("limits.max_message_bytes: out of range"));
  EXPECT_THAT(LoadError({"--model=/m", "--kv.budget_bytes=99999999TiB"}),
              HasSubstr("kv.budget_bytes: out of range"));
  EXPECT_THAT(LoadError({"--model=/m", "--threads=4KiB"}),  // suffixes only for byte sizes
              HasSubstr("threads: expected an integer"));
}

// --- validation ---------------------------------------------------------------------------------

TEST(ConfigValidation, EachRuleNamesItsKey) {
  struct Case {
    std::vector<std::string> flags;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"--model="}, "model (from flag --model): required"},
      {{"--kv.budget_bytes=0"}, "kv.budget_bytes (from flag --kv.budget_bytes): must be positive"},
      {{"--kv.gpu_memory_fraction=1", "--device=cuda"},
       "kv.gpu_memory_fraction (from flag --kv.gpu_memory_fraction): must be 0 (off) or in (0, 1)"},
      {{"--kv.gpu_memory_fraction=-0.1", "--device=cuda"},
       "must be 0 (off) or in (0, 1), got -0.1"},
      {{"--kv.gpu_memory_fraction=0.5"}, "applies to device cuda only"},
      {{"--kv.block_tokens=0"}, "kv.block_tokens (from flag --kv.block_tokens): must be positive"},
      {{"--scheduler.max_waiting=0"}, "scheduler.max_waiting"},
      {{"--scheduler.max_running=-1"}, "scheduler.max_running"},
      {{"--scheduler.max_prefill_chunk=4096"},
       "scheduler.max_prefill_chunk (from flag --scheduler.max_prefill_chunk): must not exceed "
       "scheduler.max_batched_tokens (2048)"},
      {{"--limits.max_prompt_tokens=0"}, "limits.max_prompt_tokens"},
      {{"--limits.max_new_tokens=0"}, "limits.max_new_tokens"},
      {{"--limits.max_message_bytes=0"}, "limits.max_message_bytes"},
      {{"--limits.max_sessions_per_tenant=0"}, "limits.max_sessions_per_tenant"},
      {{"--sessions.host_max_bytes=-1"}, "sessions.host_max_bytes"},
      {{"--sessions.disk_dir=/d", "--sessions.disk_max_bytes=0"}, "sessions.disk_max_bytes"},
      {{"--threads=-2"}, "threads (from flag --threads): must not be negative"},
      {{"--workers=-1"}, "workers (from flag --workers): must not be negative"},
      {{"--auth.enabled"}, "auth.tokens_file (from default): required when auth.enabled is true"},
      {{"--tls.cert_file=/c"},
       "tls.key_file (from default): tls.cert_file and tls.key_file go "
       "together"},
      {{"--tls.key_file=/k"},
       "tls.cert_file (from default): tls.cert_file and tls.key_file go "
       "together"},
      {{"--tls.client_ca_file=/ca"},
       "tls.client_ca_file (from flag --tls.client_ca_file): mutual "
       "TLS needs server TLS too"},
      {{"--listen=localhost"}, "listen (from flag --listen): expected host:port"},
      {{"--listen=:50051"}, "has no host"},
      {{"--listen=0.0.0.0:70000"}, "the port must be 0-65535"},
      {{"--listen=::1:50"}, "an IPv6 host goes in brackets"},
      {{"--listen="}, "listen (from flag --listen): required"},
      {{"--metrics_listen=0.0.0.0:50051"},
       "metrics_listen (from flag --metrics_listen): uses the "
       "gRPC port 50051"},
      {{"--metrics_listen=unix:/x"}, "metrics_listen"},
      {{"--grpc.keepalive_timeout=600h"},
       "grpc.keepalive_timeout (from flag --grpc.keepalive_timeout): must be positive and at most "
       "596h"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--model=/m"};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    SCOPED_TRACE(c.flags[0]);
    EXPECT_THAT(LoadError(args), HasSubstr(c.expected));
  }
}

TEST(ConfigValidation, AcceptsTheUsefulEdgeCases) {
  for (const std::vector<std::string>& flags : std::vector<std::vector<std::string>>{
           {"--listen=127.0.0.1:0"},
           {"--listen=[::]:50051"},
           {"--listen=unix:/tmp/anchorserve.sock"},
           {"--metrics_listen="},
           {"--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0"},
           {"--device=cuda", "--kv.gpu_memory_fraction=0.9"},
           {"--tls.cert_file=/c", "--tls.key_file=/k", "--tls.client_ca_file=/ca"},
           {"--auth.enabled", "--auth.tokens_file=/t"},
           {"--sessions.host_max_bytes=0"},
           {"--workers=0"},
           {"--workers=4"},  // cpu: any count; cuda: checked against the GPUs at start
       }) {
    std::vector<std::string> args = {"--model=/m"};
    args.insert(args.end(), flags.begin(), flags.end());
    SCOPED_TRACE(flags[0]);
    absl::StatusOr<ServerConfig> config = Load(args);
    EXPECT_TRUE(config.ok()) << config.status();
  }
}

TEST(ConfigValidation, ListsEveryProblemWithItsSource) {
  TempDir dir;
  const std::string file = dir.Write("c.yaml", "kv:\n  budget_bytes: 0\n");
  const std::string message =
      LoadError({"--config=" + file, "--scheduler.max_running=0"}, {{"ANCHORSERVE_THREADS", "-1"}});
  EXPECT_THAT(message, HasSubstr("model (from default): required"));
  EXPECT_THAT(message, HasSubstr(absl::StrCat("kv.budget_bytes (from ", file, ":2:17)")));
  EXPECT_THAT(message, HasSubstr("threads (from environment variable ANCHORSERVE_THREADS)"));
  EXPECT_THAT(message, HasSubstr("scheduler.max_running (from flag --scheduler.max_running)"));
}

// --- effective config and secrets ---------------------------------------------------------------

TEST(EffectiveConfig, RoundTripsThroughYaml) {
  ServerConfig config;
  config.model = "/models/a \"quoted\" \\ path: with # signs";
  config.listen = "[::]:1234";
  config.metrics_listen = "";
  config.device = ServerConfig::Device::kCuda;
  config.dtype = ServerConfig::Dtype::kBFloat16;
  config.threads = 7;
  config.kv.budget_bytes = 123456789;
  config.kv.gpu_memory_fraction = 0.1 + 0.2;  // not exactly 0.3: formatting must not round
  config.scheduler.max_prefill_chunk = 100;
  config.limits.max_message_bytes = 1 << 20;
  config.sessions.disk_dir = "/var/lib/anchorserve";
  config.sessions.idle_ttl = absl::InfiniteDuration();
  config.sessions.idle_offload_after = absl::Seconds(90);
  config.defaults.anchor_insertion = DefaultsConfig::AnchorInsertion::kNone;
  config.auth.enabled = true;
  config.auth.tokens_file = "/secrets/tokens.yaml";
  config.tls.cert_file = "/tls/crt.pem";
  config.tls.key_file = "/tls/key.pem";
  config.grpc.reflection = false;
  config.grpc.keepalive_time = absl::Milliseconds(1500);
  config.drain_timeout = absl::ZeroDuration();
  config.log.prompts = true;
  const std::string yaml = EffectiveConfigYaml(config);
  EXPECT_EQ(ApplyYamlOrDie(yaml), config) << yaml;
  EXPECT_EQ(ApplyYamlOrDie(EffectiveConfigYaml(ServerConfig())), ServerConfig());
  EXPECT_THAT(yaml, HasSubstr("kv:\n  budget_bytes: 123456789\n"));
  EXPECT_THAT(yaml, HasSubstr("  max_message_bytes: 1MiB\n"));
  EXPECT_THAT(yaml, HasSubstr("  idle_ttl: never\n"));
  EXPECT_THAT(yaml, HasSubstr("drain_timeout: 0\n"));
}

constexpr char kSecretToken[] = "sk-live-7f3a9c2e4b1d8f6a0e5c3b2a1d9e8f7c";

TEST(Secrets, EffectiveConfigShowsTheTokensPathNeverATokenFromIt) {
  TempDir dir;
  const std::string tokens_file =
      dir.Write("tokens.yaml", absl::StrCat("\"", kSecretToken, "\": acme\nother-token-2: beta\n"));
  absl::StatusOr<ServerConfig> config =
      Load({"--model=/m", "--auth.enabled", "--auth.tokens_file", tokens_file});
  ASSERT_TRUE(config.ok()) << config.status();
  const std::string yaml = EffectiveConfigYaml(*config);
  EXPECT_THAT(yaml, HasSubstr(tokens_file));
  EXPECT_THAT(yaml, Not(HasSubstr(kSecretToken)));

  absl::StatusOr<std::map<std::string, std::string>> tokens = LoadAuthTokens(tokens_file);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(*tokens, (std::map<std::string, std::string>{{kSecretToken, "acme"},
                                                         {"other-token-2", "beta"}}));
}

TEST(Secrets, TokenFileErrorsNameTheFileNeverTheToken) {
  const std::string s = kSecretToken;
  const std::vector<std::pair<std::string, std::string>> bad_files = {
      {"duplicate", absl::StrCat(s, ": a\n", s, ": b\n")},
      {"bad tenant", absl::StrCat(s, ": \"two words\"\n")},
      {"tenant is a list", absl::StrCat(s, ": [a]\n")},
      {"tenant missing", absl::StrCat(s, ":\n")},
      {"token with a space", absl::StrCat("\"", s, " x\": a\n")},
      {"syntax error", absl::StrCat("\"", s, ": acme\n")},
      {"bad escape", absl::StrCat("\"\\", s, "\": acme\n")},
      {"a list", absl::StrCat("- ", s, "\n")},
      {"two documents", absl::StrCat(s, ": a\n---\n", s, ": b\n")},
  };
  TempDir dir;
  for (const auto& [what, content] : bad_files) {
    SCOPED_TRACE(what);
    const std::string path = dir.Write("tokens.yaml", content);
    absl::StatusOr<std::map<std::string, std::string>> tokens = LoadAuthTokens(path);
    ASSERT_FALSE(tokens.ok());
    EXPECT_THAT(tokens.status().message(), HasSubstr(path));
    EXPECT_THAT(tokens.status().ToString(), Not(HasSubstr(kSecretToken)));
    EXPECT_THAT(tokens.status().ToString(), Not(HasSubstr("sk-live")));
  }
  EXPECT_THAT(LoadAuthTokens(dir.Write("empty.yaml", "")).status().message(),
              HasSubstr("defines no tokens"));
  absl::StatusOr<std::map<std::string, std::string>> missing =
      LoadAuthTokens(dir.path() + "/absent.yaml");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir.path() + "/absent.yaml"));
}

TEST(Secrets, ConfigErrorsNeverRepeatATokenPlacedWhereItDoesNotBelong) {
  TempDir dir;
  const std::string s = kSecretToken;
  // The tokens file passed as the config file.
  const std::string tokens_file = dir.Write("tokens.yaml", absl::StrCat(s, ": acme\n"));
  std::string message = LoadError({"--model=/m", "--config", tokens_file});
  EXPECT_THAT(message, HasSubstr(tokens_file + ":1:1: unknown key (name not shown"));
  EXPECT_THAT(message, Not(HasSubstr(s)));
  // A token pasted into auth and tls values.
  message = LoadError(
      {"--model=/m", "--config", dir.Write("c.yaml", absl::StrCat("auth:\n  enabled: ", s, "\n"))});
  EXPECT_THAT(message, HasSubstr("auth.enabled: expected true or false"));
  EXPECT_THAT(message, Not(HasSubstr(s)));
  message = LoadError({"--model=/m", "--config",
                       dir.Write("d.yaml", absl::StrCat("auth:\n  tokens_file: {", s, ": a}\n"))});
  EXPECT_THAT(message, HasSubstr("auth.tokens_file: expected <file>, got a map"));
  EXPECT_THAT(message, Not(HasSubstr(s)));
  message = LoadError(
      {"--model=/m", "--config", dir.Write("e.yaml", absl::StrCat("auth:\n  ", s, ": a\n"))});
  EXPECT_THAT(message, HasSubstr("unknown key (name not shown"));
  EXPECT_THAT(message, Not(HasSubstr(s)));
  // Tokens in environment variables.
  message = LoadError({"--model=/m"}, {{"ANCHORSERVE_AUTH_TOKEN", s}});
  EXPECT_THAT(message, HasSubstr("ANCHORSERVE_AUTH_TOKEN"));
  EXPECT_THAT(message, Not(HasSubstr(s)));
  message = LoadError({"--model=/m"}, {{"ANCHORSERVE_AUTH_ENABLED", s}});
  EXPECT_THAT(message, Not(HasSubstr(s)));
}

}  // namespace
}  // namespace anchorserve::server
