// The Tune calls in flight, each with its owner: ListTuneJobs shows a client
// its own (an admin every one), CancelTuneJob stops one. A job is here from
// the moment its Tune is admitted until its call ends.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "auth/roles.hpp"
#include "common/result.hpp"
#include "flashcore/v1/flashcore.pb.h"

namespace flashcore::service {

class TuneJobRegistry {
 public:
  // `cancel` stops the job and ends its call; it is run without the
  // registry's lock held and names who cancelled.
  int64_t add(std::string owner, std::string template_id, std::string bucket,
              std::function<void(const std::string& by)> cancel);
  // The job got a GPU (TuneStarted); a job of several families calls it once
  // per family (its database job, the family searched now).
  void started(int64_t id, int64_t database_job_id, const std::string& template_id);
  // The call ended: forgets the job and returns the seconds it held a GPU
  // (0 if it never started). Idempotent: 0 the second time.
  std::optional<double> finish(int64_t id);

  // `who`'s jobs, or every one for an admin; oldest first.
  std::vector<v1::TuneJob> list(const auth::Identity& who) const;
  // NOT_FOUND for a job `who` may not see; PERMISSION_DENIED for one it sees
  // but may not cancel (a read or compile role: it has no jobs of its own).
  Result<v1::TuneJob> cancel(int64_t id, const auth::Identity& who);

  size_t size() const;

 private:
  struct Entry {
    std::string owner, template_id, bucket;
    std::chrono::system_clock::time_point submitted;
    std::optional<std::chrono::steady_clock::time_point> started;
    int64_t database_job_id = 0;
    std::function<void(const std::string&)> cancel;
  };
  static v1::TuneJob describe(int64_t id, const Entry& entry);
  static bool visible(const Entry& entry, const auth::Identity& who);

  mutable std::mutex mutex_;
  int64_t next_id_ = 1;
  std::map<int64_t, Entry> jobs_;
};

}  // namespace flashcore::service
