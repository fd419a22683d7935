#include "redis/redis_client.hpp"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <cerrno>
#include <charconv>

namespace flashcore::redis {
namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

Reply flatten(const redisReply* reply) {
  Reply out;
  switch (reply->type) {
    case REDIS_REPLY_STRING:
      out.type = Reply::Type::string;
      out.str.assign(reply->str, reply->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = Reply::Type::status;
      out.str.assign(reply->str, reply->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = Reply::Type::error;
      out.str.assign(reply->str, reply->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = Reply::Type::integer;
      out.integer = reply->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = Reply::Type::array;
      for (size_t i = 0; i < reply->elements; ++i) out.elements.push_back(flatten(reply->element[i]));
      break;
    default:
      out.type = Reply::Type::nil;
  }
  return out;
}

// %XX in the user information, so a password may hold '@' or ':'.
std::string percent_decode(std::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() && std::isxdigit(static_cast<unsigned char>(in[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

bool parse_int(std::string_view text, int& out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

std::string RedisUrl::display() const {
  return host + ":" + std::to_string(port) + "/" + std::to_string(db);
}

Result<RedisUrl> parse_redis_url(std::string_view url) {
  // Errors never echo a password: the user information is left out.
  std::string shown(url);
  if (const auto at = shown.rfind('@'); at != std::string::npos) {
    const auto scheme_end = shown.find("://");
    shown.replace(scheme_end == std::string::npos ? 0 : scheme_end + 3,
                  at + 1 - (scheme_end == std::string::npos ? 0 : scheme_end + 3), "***@");
  }
  const auto bad = [&](const std::string& why) {
    return make_error(ErrorCode::invalid_argument,
                      "redis: '" + shown + "' is not redis://[user:password@]host:port/db: " + why);
  };
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, kScheme.size()) != kScheme) return bad("it must start with redis://");
  std::string_view rest = url.substr(kScheme.size());
  RedisUrl out;
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const auto colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      out.password = percent_decode(userinfo);  // redis://password@host
    } else {
      out.user = percent_decode(userinfo.substr(0, colon));
      out.password = percent_decode(userinfo.substr(colon + 1));
    }
  }
  std::string_view hostport = rest;
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) {
    hostport = rest.substr(0, slash);
    const std::string_view db = rest.substr(slash + 1);
    if (!db.empty() && (!parse_int(db, out.db) || out.db < 0)) return bad("the db must be a number >= 0");
  }
  if (const auto colon = hostport.rfind(':'); colon != std::string_view::npos) {
    if (!parse_int(hostport.substr(colon + 1), out.port) || out.port <= 0 || out.port > 65535)
      return bad("the port must be in [1, 65535]");
    hostport = hostport.substr(0, colon);
  }
  if (hostport.empty()) return bad("the host is missing");
  out.host = std::string(hostport);
  return out;
}

Client::Client(RedisUrl url, ClientOptions options)
    : url_(std::move(url)), options_(options) {}

Client::~Client() {
  for (redisContext* context : idle_) redisFree(context);
}

Result<redisContext*> Client::connect() {
  redisContext* context =
      redisConnectWithTimeout(url_.host.c_str(), url_.port, to_timeval(options_.connect_timeout));
  if (context == nullptr)
    return make_error(ErrorCode::unavailable, "redis " + url_.display() + ": out of memory");
  if (context->err) {
    std::string why = context->errstr;
    redisFree(context);
    return make_error(ErrorCode::unavailable, "redis " + url_.display() + ": " + why);
  }
  redisSetTimeout(context, to_timeval(options_.command_timeout));
  const auto setup = [&](std::vector<std::string> argv) -> Status {
    std::vector<const char*> ptrs;
    std::vector<size_t> lens;
    for (const auto& arg : argv) {
      ptrs.push_back(arg.data());
      lens.push_back(arg.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(context, static_cast<int>(argv.size()), ptrs.data(), lens.data()));
    if (reply == nullptr)
      return make_error(ErrorCode::unavailable, "redis " + url_.display() + ": " + context->errstr);
    const bool failed = reply->type == REDIS_REPLY_ERROR;
    std::string why = failed ? std::string(reply->str, reply->len) : "";
    freeReplyObject(reply);
    if (failed)
      return make_error(ErrorCode::unavailable,
                        "redis " + url_.display() + ": " + argv[0] + " refused: " + why);
    return ok_status();
  };
  Status ready = ok_status();
  if (!url_.password.empty())
    ready = url_.user.empty() ? setup({"AUTH", url_.password})
                              : setup({"AUTH", url_.user, url_.password});
  if (ready && url_.db != 0) ready = setup({"SELECT", std::to_string(url_.db)});
  if (!ready) {
    redisFree(context);
    return ready.error();
  }
  return context;
}

void Client::mark_down(const std::string& why) {
  ++failures_;
  std::vector<redisContext*> stale;
  {
    std::lock_guard lock(mutex_);
    retry_at_ = std::chrono::steady_clock::now() + options_.retry_after;
    stale.swap(idle_);  // they lead to the same server
  }
  for (redisContext* context : stale) redisFree(context);
  if (!down_.exchange(true))
    spdlog::warn("{}; serving from this daemon's own tiers, reconnecting by itself", why);
}

void Client::mark_up() {
  if (down_.exchange(false)) {
    ++reconnects_;
    spdlog::info("redis {} is reachable again; the shared tier is back", url_.display());
  }
}

Result<Reply> Client::command(const std::vector<std::string_view>& argv) {
  // A pooled connection may have been closed by the server since its last
  // use (a Redis restart): that one failure gets a fresh connection before
  // the server counts as down.
  return command(argv, /*retry_stale=*/true);
}

Result<Reply> Client::command(const std::vector<std::string_view>& argv, bool retry_stale) {
  redisContext* context = nullptr;
  bool pooled = false;
  {
    std::lock_guard lock(mutex_);
    if (down_.load() && std::chrono::steady_clock::now() < retry_at_)
      return make_error(ErrorCode::unavailable, "redis " + url_.display() + " is down");
    if (!idle_.empty()) {
      context = idle_.back();
      idle_.pop_back();
      pooled = true;
    }
  }
  if (context == nullptr) {
    auto connected = connect();
    if (!connected) {
      mark_down(connected.error().message);
      return connected.error();
    }
    context = *connected;
  }
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  ptrs.reserve(argv.size());
  lens.reserve(argv.size());
  for (auto arg : argv) {
    ptrs.push_back(arg.data());
    lens.push_back(arg.size());
  }
  auto* reply = static_cast<redisReply*>(
      redisCommandArgv(context, static_cast<int>(argv.size()), ptrs.data(), lens.data()));
  if (reply == nullptr || context->err) {
    // Only a connection the server closed is retried: a timeout may have
    // run the command already (SET NX twice would find its own lock).
    const bool closed = context->err == REDIS_ERR_EOF ||
                        (context->err == REDIS_ERR_IO && (errno == EPIPE || errno == ECONNRESET));
    const std::string why = "redis " + url_.display() + ": " +
                            (context->err ? std::string(context->errstr) : "no reply");
    if (reply != nullptr) freeReplyObject(reply);
    redisFree(context);
    if (pooled && retry_stale && closed) {
      // The other pooled connections date from the same server: drop them too.
      std::vector<redisContext*> stale;
      {
        std::lock_guard lock(mutex_);
        stale.swap(idle_);
      }
      for (redisContext* old : stale) redisFree(old);
      return command(argv, /*retry_stale=*/false);
    }
    mark_down(why);
    return make_error(ErrorCode::unavailable, why);
  }
  Reply out = flatten(reply);
  freeReplyObject(reply);
  {
    std::lock_guard lock(mutex_);
    if (idle_.size() < options_.max_idle_connections) {
      idle_.push_back(context);
      context = nullptr;
    }
  }
  if (context != nullptr) redisFree(context);
  mark_up();
  return out;
}

}  // namespace flashcore::redis
