// Per-client limits on a shared box (DESIGN.md §7): compiles in flight, tune
// jobs queued or running, and GPU-seconds of tuning in the last hour. A
// refusal is RESOURCE_EXHAUSTED naming the quota, the client and when it
// frees. A limit of 0 is no limit. With authentication off every caller is
// the one client "anonymous", so the limits are the daemon's.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "common/result.hpp"

namespace flashcore::auth {

struct QuotaLimits {
  size_t concurrent_compiles = 0;         // Compile and Validate calls in flight
  size_t tune_jobs = 0;                   // Tune jobs queued or running
  double tune_gpu_seconds_per_hour = 0;   // GPU time of finished jobs, sliding hour
};

class Quotas {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::seconds kWindow{3600};

  explicit Quotas(QuotaLimits limits) : limits_(limits) {}

  // Takes one compile slot for `client`, or refuses.
  Status acquire_compile(const std::string& client);
  void release_compile(const std::string& client);

  // Admits one tune job for `client` (counted until end_tune_job), or refuses
  // when its jobs or its GPU-seconds of the last hour are at their limit.
  // On admission, `gpu_seconds_left` is what the client may still use this
  // hour (nullopt: no limit): the job's time budget is cut to it.
  Status admit_tune_job(const std::string& client, std::optional<double>& gpu_seconds_left);
  // The job ended after holding a GPU for `gpu_seconds` (0: never started).
  void end_tune_job(const std::string& client, double gpu_seconds);

  // GPU-seconds `client` used in the last hour.
  double gpu_seconds_used(const std::string& client);
  const QuotaLimits& limits() const { return limits_; }

  // For tests: a clock that moves only when told.
  void set_clock_for_testing(std::function<Clock::time_point()> now);

 private:
  struct Usage {
    size_t compiles = 0;
    size_t tune_jobs = 0;
    std::deque<std::pair<Clock::time_point, double>> gpu;  // (end, seconds), oldest first
  };
  Clock::time_point now() const { return now_ ? now_() : Clock::now(); }
  void expire(Usage& usage, Clock::time_point now);  // caller holds mutex_

  QuotaLimits limits_;
  std::function<Clock::time_point()> now_;
  std::mutex mutex_;
  std::map<std::string, Usage> usage_;
};

}  // namespace flashcore::auth
