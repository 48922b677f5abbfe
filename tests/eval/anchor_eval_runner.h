// Runs the real anchor-eval binary for black-box tests: exit code, stdout and stderr.
#ifndef ANCHORSERVE_TESTS_EVAL_ANCHOR_EVAL_RUNNER_H_
#define ANCHORSERVE_TESTS_EVAL_ANCHOR_EVAL_RUNNER_H_

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace anchorserve::testing {

struct Outcome {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// `args` are appended to the binary's path and run by the shell.
inline Outcome AnchorEval(const std::string& args) {
  // Unique per call: ctest runs the cases of one file as parallel processes.
  static int calls = 0;
  const std::string err_file = ::testing::TempDir() + "/anchor_eval_stderr_" +
                               std::to_string(getpid()) + "_" + std::to_string(calls++);
  const std::string cmd =
      std::string(ANCHORSERVE_BIN_DIR) + "/anchor-eval " + args + " 2>" + err_file;
  Outcome run;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return run;
  std::array<char, 65536> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) run.out.append(buffer.data(), n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_file);
  std::stringstream s;
  s << in.rdbuf();
  run.err = s.str();
  std::remove(err_file.c_str());
  return run;
}

}  // namespace anchorserve::testing

#endif  // ANCHORSERVE_TESTS_EVAL_ANCHOR_EVAL_RUNNER_H_
