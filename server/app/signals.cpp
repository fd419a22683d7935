#include "app/signals.hpp"

#include <pthread.h>

#include <csignal>
#include <cstring>
#include <string>

namespace flashcore {
namespace {

sigset_t shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

Status block_shutdown_signals() {
  const sigset_t set = shutdown_signals();
  if (const int error = pthread_sigmask(SIG_BLOCK, &set, nullptr); error != 0)
    return make_error(ErrorCode::internal, std::string("pthread_sigmask: ") + std::strerror(error));
  return ok_status();
}

int wait_for_shutdown_signal(const std::function<void()>& on_reload) {
  const sigset_t set = shutdown_signals();
  for (;;) {
    int received = 0;
    // sigwait fails only for an invalid set; treat that as a request to stop.
    if (sigwait(&set, &received) != 0) return SIGTERM;
    if (received != SIGHUP) return received;
    if (on_reload) on_reload();
  }
}

}  // namespace flashcore
