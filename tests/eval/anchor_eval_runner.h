// Runs the real anchor-eval binary for black-box tests: exit code, stdout and stderr.
#ifndef ANCHORSERVE_TESTS_EVAL_ANCHOR_EVAL_RUNNER_H_
#define ANCHORSERVE_TESTS_EVAL_ANCHOR_EVAL_RUNNER_H_

#include <string>

#include "tests/command_runner.h"

namespace anchorserve::testing {

// `args` are appended to the binary's path and run by the shell.
inline Outcome AnchorEval(const std::string& args) {
  return RunCommand(std::string(ANCHORSERVE_BIN_DIR) + "/anchor-eval " + args);
}

}  // namespace anchorserve::testing

#endif  // ANCHORSERVE_TESTS_EVAL_ANCHOR_EVAL_RUNNER_H_
