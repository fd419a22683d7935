#include "service/tune_jobs.hpp"

namespace flashcore::service {

int64_t TuneJobRegistry::add(std::string owner, std::string template_id, std::string bucket,
                             std::function<void(const std::string&)> cancel) {
  std::lock_guard lock(mutex_);
  const int64_t id = next_id_++;
  Entry entry;
  entry.owner = std::move(owner);
  entry.template_id = std::move(template_id);
  entry.bucket = std::move(bucket);
  entry.submitted = std::chrono::system_clock::now();
  entry.cancel = std::move(cancel);
  jobs_.emplace(id, std::move(entry));
  return id;
}

void TuneJobRegistry::started(int64_t id, int64_t database_job_id,
                              const std::string& template_id) {
  std::lock_guard lock(mutex_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  // A job of several families starts once per family: its GPU time counts
  // from the first start, and the list shows the family searched now.
  if (!it->second.started) it->second.started = std::chrono::steady_clock::now();
  it->second.database_job_id = database_job_id;
  if (!template_id.empty()) it->second.template_id = template_id;
}

std::optional<double> TuneJobRegistry::finish(int64_t id) {
  std::function<void(const std::string&)> dropped;  // destroyed outside the lock
  std::lock_guard lock(mutex_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return std::nullopt;
  double seconds = 0;
  if (it->second.started)
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - *it->second.started)
                  .count();
  dropped = std::move(it->second.cancel);
  jobs_.erase(it);
  return seconds;
}

bool TuneJobRegistry::visible(const Entry& entry, const auth::Identity& who) {
  return who.may(auth::Role::admin) || entry.owner == who.client;
}

v1::TuneJob TuneJobRegistry::describe(int64_t id, const Entry& entry) {
  v1::TuneJob job;
  job.set_id(id);
  job.set_owner(entry.owner);
  job.set_state(entry.started ? "running" : "queued");
  job.set_template_id(entry.template_id);
  job.set_bucket(entry.bucket);
  job.set_submitted_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                entry.submitted.time_since_epoch())
                                .count());
  if (entry.started)
    job.set_gpu_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - *entry.started).count());
  job.set_database_job_id(entry.database_job_id);
  return job;
}

std::vector<v1::TuneJob> TuneJobRegistry::list(const auth::Identity& who) const {
  std::lock_guard lock(mutex_);
  std::vector<v1::TuneJob> out;
  for (const auto& [id, entry] : jobs_)
    if (visible(entry, who)) out.push_back(describe(id, entry));
  return out;
}

Result<v1::TuneJob> TuneJobRegistry::cancel(int64_t id, const auth::Identity& who) {
  std::function<void(const std::string&)> cancel;
  v1::TuneJob job;
  {
    std::lock_guard lock(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || !visible(it->second, who))
      return make_error(ErrorCode::not_found,
                        "id: no tune job " + std::to_string(id) + " of client '" + who.client +
                            "' is queued or running");
    if (!who.may(auth::Role::tune))
      return make_error(ErrorCode::permission_denied,
                        "needs role tune; client '" + who.client + "' has " +
                            std::string(auth::role_name(who.role)));
    job = describe(id, it->second);
    cancel = it->second.cancel;
  }
  if (cancel) cancel(who.client);
  return job;
}

size_t TuneJobRegistry::size() const {
  std::lock_guard lock(mutex_);
  return jobs_.size();
}

}  // namespace flashcore::service
