// Ctrl-C (SIGINT) for anchorctl: a stream in flight is cancelled and the program goes on (the
// chat REPL keeps its session); with nothing to cancel the program exits 130. SIGINT is blocked
// in every thread and taken by one watcher thread with sigwait, so the reaction runs as
// ordinary code (it may lock and call into gRPC), never inside a signal handler.
#ifndef ANCHORSERVE_CLIENT_INTERRUPTS_H_
#define ANCHORSERVE_CLIENT_INTERRUPTS_H_

#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace anchorserve::client {

inline constexpr int kExitInterrupted = 130;  // 128 + SIGINT, as shells report it

class Interrupts {
 public:
  // Blocks SIGINT and starts the watcher. Call once, first thing in main, before any other
  // thread exists (gRPC starts threads with the first channel), so that all of them inherit
  // the blocked mask. Later calls return the same object; it is never destroyed.
  static Interrupts& Install();

  // While a Scope lives, Ctrl-C runs its action (on the watcher thread) instead of exiting.
  // Scopes nest: the innermost wins; destroying a Scope restores the one before it. Create and
  // destroy on one thread, in stack order. The action runs under the lock that the destructor
  // takes, so it never outlives its Scope; it must be quick and must not touch Scopes.
  class Scope {
   public:
    Scope(Interrupts& interrupts, std::function<void()> action);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Interrupts& interrupts_;
    std::function<void()> previous_;
  };

 private:
  Interrupts() = default;
  void Watch();

  absl::Mutex mu_;
  std::function<void()> action_ ABSL_GUARDED_BY(mu_);  // empty: exit kExitInterrupted
};

}  // namespace anchorserve::client

#endif  // ANCHORSERVE_CLIENT_INTERRUPTS_H_
