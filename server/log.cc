#include "server/log.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace anchorserve::server {

std::string SessionHash(absl::string_view session_id) {
  if (session_id.empty()) return "-";
  uint64_t h = 1469598103934665603ULL;  // FNV-1a: stable across runs, not reversible by eye
  for (unsigned char c : session_id) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return absl::StrFormat("%08x", static_cast<uint32_t>(h ^ (h >> 32)));
}

void LogEvent(absl::string_view event, absl::string_view request_id,
              absl::string_view session_id, absl::string_view details) {
  const std::string line = absl::StrFormat(
      "%s anchorserve %s request=%s session=%s %s\n",
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), event,
      request_id, SessionHash(session_id), details);
  std::fputs(line.c_str(), stderr);
}

}  // namespace anchorserve::server
