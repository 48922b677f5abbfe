// Status propagation helpers (Abseil 20220623 ships none).
#ifndef ANCHORSERVE_COMMON_STATUS_MACROS_H_
#define ANCHORSERVE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ANCHORSERVE_CONCAT_INNER_(a, b) a##b
#define ANCHORSERVE_CONCAT_(a, b) ANCHORSERVE_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)            \
  do {                                   \
    ::absl::Status _status_ = (expr);    \
    if (!_status_.ok()) return _status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns `x` from an absl::StatusOr or
// returns its error status.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(ANCHORSERVE_CONCAT_(_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return statusor.status();      \
  lhs = std::move(statusor).value()

#endif  // ANCHORSERVE_COMMON_STATUS_MACROS_H_
