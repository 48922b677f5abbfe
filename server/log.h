// One line per event on stderr: time, event, request id, a hash of the session id (never the id,
// a prompt or tokens), then key=value details.
#ifndef ANCHORSERVE_SERVER_LOG_H_
#define ANCHORSERVE_SERVER_LOG_H_

#include <string>

#include "absl/strings/string_view.h"

namespace anchorserve::server {

// "-" when there is no session.
std::string SessionHash(absl::string_view session_id);

void LogEvent(absl::string_view event, absl::string_view request_id,
              absl::string_view session_id, absl::string_view details);

}  // namespace anchorserve::server

#endif  // ANCHORSERVE_SERVER_LOG_H_
