// serving_bench end to end on the CPU with the embedded default model at toy sizes: it exits 0,
// prints the benchmark 4 and 5 tables with numbers in them, writes its JSON, and anchor mode
// keeps less KV per session than full mode. Timings are never asserted (any machine, any load).
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/command_runner.h"

namespace anchorserve::bench {
namespace {

testing::Outcome RunServingBench(const std::string& args) {
  return testing::RunCommand(std::string(SERVING_BENCH_BIN) + " " + args);
}

// The cells of the Markdown table row that starts with `first_cell`, or empty.
std::vector<std::string> Row(const std::string& out, const std::string& first_cell) {
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("| " + first_cell + " |", 0) != 0) continue;
    std::vector<std::string> cells;
    std::stringstream s(line.substr(1));
    std::string cell;
    while (std::getline(s, cell, '|')) {
      const size_t b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
    }
    return cells;
  }
  return {};
}

bool Numeric(const std::string& cell) {
  static const std::regex number(R"(-?[0-9]+(\.[0-9]+)?)");
  return std::regex_match(cell, number);
}

TEST(ServingBenchTest, PrintsBothTablesAndAnchorModeKeepsLessKv) {
  const std::string json_path =
      ::testing::TempDir() + "/serving_bench_" + std::to_string(getpid()) + ".json";
  const testing::Outcome run =
      RunServingBench(std::string("--model ") + ANCHORSERVE_DEFAULT_MODEL_DIR +
                      " --device cpu --dtype float32 --threads 1 --sessions 2 --turns 3"
                      " --gen 4 --batch 4 --batch-gen 16 --json " +
                      json_path);
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  EXPECT_NE(run.out.find("Benchmark 4, multi-turn serving"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("Benchmark 5, engine CPU overhead per step"), std::string::npos)
      << run.out;

  // Benchmark 4: one row per mode; every cell but the mode and the tier is a number.
  for (const std::string mode : {"anchor", "full"}) {
    const std::vector<std::string> cells = Row(run.out, mode);
    ASSERT_EQ(cells.size(), 14u) << mode << "\n" << run.out;
    for (size_t i = 1; i + 1 < cells.size(); ++i) {
      EXPECT_TRUE(Numeric(cells[i])) << mode << " column " << i << ": '" << cells[i] << "'";
    }
  }
  // Benchmark 5: the batch row. The engine-thread timing columns (mean batch, step, model,
  // overhead) read n/a while the engine reports no step timings; the rest are always numbers.
  const std::vector<std::string> b5 = Row(run.out, "4");
  ASSERT_EQ(b5.size(), 9u) << run.out;
  for (size_t i = 0; i < b5.size(); ++i) {
    const bool engine_timing = i >= 2 && i <= 6;
    EXPECT_TRUE(Numeric(b5[i]) || (engine_timing && b5[i] == "n/a"))
        << "column " << i << ": '" << b5[i] << "'";
  }

  std::ifstream in(json_path);
  ASSERT_TRUE(in.good()) << json_path;
  const nlohmann::json j = nlohmann::json::parse(in);
  std::remove(json_path.c_str());
  EXPECT_EQ(j["errors"], 0);
  const auto& anchor = j["benchmark4"]["anchor"]["kv_per_session"];
  const auto& full = j["benchmark4"]["full"]["kv_per_session"];
  EXPECT_GT(anchor["kept_bytes"].get<double>(), 0);
  EXPECT_LT(anchor["kept_bytes"].get<double>(), full["kept_bytes"].get<double>());
  EXPECT_LT(anchor["kept_tokens"].get<double>(), full["kept_tokens"].get<double>());
  EXPECT_LE(anchor["held_bytes"].get<double>(), full["held_bytes"].get<double>());
  // Both modes saw the same history.
  EXPECT_EQ(anchor["history_tokens"].get<double>(), full["history_tokens"].get<double>());
  EXPECT_GT(j["benchmark4"]["sessions_at_equal_kv_memory"]["kept_bytes"].get<double>(), 1.0);
  EXPECT_EQ(j["benchmark5"]["batch"], 4);
  EXPECT_GT(j["benchmark5"]["steps"].get<int64_t>(), 0);
}

}  // namespace
}  // namespace anchorserve::bench
