// A file descriptor closed on scope exit.
#ifndef ANCHORSERVE_COMMON_SCOPED_FD_H_
#define ANCHORSERVE_COMMON_SCOPED_FD_H_

#include <unistd.h>

namespace anchorserve {

class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the error (close can report deferred write errors, e.g. on NFS).
  int Close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

}  // namespace anchorserve

#endif  // ANCHORSERVE_COMMON_SCOPED_FD_H_
