// Fuzzes the configuration loaders: the server's YAML file, environment and flags
// (server/config.h), the bearer-token file (ParseAuthTokens) and a model's config.json
// (model/model_config.h). Every input goes to all of them: as YAML, as a token file, as JSON,
// and line by line as ANCHORSERVE_* variables ("NAME=value" lines) and flags (other lines).
//
// Properties besides no crash: errors are InvalidArgument (the status the loaders promise);
// whatever configuration comes out, EffectiveConfigYaml of it reads back to the same
// configuration, and a config.json that parses writes back to one that parses to the same
// ModelConfig (both are documented round trips); accepted token files hold only tokens and
// tenant ids of the documented alphabets.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "fuzz/fuzz_check.h"
#include "model/model_config.h"
#include "server/config.h"

namespace anchorserve::server {
namespace {

void CheckRoundTrip(const ServerConfig& config) {
  ServerConfig again;
  ConfigSources sources;
  const std::string yaml = EffectiveConfigYaml(config);
  const absl::Status status = ApplyYamlText(yaml, "effective.yaml", &again, &sources);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n%s\n", status.ToString().c_str(), yaml.c_str());
  }
  FUZZ_CHECK(status.ok());
  FUZZ_CHECK(again == config);
  FUZZ_CHECK(sources.size() == ConfigKeys().size());  // every key written, none twice
}

void CheckStatus(const absl::Status& status) {
  FUZZ_CHECK(status.ok() || absl::IsInvalidArgument(status));
}

void FuzzYaml(absl::string_view text) {
  ServerConfig config;
  ConfigSources sources;
  const absl::Status status = ApplyYamlText(text, "fuzz.yaml", &config, &sources);
  CheckStatus(status);
  if (!status.ok()) return;
  CheckStatus(ValidateServerConfig(config, &sources));
  CheckRoundTrip(config);
}

void FuzzEnvironmentAndFlags(absl::string_view text) {
  Environment env;
  std::vector<std::string> args;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    const size_t equals = line.find('=');
    if (absl::StartsWith(line, "ANCHORSERVE_") && equals != absl::string_view::npos) {
      env[std::string(line.substr(0, equals))] = std::string(line.substr(equals + 1));
    } else if (!line.empty()) {
      args.emplace_back(line);
    }
  }
  ServerConfig config;
  ConfigSources sources;
  const absl::Status env_status = ApplyEnvironment(env, &config, &sources);
  CheckStatus(env_status);
  absl::StatusOr<CommandLine> command_line = ParseCommandLine(args);
  CheckStatus(command_line.status());
  if (!env_status.ok() || !command_line.ok()) return;
  const absl::Status flags_status = ApplyCommandLine(*command_line, &config, &sources);
  CheckStatus(flags_status);
  if (!flags_status.ok()) return;
  CheckStatus(ValidateServerConfig(config, &sources));
  CheckRoundTrip(config);
}

void FuzzAuthTokens(absl::string_view text) {
  absl::StatusOr<std::map<std::string, std::string>> tokens = ParseAuthTokens(text, "tokens.yaml");
  CheckStatus(tokens.status());
  if (!tokens.ok()) return;
  FUZZ_CHECK(!tokens->empty());
  for (const auto& [token, tenant] : *tokens) {
    FUZZ_CHECK(!token.empty());
    for (char c : token) FUZZ_CHECK(c > 0x20 && c < 0x7f);
    FUZZ_CHECK(!tenant.empty() && tenant.size() <= 128);
  }
}

void FuzzModelConfig(absl::string_view text) {
  absl::StatusOr<model::ModelConfig> config = model::ParseModelConfig(text, "config.json");
  CheckStatus(config.status());
  if (!config.ok()) return;
  FUZZ_CHECK(model::ValidateModelConfig(*config).ok());
  absl::StatusOr<model::ModelConfig> again =
      model::ParseModelConfig(model::ModelConfigToJson(*config), "written config.json");
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == *config);
}

}  // namespace
}  // namespace anchorserve::server

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace anchorserve::server;  // NOLINT(build/namespaces): a fuzz entry point
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  FuzzYaml(text);
  FuzzEnvironmentAndFlags(text);
  FuzzAuthTokens(text);
  FuzzModelConfig(text);
  return 0;
}
