// The ThreadSanitizer build checking itself (scripts/tsan-test.sh): `race` hands an int from one
// thread to another with no synchronization, which TSan must report; `mutex` and
// `notification` hand it over under an absl::Mutex and through an absl::Notification, which it
// must not report once absl_sync_annotations.cc tells it about Debian's uninstrumented Abseil.
// The script counts the reports; the exit status is TSan's.
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace {

int shared_value = 0;

void Race() {
  std::thread writer([] { shared_value = 1; });
  std::thread reader([] { std::printf("%d\n", shared_value); });
  writer.join();
  reader.join();
}

void UnderMutex() {
  absl::Mutex mu;
  bool ready = false;
  std::thread writer([&] {
    absl::MutexLock lock(&mu);
    shared_value = 2;
    ready = true;
  });
  for (;;) {
    absl::MutexLock lock(&mu);
    if (ready) {
      std::printf("%d\n", shared_value);
      break;
    }
  }
  writer.join();
}

void ThroughNotification() {
  absl::Notification done;
  std::thread writer([&] {
    shared_value = 3;
    done.Notify();
  });
  done.WaitForNotification();
  std::printf("%d\n", shared_value);
  writer.join();
}

}  // namespace

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  if (std::strcmp(mode, "race") == 0) {
    Race();
  } else if (std::strcmp(mode, "mutex") == 0) {
    UnderMutex();
  } else if (std::strcmp(mode, "notification") == 0) {
    ThroughNotification();
  } else {
    std::fprintf(stderr, "usage: tsan_selftest race|mutex|notification\n");
    return 2;
  }
  return 0;
}
