#include "app/accept_guard.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string_view>

namespace flashcore {
namespace {

std::mutex spare_mutex;
int spare_fd = -1;
std::atomic<size_t> shed{0};
std::atomic<int64_t> last_warning_ms{0};
// FLASHCORE_ACCEPT_GUARD=off leaves gRPC's own handling in place: only the
// test that shows what the guard prevents sets it.
std::atomic<bool> enabled{true};

int open_spare() { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }

int raw_accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  return static_cast<int>(::syscall(SYS_accept4, fd, addr, len, flags));
}

void warn_now_and_then(size_t dropped) {
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t last = last_warning_ms.load();
  if (now - last < 5000 || !last_warning_ms.compare_exchange_strong(last, now)) return;
  spdlog::warn("out of file descriptors: closed {} incoming connection(s) at once so far; the "
               "listener stays open and accepts again when descriptors free up (raise ulimit -n)",
               dropped);
}

// The listener ran out of descriptors: shed what waits in its backlog
// through the spare slot, then report EAGAIN so gRPC re-arms the listener.
void shed_backlog(int listener) {
  std::lock_guard lock(spare_mutex);
  if (spare_fd < 0) spare_fd = open_spare();  // freed since the last time?
  if (spare_fd >= 0) {
    ::close(spare_fd);
    spare_fd = -1;
    for (;;) {
      const int fd = raw_accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) break;  // EAGAIN: the backlog is empty (or EMFILE: another thread took the slot)
      ::close(fd);
      ++shed;
    }
    spare_fd = open_spare();
  }
  warn_now_and_then(shed.load());
}

}  // namespace

void install_accept_guard() {
  if (const char* setting = std::getenv("FLASHCORE_ACCEPT_GUARD");
      setting != nullptr && std::string_view(setting) == "off") {
    enabled = false;
    spdlog::warn("FLASHCORE_ACCEPT_GUARD=off: an EMFILE on accept stops the listener for good");
    return;
  }
  std::lock_guard lock(spare_mutex);
  if (spare_fd < 0) spare_fd = open_spare();
}

size_t connections_shed_for_descriptors() { return shed.load(); }

}  // namespace flashcore

// Replaces libc's accept4 for the whole process (gRPC's listener calls it
// through the PLT; the executable exports this definition, see
// server/CMakeLists.txt). Every other error and every success pass through.
extern "C" int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  const int accepted = flashcore::raw_accept4(fd, addr, len, flags);
  if (accepted >= 0 || (errno != EMFILE && errno != ENFILE) || !flashcore::enabled) return accepted;
  flashcore::shed_backlog(fd);
  errno = EAGAIN;
  return -1;
}
