// anchorctl's command line without a server: flag parsing (unknown and forbidden flags are
// usage errors), where the bearer token comes from (file over environment, never a flag), and
// how generation flags fill a request.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "client/connection.h"
#include "client/flag_parser.h"
#include "client/generation_flags.h"
#include "gtest/gtest.h"

namespace anchorserve::client {
namespace {

std::string WriteTempFile(const std::string& name, const std::string& contents) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

TEST(FlagParserTest, ValuesInBothSpellingsAndPositionals) {
  FlagParser parser;
  std::string server;
  int64_t n = 0;
  double t = 0;
  bool json = false;
  std::vector<std::string> stops;
  parser.AddString("server", &server, "");
  parser.AddInt("n", &n, 1, 10, "");
  parser.AddDouble("t", &t, 0, 2, "");
  parser.AddBool("json", &json, "");
  parser.AddRepeatedString("stop", &stops, "");
  ASSERT_TRUE(parser
                  .Parse({"get", "--server", "h:1", "--n=3", "id-1", "--t", "0.5", "--json",
                          "--stop", "a", "--stop=b", "--", "--not-a-flag"})
                  .ok());
  EXPECT_EQ(server, "h:1");
  EXPECT_EQ(n, 3);
  EXPECT_DOUBLE_EQ(t, 0.5);
  EXPECT_TRUE(json);
  EXPECT_EQ(stops, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(parser.positionals(), (std::vector<std::string>{"get", "id-1", "--not-a-flag"}));
  EXPECT_TRUE(parser.Seen("server"));
  EXPECT_FALSE(parser.Seen("stop-ids"));
}

TEST(FlagParserTest, BadInputNamesTheFlag) {
  struct Case {
    std::vector<std::string> args;
    std::string message_part;
  };
  const std::vector<Case> cases = {
      {{"--bogus"}, "unknown flag --bogus"},
      {{"-x"}, "unknown flag -x"},
      {{"--n"}, "--n needs a value"},
      {{"--n", "abc"}, "--n: expected an integer"},
      {{"--n", "11"}, "outside [1, 10]"},
      {{"--t", "nan"}, "--t: expected a number"},
      {{"--json=yes"}, "--json takes no value"},
  };
  for (const Case& c : cases) {
    FlagParser parser;
    int64_t n = 0;
    double t = 0;
    bool json = false;
    parser.AddInt("n", &n, 1, 10, "");
    parser.AddDouble("t", &t, 0, 2, "");
    parser.AddBool("json", &json, "");
    const absl::Status status = parser.Parse(c.args);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.args[0];
    EXPECT_NE(status.message().find(c.message_part), std::string::npos) << status.message();
  }
}

TEST(ConnectionFlagsTest, TokenFlagIsRefusedWithoutEchoingTheValue) {
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--token", "s3cret-value"},
                                               std::vector<std::string>{"--token=s3cret-value"}}) {
    FlagParser parser;
    ConnectionFlags flags;
    AddConnectionFlags(parser, &flags);
    const absl::Status status = parser.Parse(args);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("--token-file"), std::string::npos) << status.message();
    EXPECT_EQ(status.message().find("s3cret-value"), std::string::npos) << status.message();
  }
}

TEST(LoadBearerTokenTest, FileWinsOverEnvironmentAndIsTrimmed) {
  const std::string path = WriteTempFile("token", "  from-file\n");
  EXPECT_EQ(LoadBearerToken(path, "from-env").value(), "from-file");
  EXPECT_EQ(LoadBearerToken("", "from-env\n").value(), "from-env");
  EXPECT_EQ(LoadBearerToken("", nullptr).value(), "");
}

TEST(LoadBearerTokenTest, BadTokensAreRefusedWithoutEchoingThem) {
  EXPECT_EQ(LoadBearerToken("/nonexistent/token", nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadBearerToken(WriteTempFile("empty", "\n"), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status spaced = LoadBearerToken("", "two words").status();
  EXPECT_EQ(spaced.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(spaced.message().find("two words"), std::string::npos);
  EXPECT_EQ(LoadBearerToken("", "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConnectionTest, CreateValidatesWithoutContactingTheServer) {
  ConnectionFlags flags;
  flags.server = "no-port";
  EXPECT_EQ(Connection::Create(flags).status().code(), absl::StatusCode::kInvalidArgument);
  flags.server = "127.0.0.1:1";
  flags.ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(Connection::Create(flags).status().code(), absl::StatusCode::kInvalidArgument);
  flags.ca_file.clear();
  EXPECT_TRUE(Connection::Create(flags).ok());
}

TEST(GenerationFlagsTest, UnsetSamplingStaysUnset) {
  FlagParser parser;
  GenerationFlags flags;
  flags.max_tokens = 32;
  AddGenerationFlags(parser, &flags);
  ASSERT_TRUE(parser.Parse({"--temperature", "0", "--mode", "full", "--stop", "."}).ok());
  anchorserve::v1::GenerateRequest request;
  ASSERT_TRUE(ApplyGenerationFlags(flags, &request).ok());
  EXPECT_EQ(request.max_tokens(), 32);
  EXPECT_TRUE(request.has_temperature());
  EXPECT_EQ(request.temperature(), 0.0f);
  EXPECT_FALSE(request.has_top_p());
  EXPECT_FALSE(request.has_seed());
  EXPECT_EQ(request.mode(), anchorserve::v1::ATTENTION_MODE_FULL);
  ASSERT_EQ(request.stop_size(), 1);
}

TEST(GenerationFlagsTest, UnknownWordsNameTheFlag) {
  GenerationFlags flags;
  flags.mode = "sparse";
  anchorserve::v1::GenerateRequest request;
  absl::Status status = ApplyGenerationFlags(flags, &request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--mode"), std::string::npos);
  flags.mode = "anchor";
  flags.anchor_insertion = "everywhere";
  status = ApplyGenerationFlags(flags, &request);
  EXPECT_NE(status.message().find("--anchor-insertion"), std::string::npos);
}

}  // namespace
}  // namespace anchorserve::client
