// `flashcore stats`: the daemon's Prometheus /metrics at a glance. It reads
// the same page Prometheus scrapes (--metrics-listen on the daemon), so the
// two never disagree, and needs no RPC of its own.
#include "stats.hpp"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

namespace flashcore::cli {
namespace {

struct Sample {
  std::map<std::string, std::string> labels;
  double value = 0;
};
using Metrics = std::map<std::string, std::vector<Sample>>;

// Prometheus text format, the subset prometheus-cpp writes.
Metrics parse(const std::string& text) {
  Metrics out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample sample;
    const auto brace = line.find('{');
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    std::string name = line.substr(0, std::min(brace, space));
    if (brace != std::string::npos && brace < space) {
      const auto close = line.rfind('}', space);
      std::string labels = line.substr(brace + 1, close - brace - 1);
      size_t at = 0;
      while (at < labels.size()) {
        const auto eq = labels.find('=', at);
        if (eq == std::string::npos) break;
        const auto quote_end = labels.find('"', eq + 2);
        sample.labels[labels.substr(at, eq - at)] = labels.substr(eq + 2, quote_end - eq - 2);
        at = quote_end + 2;  // past '",'
      }
    }
    sample.value = std::strtod(line.c_str() + space + 1, nullptr);
    out[name].push_back(std::move(sample));
  }
  return out;
}

Result<std::string> http_get(const std::string& address, const std::string& path) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos)
    return make_error(ErrorCode::invalid_argument, "--metrics: '" + address + "' is not host:port");
  const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr)
    return make_error(ErrorCode::unavailable, "cannot resolve " + address);
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0)
    return make_error(ErrorCode::unavailable,
                      "cannot reach the daemon's metrics at " + address +
                          " (start flashcored with --metrics-listen " + address + ")");
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return make_error(ErrorCode::unavailable, "cannot send to " + address);
  }
  std::string response;
  char buffer[16384];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;) response.append(buffer, n);
  close(fd);
  if (response.rfind("HTTP/1.", 0) != 0 || response.find(" 200 ") == std::string::npos)
    return make_error(ErrorCode::unavailable,
                      address + path + " answered: " + response.substr(0, response.find('\r')));
  const auto body = response.find("\r\n\r\n");
  return body == std::string::npos ? std::string() : response.substr(body + 4);
}

double sum(const Metrics& metrics, const std::string& name,
           const std::map<std::string, std::string>& match = {}) {
  auto it = metrics.find(name);
  if (it == metrics.end()) return 0;
  double total = 0;
  for (const auto& sample : it->second) {
    bool ok = true;
    for (const auto& [k, v] : match)
      if (auto l = sample.labels.find(k); l == sample.labels.end() || l->second != v) ok = false;
    if (ok) total += sample.value;
  }
  return total;
}

bool has(const Metrics& metrics, const std::string& name) { return metrics.contains(name); }

// A quantile of one histogram series from its cumulative buckets, linear
// within the bucket it falls in (as Prometheus' histogram_quantile).
double quantile(const Metrics& metrics, const std::string& method, const std::string& code,
                double q) {
  std::vector<std::pair<double, double>> buckets;  // (le, cumulative count)
  auto it = metrics.find("flashcore_rpc_duration_seconds_bucket");
  if (it == metrics.end()) return NAN;
  for (const auto& sample : it->second) {
    if (sample.labels.at("method") != method || sample.labels.at("code") != code) continue;
    const std::string& le = sample.labels.at("le");
    buckets.emplace_back(le == "+Inf" ? INFINITY : std::stod(le), sample.value);
  }
  std::sort(buckets.begin(), buckets.end());
  if (buckets.empty() || buckets.back().second == 0) return NAN;
  const double rank = q * buckets.back().second;
  double lower = 0, below = 0;
  for (const auto& [le, count] : buckets) {
    if (count >= rank) {
      if (std::isinf(le)) return lower;
      return lower + (le - lower) * (count == below ? 1 : (rank - below) / (count - below));
    }
    lower = le;
    below = count;
  }
  return lower;
}

std::string bytes_label(double bytes) {
  char out[32];
  if (bytes >= 1 << 30) std::snprintf(out, sizeof out, "%.1f GiB", bytes / (1 << 30));
  else if (bytes >= 1 << 20) std::snprintf(out, sizeof out, "%.1f MiB", bytes / (1 << 20));
  else if (bytes >= 1 << 10) std::snprintf(out, sizeof out, "%.1f KiB", bytes / (1 << 10));
  else std::snprintf(out, sizeof out, "%.0f B", bytes);
  return out;
}

void print_text(const Metrics& m) {
  std::printf("%-22s %-20s %8s %9s %9s\n", "calls", "code", "count", "p50 ms", "p99 ms");
  if (auto calls = m.find("flashcore_rpc_calls_total"); calls != m.end()) {
    auto rows = calls->second;
    std::sort(rows.begin(), rows.end(), [](const Sample& a, const Sample& b) {
      return a.labels.at("method") + a.labels.at("code") < b.labels.at("method") + b.labels.at("code");
    });
    for (const auto& row : rows) {
      const std::string& method = row.labels.at("method");
      const std::string& code = row.labels.at("code");
      std::printf("  %-20s %-20s %8.0f %9.3f %9.3f\n", method.c_str(), code.c_str(), row.value,
                  quantile(m, method, code, 0.5) * 1e3, quantile(m, method, code, 0.99) * 1e3);
    }
  }
  std::printf("%-22s %10s %10s %12s\n", "cache tier", "hits", "misses", "bytes");
  for (const char* tier : {"memory", "disk", "shared"}) {
    if (std::string(tier) == "shared" && !has(m, "flashcore_shared_tier_up")) {
      std::printf("  %-20s %s\n", tier, "not configured (--redis)");
      continue;
    }
    std::printf("  %-20s %10.0f %10.0f %12s\n", tier, sum(m, "flashcore_cache_hits_total", {{"tier", tier}}),
                sum(m, "flashcore_cache_misses_total", {{"tier", tier}}),
                bytes_label(sum(m, "flashcore_cache_bytes", {{"tier", tier}})).c_str());
  }
  if (has(m, "flashcore_shared_tier_up"))
    std::printf("shared tier            %s, %.0f errors, %.0f corrupt entries replaced\n",
                sum(m, "flashcore_shared_tier_up") > 0 ? "up" : "DOWN",
                sum(m, "flashcore_shared_tier_errors_total"),
                sum(m, "flashcore_cache_corrupt_entries_total", {{"tier", "shared"}}));
  std::printf("compiles               %.0f run, %.0f failed, %.1f s in NVRTC, %.0f in flight, %.0f queued\n",
              sum(m, "flashcore_compiles_total"), sum(m, "flashcore_compile_failures_total"),
              sum(m, "flashcore_compile_seconds_total"), sum(m, "flashcore_compiles_in_flight"),
              sum(m, "flashcore_compiles_queued"));
  std::printf("single flight waits    %.0f local, %.0f fleet\n",
              sum(m, "flashcore_single_flight_waits_total", {{"scope", "local"}}),
              sum(m, "flashcore_single_flight_waits_total", {{"scope", "fleet"}}));
  if (has(m, "flashcore_tune_jobs")) {
    std::printf("tune jobs             ");
    for (const char* status : {"queued", "running", "succeeded", "failed", "cancelled"})
      std::printf(" %s %.0f", status, sum(m, "flashcore_tune_jobs", {{"status", status}}));
    std::printf("\n");
  }
  if (has(m, "flashcore_gpu_evaluations_total"))
    std::printf("gpu evaluations        %.0f ok, %.0f failed, %.0f queued, %.0f worker restarts\n",
                sum(m, "flashcore_gpu_evaluations_total", {{"result", "ok"}}),
                sum(m, "flashcore_gpu_evaluations_total", {{"result", "failed"}}),
                sum(m, "flashcore_gpu_evaluations_queued"), sum(m, "flashcore_worker_restarts_total"));
  else
    std::printf("gpu evaluations        no workers (no GPU)\n");
}

}  // namespace

CLI::App* add_stats_command(CLI::App& app, StatsOptions& options) {
  auto* stats = app.add_subcommand(
      "stats", "the daemon's metrics at a glance (reads its Prometheus /metrics)");
  stats->add_option("--metrics", options.metrics_address,
                    "the daemon's --metrics-listen address")
      ->envname("FLASHCORE_METRICS_ADDRESS")
      ->capture_default_str();
  return stats;
}

Result<int> run_stats(const StatsOptions& options, bool json) {
  auto body = http_get(options.metrics_address, "/metrics");
  if (!body) return body.error();
  const Metrics metrics = parse(*body);
  if (json) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [name, samples] : metrics)
      for (const auto& sample : samples)
        out[name].push_back({{"labels", sample.labels}, {"value", sample.value}});
    std::cout << out.dump(1) << "\n";
  } else {
    print_text(metrics);
  }
  return 0;
}

}  // namespace flashcore::cli
