// Reading evaluation data files whole (held-out text, task files).
#ifndef ANCHORSERVE_EVAL_TEXT_FILE_H_
#define ANCHORSERVE_EVAL_TEXT_FILE_H_

#include <string>

#include "absl/status/statusor.h"

namespace anchorserve::eval {

// The bytes of `path`. NotFound when it cannot be opened, DataLoss on a read error; both
// messages start with the path. Thread-safe.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace anchorserve::eval

#endif  // ANCHORSERVE_EVAL_TEXT_FILE_H_
