// A real redis-server (Debian's package) for the fleet tests: started on a
// free loopback port with a scratch folder, no persistence; killed (SIGKILL,
// as a crash) and restarted on the same port. Plus a plain HTTP GET for
// scraping /metrics and a reader for Prometheus' text format.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "redis/redis_client.hpp"
#include "scratch_dir.hpp"

extern char** environ;

namespace flashcore::test_support {

// A port nothing listens on now (the kernel's pick for port 0).
inline int free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  close(fd);
  return port;
}

inline std::string find_redis_server() {
  if (const char* path = std::getenv("FLASHCORE_REDIS_SERVER")) return path;
  const char* path_env = std::getenv("PATH");
  std::stringstream dirs(path_env ? path_env : "/usr/bin:/usr/sbin");
  std::string dir;
  while (std::getline(dirs, dir, ':'))
    if (std::filesystem::exists(std::filesystem::path(dir) / "redis-server"))
      return (std::filesystem::path(dir) / "redis-server").string();
  for (const char* fallback : {"/usr/bin/redis-server", "/usr/sbin/redis-server"})
    if (std::filesystem::exists(fallback)) return fallback;
  return {};
}

class RedisServer {
 public:
  RedisServer() : port_(free_loopback_port()), binary_(find_redis_server()) {}
  ~RedisServer() { kill_now(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  // False (with the failure recorded) when it does not answer PING in 10 s.
  bool start() {
    if (binary_.empty()) {
      ADD_FAILURE() << "redis-server not found (apt-get install redis-server; deploy/setup.sh "
                       "installs it)";
      return false;
    }
    const std::string port = std::to_string(port_);
    const std::string dir = dir_.path().string();
    std::vector<std::string> argv = {binary_,       "--port",       port,   "--bind",
                                     "127.0.0.1",   "--save",       "",     "--appendonly",
                                     "no",          "--dir",        dir,    "--logfile",
                                     dir + "/redis.log", "--protected-mode", "no"};
    std::vector<char*> args;
    for (auto& arg : argv) args.push_back(arg.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], nullptr, nullptr, args.data(), environ) != 0) {
      pid_ = -1;
      ADD_FAILURE() << "cannot start " << binary_;
      return false;
    }
    // Plain connects until it listens (the client would log each refusal).
    for (int i = 0; i < 500; ++i) {
      if (accepts_connections()) {
        redis::Client probe(parsed_url(), {});
        if (auto pong = probe.command({"PING"}); pong) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "redis-server on port " << port_ << " does not answer";
    return false;
  }

  // As a crash: SIGKILL, then reaped.
  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  int port() const { return port_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }
  redis::RedisUrl parsed_url() const {
    redis::RedisUrl url;
    url.host = "127.0.0.1";
    url.port = port_;
    return url;
  }

 private:
  bool accepts_connections() const {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<uint16_t>(port_));
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    close(fd);
    return ok;
  }

  int port_;
  std::string binary_;
  ScratchDir dir_;
  pid_t pid_ = -1;
};

// The body of GET http://127.0.0.1:<port><path>; empty on failure.
inline std::string http_get(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    close(fd);
    return {};
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buffer[16384];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;) response.append(buffer, n);
  close(fd);
  const auto body = response.find("\r\n\r\n");
  return body == std::string::npos ? std::string() : response.substr(body + 4);
}

// The sum of a metric's samples whose label text contains every `labels`
// entry (`tier="shared"`); -1 when no sample matches.
inline double metric_value(const std::string& text, const std::string& name,
                           const std::vector<std::string>& labels = {}) {
  std::istringstream lines(text);
  std::string line;
  double sum = 0;
  bool found = false;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto name_end = line.find_first_of("{ ");
    if (name_end == std::string::npos || line.substr(0, name_end) != name) continue;
    const auto value_at = line.rfind(' ');
    const std::string label_text = line.substr(name_end, value_at - name_end);
    bool match = true;
    for (const auto& label : labels)
      if (label_text.find(label) == std::string::npos) match = false;
    if (!match) continue;
    sum += std::strtod(line.c_str() + value_at + 1, nullptr);
    found = true;
  }
  return found ? sum : -1;
}

}  // namespace flashcore::test_support
