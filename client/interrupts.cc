#include "client/interrupts.h"

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

namespace anchorserve::client {

Interrupts& Interrupts::Install() {
  static Interrupts* const interrupts = [] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    auto* created = new Interrupts();
    std::thread([created] { created->Watch(); }).detach();
    return created;
  }();
  return *interrupts;
}

void Interrupts::Watch() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  for (;;) {
    int signal = 0;
    if (sigwait(&set, &signal) != 0) continue;
    {
      // The action runs under the lock, so a Scope (and what its action points to) cannot be
      // destroyed while the action runs.
      absl::MutexLock lock(&mu_);
      if (action_) {
        action_();
        continue;
      }
    }
    // Nothing to cancel: leave as a shell expects from Ctrl-C. _Exit, because other threads
    // (gRPC's) are running and static destructors under them would race.
    std::fflush(stdout);
    std::fputc('\n', stderr);
    std::_Exit(kExitInterrupted);
  }
}

Interrupts::Scope::Scope(Interrupts& interrupts, std::function<void()> action)
    : interrupts_(interrupts) {
  absl::MutexLock lock(&interrupts_.mu_);
  previous_ = std::move(interrupts_.action_);
  interrupts_.action_ = std::move(action);
}

Interrupts::Scope::~Scope() {
  absl::MutexLock lock(&interrupts_.mu_);
  interrupts_.action_ = std::move(previous_);
}

}  // namespace anchorserve::client
