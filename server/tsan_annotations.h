// Happens-before edges that ThreadSanitizer cannot see because they pass through gRPC, which a
// TSan build links uninstrumented from Debian (scripts/tsan-test.sh). Call TsanHandOff(p) just
// before giving gRPC something that it will give back on another thread (a reactor before
// StartWrite / Finish, or when returning it from a method handler, and at the end of a reaction,
// which gRPC orders before OnDone) and TsanTakeBack(p) first thing in the callback that receives
// it (OnWriteDone, OnCancel, OnDone). No-ops in other builds.
#ifndef ANCHORSERVE_SERVER_TSAN_ANNOTATIONS_H_
#define ANCHORSERVE_SERVER_TSAN_ANNOTATIONS_H_

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace anchorserve::server {

#if defined(__SANITIZE_THREAD__)
inline void TsanHandOff(const void* p) { __tsan_release(const_cast<void*>(p)); }
inline void TsanTakeBack(const void* p) { __tsan_acquire(const_cast<void*>(p)); }
#else
inline void TsanHandOff(const void*) {}
inline void TsanTakeBack(const void*) {}
#endif

}  // namespace anchorserve::server

#endif  // ANCHORSERVE_SERVER_TSAN_ANNOTATIONS_H_
