#include "auth/quotas.hpp"

#include <cmath>
#include <cstdio>

namespace flashcore::auth {
namespace {

Error exhausted(std::string message) {
  return make_error(ErrorCode::resource_exhausted, std::move(message));
}

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", seconds);
  return text;
}

}  // namespace

void Quotas::set_clock_for_testing(std::function<Clock::time_point()> now) {
  std::lock_guard lock(mutex_);
  now_ = std::move(now);
}

void Quotas::expire(Usage& usage, Clock::time_point now) {
  while (!usage.gpu.empty() && usage.gpu.front().first + kWindow <= now) usage.gpu.pop_front();
}

Status Quotas::acquire_compile(const std::string& client) {
  std::lock_guard lock(mutex_);
  Usage& usage = usage_[client];
  if (limits_.concurrent_compiles > 0 && usage.compiles >= limits_.concurrent_compiles)
    return exhausted("quota concurrent_compiles: client '" + client + "' has " +
                     std::to_string(usage.compiles) + " of " +
                     std::to_string(limits_.concurrent_compiles) +
                     " compiles in flight; frees when one of them finishes");
  ++usage.compiles;
  return ok_status();
}

void Quotas::release_compile(const std::string& client) {
  std::lock_guard lock(mutex_);
  auto it = usage_.find(client);
  if (it != usage_.end() && it->second.compiles > 0) --it->second.compiles;
}

Status Quotas::admit_tune_job(const std::string& client, std::optional<double>& gpu_seconds_left) {
  std::lock_guard lock(mutex_);
  Usage& usage = usage_[client];
  const auto at = now();
  expire(usage, at);
  if (limits_.tune_jobs > 0 && usage.tune_jobs >= limits_.tune_jobs)
    return exhausted("quota tune_jobs: client '" + client + "' has " +
                     std::to_string(usage.tune_jobs) + " of " + std::to_string(limits_.tune_jobs) +
                     " tune jobs queued or running; frees when one of them ends (ListTuneJobs, "
                     "CancelTuneJob)");
  gpu_seconds_left.reset();
  if (limits_.tune_gpu_seconds_per_hour > 0) {
    double used = 0;
    for (const auto& [end, seconds] : usage.gpu) used += seconds;
    if (used >= limits_.tune_gpu_seconds_per_hour) {
      // The oldest charges roll out of the hour first: when enough have, the
      // client is under its limit again.
      double rolling = used;
      Clock::duration frees = kWindow;
      for (const auto& [end, seconds] : usage.gpu) {
        rolling -= seconds;
        if (rolling < limits_.tune_gpu_seconds_per_hour) {
          frees = end + kWindow - at;
          break;
        }
      }
      const double frees_s = std::chrono::duration<double>(frees).count();
      return exhausted("quota tune_gpu_seconds_per_hour: client '" + client + "' used " +
                       seconds_text(used) + " of " +
                       seconds_text(limits_.tune_gpu_seconds_per_hour) +
                       " GPU-seconds of tuning in the last hour; frees in " +
                       std::to_string(static_cast<long long>(std::ceil(frees_s))) + " s");
    }
    gpu_seconds_left = limits_.tune_gpu_seconds_per_hour - used;
  }
  ++usage.tune_jobs;
  return ok_status();
}

void Quotas::end_tune_job(const std::string& client, double gpu_seconds) {
  std::lock_guard lock(mutex_);
  Usage& usage = usage_[client];
  if (usage.tune_jobs > 0) --usage.tune_jobs;
  if (gpu_seconds > 0) usage.gpu.emplace_back(now(), gpu_seconds);
}

double Quotas::gpu_seconds_used(const std::string& client) {
  std::lock_guard lock(mutex_);
  Usage& usage = usage_[client];
  expire(usage, now());
  double used = 0;
  for (const auto& [end, seconds] : usage.gpu) used += seconds;
  return used;
}

}  // namespace flashcore::auth
