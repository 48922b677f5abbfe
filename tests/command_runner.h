// Runs a real binary for black-box tests through the shell: exit code, stdout and stderr.
#ifndef ANCHORSERVE_TESTS_COMMAND_RUNNER_H_
#define ANCHORSERVE_TESTS_COMMAND_RUNNER_H_

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

inline Outcome RunCommand(const std::string& command_line) {
  // Unique per call: ctest runs the cases of one file as parallel processes.
  static int calls = 0;
  const std::string err_file = ::testing::TempDir() + "/command_stderr_" +
                               std::to_string(getpid()) + "_" + std::to_string(calls++);
  const std::string cmd = command_line + " 2>" + err_file;
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

#endif  // ANCHORSERVE_TESTS_COMMAND_RUNNER_H_
