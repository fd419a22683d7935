#include "app/drain.hpp"

#include <grpc/grpc.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

namespace flashcore {
namespace {

// How often the sweeper looks at the daemon's calls: a drain happens once,
// and a call gRPC holds waits at most this much longer than `settle`.
constexpr std::chrono::milliseconds kPoll{10};

}  // namespace

void drain_server(grpc::Server& server, std::chrono::system_clock::time_point deadline,
                  const std::function<bool()>& holds_calls, std::chrono::milliseconds settle) {
  std::mutex mutex;
  std::condition_variable returned_cv;
  bool returned = false;  // Shutdown has returned; under mutex
  std::thread sweeper([&] {
    std::unique_lock lock(mutex);
    std::optional<std::chrono::steady_clock::time_point> idle_since;
    while (!returned && std::chrono::system_clock::now() < deadline) {
      const auto now = std::chrono::steady_clock::now();
      if (holds_calls()) idle_since.reset();
      else if (!idle_since) idle_since = now;
      else if (now - *idle_since >= settle) {
        spdlog::info("shutdown: the daemon's calls have ended; cancelling what gRPC holds");
        // What Shutdown does at the deadline; under the lock, so always
        // before it has returned.
        grpc_server_cancel_all_calls(server.c_server());
        return;
      }
      returned_cv.wait_for(lock, kPoll);
    }
  });
  server.Shutdown(deadline);
  {
    std::lock_guard lock(mutex);
    returned = true;
  }
  returned_cv.notify_all();
  sweeper.join();
}

}  // namespace flashcore
