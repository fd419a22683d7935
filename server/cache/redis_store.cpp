#include "cache/redis_store.hpp"

#include <spdlog/spdlog.h>

#include <random>

#include "cache/cache_key.hpp"
#include "cache/disk_store.hpp"

namespace flashcore {
namespace {

// Both compare the token first: a lock that expired and was taken by another
// daemon is neither extended nor deleted by its former holder.
constexpr std::string_view kRefreshScript =
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
constexpr std::string_view kReleaseScript =
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end";

std::string random_token() {
  std::random_device device;
  std::mt19937_64 generator((uint64_t{device()} << 32) ^ device());
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(generator()));
  return buffer;
}

}  // namespace

RedisStore::RedisStore(std::shared_ptr<redis::Client> client, RedisStoreOptions options)
    : client_(std::move(client)), options_(std::move(options)), token_prefix_(random_token()) {
  refresher_ = std::thread([this] { refresh_loop(); });
}

RedisStore::~RedisStore() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  refresher_.join();
}

std::optional<CachedKernel> RedisStore::load(const std::string& key) {
  if (!is_well_formed_key(key)) return std::nullopt;
  const std::string name = entry_key(key);
  auto reply = client_->command({"GET", name});
  if (!reply) {
    ++errors_;
    return std::nullopt;
  }
  if (reply->type != redis::Reply::Type::string) {
    ++misses_;
    return std::nullopt;
  }
  std::string why;
  auto entry = DiskStore::decode(reply->str, &why);
  if (entry && entry->key != key) {
    why = "metadata names key " + entry->key;
    entry.reset();
  }
  if (!entry) {
    spdlog::warn("shared cache entry {} is unusable ({}); deleting it", name, why);
    ++corrupt_;
    ++misses_;
    // Only the bad bytes: a good entry another daemon stored since stays.
    static constexpr std::string_view kDeleteIfSame =
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
        "else return 0 end";
    (void)client_->command({"EVAL", kDeleteIfSame, "1", name, reply->str});
    return std::nullopt;
  }
  ++hits_;
  return entry;
}

void RedisStore::store(const CachedKernel& entry) {
  const std::string bytes = DiskStore::encode(entry);
  auto reply = client_->command({"SET", entry_key(entry.key), bytes});
  if (!reply || reply->type == redis::Reply::Type::error) {
    ++errors_;
    if (reply) spdlog::warn("shared cache: SET {} refused: {}", entry.key, reply->str);
    return;
  }
  ++stores_;
}

Result<uint64_t> RedisStore::clear() {
  const std::string pattern = options_.prefix + "kernel:*";
  std::string cursor = "0";
  uint64_t deleted = 0;
  auto failed = [&](const std::string& why) {
    ++errors_;
    return make_error(ErrorCode::unavailable,
                      "shared tier: " + why + " (" + std::to_string(deleted) +
                          " entries deleted before that)");
  };
  // SCAN, not KEYS: it never blocks a Redis the fleet is using for long.
  do {
    auto page = client_->command({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
    if (!page) return failed(page.error().message);
    if (page->type != redis::Reply::Type::array || page->elements.size() != 2)
      return failed("unexpected SCAN reply");
    cursor = page->elements[0].str;
    std::vector<std::string_view> argv{"DEL"};
    for (const auto& name : page->elements[1].elements) argv.push_back(name.str);
    if (argv.size() == 1) continue;
    auto reply = client_->command(argv);
    if (!reply) return failed(reply.error().message);
    if (reply->type == redis::Reply::Type::error) return failed("DEL refused: " + reply->str);
    deleted += static_cast<uint64_t>(reply->integer);
  } while (cursor != "0");
  return deleted;
}

Result<bool> RedisStore::erase(const std::string& key) {
  auto reply = client_->command({"DEL", entry_key(key)});
  if (!reply) {
    ++errors_;
    return make_error(ErrorCode::unavailable, "shared tier: " + reply.error().message);
  }
  if (reply->type == redis::Reply::Type::error)
    return make_error(ErrorCode::unavailable, "shared tier: DEL refused: " + reply->str);
  return reply->integer > 0;
}

RedisStore::Lock RedisStore::lock(const std::string& key) {
  const std::string name = lock_key(key);
  std::string token;
  {
    std::lock_guard lock(mutex_);
    token = token_prefix_ + "-" + std::to_string(++next_token_);
  }
  auto reply = client_->command(
      {"SET", name, token, "NX", "PX", std::to_string(options_.lock_ttl.count())});
  if (!reply || reply->type == redis::Reply::Type::error) {
    ++errors_;
    return Lock::unavailable;
  }
  if (reply->is_nil()) {
    ++contended_;
    return Lock::held_elsewhere;
  }
  ++acquired_;
  std::lock_guard lock(mutex_);
  held_[name] = token;
  return Lock::acquired;
}

void RedisStore::unlock(const std::string& key) {
  const std::string name = lock_key(key);
  std::string token;
  {
    std::lock_guard lock(mutex_);
    auto it = held_.find(name);
    if (it == held_.end()) return;
    token = std::move(it->second);
    held_.erase(it);
  }
  // Unreachable now: the lock expires by itself.
  if (!client_->command({"EVAL", kReleaseScript, "1", name, token})) ++errors_;
}

void RedisStore::refresh_loop() {
  std::unique_lock lock(mutex_);
  const auto period = std::max(options_.lock_ttl / 3, std::chrono::milliseconds(1));
  while (!stopping_) {
    wake_.wait_for(lock, period, [this] { return stopping_; });
    if (stopping_) break;
    const auto held = held_;
    lock.unlock();
    for (const auto& [name, token] : held)
      (void)client_->command(
          {"EVAL", kRefreshScript, "1", name, token, std::to_string(options_.lock_ttl.count())});
    lock.lock();
  }
}

std::optional<uint64_t> RedisStore::server_bytes() {
  auto reply = client_->command({"INFO", "memory"});
  if (!reply || reply->type != redis::Reply::Type::string) return std::nullopt;
  constexpr std::string_view kField = "used_memory:";
  const auto at = reply->str.find(kField);
  if (at == std::string::npos) return std::nullopt;
  return std::strtoull(reply->str.c_str() + at + kField.size(), nullptr, 10);
}

RedisStoreStats RedisStore::stats() const {
  RedisStoreStats out;
  out.hits = hits_.load();
  out.misses = misses_.load();
  out.corrupt_entries = corrupt_.load();
  out.stores = stores_.load();
  out.errors = errors_.load();
  out.locks_acquired = acquired_.load();
  out.locks_contended = contended_.load();
  return out;
}

}  // namespace flashcore
