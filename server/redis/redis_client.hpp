// A Redis connection shared by the daemon's fleet parts (the shared cubin
// tier, fleet locks, tuned configs), over hiredis' blocking API with
// connect and command timeouts. hiredis contexts are not thread-safe, so the
// client keeps a small pool of them; each command borrows one.
//
// Redis being down never stops the daemon: a failed connect or command marks
// the server down, logged once, and for `retry_after` every command fails at
// once (unavailable) without touching the network, so serving from the
// daemon's own tiers is not slowed by timeouts. The next command after that
// reconnects by itself; the recovery is logged once too.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

struct redisContext;

namespace flashcore::redis {

// redis://[user:password@]host[:port][/db]
struct RedisUrl {
  std::string host;
  int port = 6379;
  std::string user;      // empty: AUTH password (Redis < 6 style), or no AUTH
  std::string password;  // empty: no AUTH
  int db = 0;
  // host:port/db, never the password: what logs and errors name.
  std::string display() const;
};
Result<RedisUrl> parse_redis_url(std::string_view url);

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{500};
  std::chrono::milliseconds command_timeout{1000};
  // After a failure, commands fail at once for this long, then one reconnects.
  std::chrono::milliseconds retry_after{1000};
  size_t max_idle_connections = 8;
};

// One reply, flattened: enough for the commands the daemon sends.
struct Reply {
  enum class Type { nil, string, integer, status, error, array };
  Type type = Type::nil;
  std::string str;  // string, status and error
  int64_t integer = 0;
  std::vector<Reply> elements;

  bool is_nil() const { return type == Type::nil; }
};

class Client {
 public:
  Client(RedisUrl url, ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends one command; a Redis error reply is a value (Type::error), an
  // unreachable server an Error (unavailable).
  Result<Reply> command(const std::vector<std::string_view>& argv);

  // False while the server is marked down.
  bool available() const { return !down_.load(); }
  const RedisUrl& url() const { return url_; }
  size_t failures() const { return failures_.load(); }  // connects or commands that failed
  size_t reconnects() const { return reconnects_.load(); }

 private:
  Result<Reply> command(const std::vector<std::string_view>& argv, bool retry_stale);
  Result<redisContext*> connect();
  void mark_down(const std::string& why);
  void mark_up();

  RedisUrl url_;
  ClientOptions options_;
  std::mutex mutex_;
  std::vector<redisContext*> idle_;
  std::chrono::steady_clock::time_point retry_at_;  // under mutex_
  std::atomic<bool> down_{false};
  std::atomic<size_t> failures_{0}, reconnects_{0};
};

}  // namespace flashcore::redis
