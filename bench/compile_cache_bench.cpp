// Compile and cache latency as a client sees it, over gRPC with the client
// library: for each of N distinct kernels, a cold compile (NVRTC), memory hits
// (the same request again), and a disk hit (the first request after the daemon
// restarts on the same cache folder). Every answer's tier is checked against
// what the row claims, so a number in the table is never a mislabelled one;
// a mismatch exits non-zero.
//
// By default an in-process Daemon runs on 127.0.0.1:0 with a fresh temporary
// cache and the CUDA driver's compute cache off (see main). With --address the
// bench talks to a running daemon instead; it cannot restart that one, so the
// disk column is then left empty.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "app/config.hpp"
#include "app/daemon.hpp"
#include "flashcore/client.hpp"
#include "family/tile_config.hpp"

namespace {

namespace fs = std::filesystem;
namespace v1 = flashcore::v1;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string address;  // empty: in-process daemon
  int configs = 3;
  int memory_repeats = 20;
  std::string arch;  // empty: the daemon's default
  int compile_threads = 0;
  bool keep_cache = false;
};

struct Candidate {
  flashcore::ProblemClass problem;
  flashcore::TileConfig config;
};

// Distinct compile-time classes a serving system meets, in the order the
// bench takes them; those the arch cannot run (config_error) are skipped.
std::vector<Candidate> candidates() {
  using flashcore::DType;
  return {
      {{DType::fp16, 64, false}, {128, 64, 4, 2}},
      {{DType::bf16, 64, false}, {128, 64, 4, 2}},
      {{DType::fp16, 128, true}, {128, 64, 4, 2}},
      {{DType::fp16, 64, true}, {64, 64, 4, 2}},
      {{DType::bf16, 128, false}, {64, 64, 4, 3}},
      {{DType::fp16, 32, false}, {128, 128, 8, 2}},
      {{DType::fp16, 256, false}, {64, 32, 4, 2}},
      {{DType::bf16, 64, true}, {128, 128, 8, 3}},
  };
}

v1::KernelRequest make_request(const Candidate& c, const std::string& arch) {
  v1::KernelRequest request;
  request.set_template_id(std::string(flashcore::kAttentionTemplateId));
  auto* problem = request.mutable_problem();
  problem->set_dtype(c.problem.dtype == flashcore::DType::fp16 ? v1::DTYPE_FP16 : v1::DTYPE_BF16);
  problem->set_head_dim(c.problem.head_dim);
  problem->set_causal(c.problem.causal);
  problem->set_batch(1);
  problem->set_heads(8);
  problem->set_seq_q(512);
  problem->set_layout(v1::LAYOUT_BSHD);
  auto* config = request.mutable_config();
  config->set_block_m(c.config.block_m);
  config->set_block_n(c.config.block_n);
  config->set_warps(c.config.warps);
  config->set_stages(c.config.stages);
  request.set_arch(arch);
  request.set_omit_cubin(false);  // every timing includes moving the cubin
  return request;
}

std::string label(const Candidate& c) {
  std::string s = std::string(flashcore::dtype_name(c.problem.dtype)) + " d" +
                  std::to_string(c.problem.head_dim) + (c.problem.causal ? " causal" : "") + " " +
                  std::to_string(c.config.block_m) + "x" + std::to_string(c.config.block_n) + " w" +
                  std::to_string(c.config.warps) + " s" + std::to_string(c.config.stages);
  return s;
}

const char* tier_name(v1::CacheTier tier) {
  switch (tier) {
    case v1::CACHE_TIER_MEMORY: return "memory";
    case v1::CACHE_TIER_DISK: return "disk";
    case v1::CACHE_TIER_COMPILED: return "compiled";
    default: return "unspecified";
  }
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "compile_cache_bench: %s\n", what.c_str());
  std::exit(1);
}

std::string error_text(const flashcore::Error& error) {
  return error.detail.empty() ? error.message : error.message + "\n" + error.detail;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// One timed call whose answer must come from `want` and carry its cubin.
double timed_compile(flashcore::client::Client& client, const v1::KernelRequest& request,
                     v1::CacheTier want, const std::string& what, v1::KernelHandle* out = nullptr) {
  const auto start = Clock::now();
  auto handle = client.compile(request);
  const double ms = ms_since(start);
  if (!handle) fail(what + ": Compile failed: " + error_text(handle.error()));
  if (handle->tier() != want)
    fail(what + ": expected tier " + tier_name(want) + ", the daemon answered " +
         tier_name(handle->tier()) +
         (want == v1::CACHE_TIER_COMPILED ? " (already cached: use a daemon with an empty cache)"
                                          : ""));
  if (handle->cubin().empty() || handle->cubin().size() != handle->cubin_size())
    fail(what + ": the answer carries " + std::to_string(handle->cubin().size()) +
         " cubin bytes, cubin_size says " + std::to_string(handle->cubin_size()));
  if (out != nullptr) *out = std::move(handle).value();
  return ms;
}

struct Row {
  std::string label;
  std::string key;
  double cold_ms = 0;
  double nvrtc_ms = 0;  // the server's own compile time
  std::vector<double> memory_ms;
  std::optional<double> disk_ms;
  size_t cubin_bytes = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

flashcore::client::Client connect_or_die(const std::string& address) {
  flashcore::client::ConnectOptions options;
  options.address = address;
  auto client = flashcore::client::Client::connect(options);
  if (!client) fail("cannot connect to " + address + ": " + error_text(client.error()));
  return std::move(client).value();
}

std::unique_ptr<flashcore::Daemon> start_daemon(const fs::path& cache_dir, const Options& opts) {
  flashcore::DaemonConfig config;
  config.listen_address = "127.0.0.1:0";
  config.cache_dir = cache_dir;
  config.compile_threads = static_cast<size_t>(opts.compile_threads);
  config.default_arch = opts.arch;
  config.log_level = "warn";
  auto daemon = flashcore::Daemon::start(config);
  if (!daemon) fail("cannot start the in-process daemon: " + error_text(daemon.error()));
  return std::move(daemon).value();
}

std::string command_line(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) s += (i ? " " : "") + std::string(argv[i]);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  CLI::App app{"FlashCore compile/cache latency over gRPC: cold compile, memory hit, disk hit"};
  app.add_option("--address", opts.address,
                 "use a running daemon (no disk-hit column); default: in-process daemon");
  app.add_option("--configs", opts.configs, "distinct kernels to compile")
      ->check(CLI::Range(1, static_cast<int>(candidates().size())));
  app.add_option("--memory-repeats", opts.memory_repeats, "memory hits timed per kernel (median)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--arch", opts.arch, "target arch, e.g. sm_90a; default: the daemon's");
  app.add_option("--compile-threads", opts.compile_threads,
                 "in-process daemon's compile threads (0 = hardware concurrency)");
  app.add_flag("--keep-cache", opts.keep_cache, "keep the in-process daemon's cache folder");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  // Where a driver is installed, NVRTC 13's output also lands in the driver's
  // compute cache (~/.nv/ComputeCache): a "cold" compile of a kernel any
  // earlier process built took 30-60 ms instead of 0.5-1.5 s, with no ptxas
  // report. Daemon::start turns that cache off, so cold compiles run NVRTC.

  const bool in_process = opts.address.empty();
  fs::path cache_dir;
  std::unique_ptr<flashcore::Daemon> daemon;
  if (in_process) {
    std::string tmpl = (fs::temp_directory_path() / "flashcore-bench-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) fail("mkdtemp failed");
    cache_dir = tmpl;
    daemon = start_daemon(cache_dir, opts);
  }
  const std::string address = in_process ? daemon->address() : opts.address;
  auto client = std::make_unique<flashcore::client::Client>(connect_or_die(address));

  auto info = client->server_info();
  if (!info) fail("GetServerInfo failed: " + error_text(info.error()));
  const std::string arch = opts.arch.empty() ? info->default_arch() : opts.arch;
  const auto arch_info = flashcore::find_arch(arch);
  if (!arch_info) fail("unsupported arch " + arch);

  std::vector<Candidate> chosen;
  for (const auto& c : candidates()) {
    if (static_cast<int>(chosen.size()) == opts.configs) break;
    if (!flashcore::config_error(c.config, c.problem, *arch_info)) chosen.push_back(c);
  }
  if (static_cast<int>(chosen.size()) < opts.configs)
    fail("only " + std::to_string(chosen.size()) + " candidate configs are valid for " + arch);

  std::vector<Row> rows;
  for (const auto& c : chosen) {
    Row row;
    row.label = label(c);
    const auto request = make_request(c, arch);
    v1::KernelHandle handle;
    std::fprintf(stderr, "cold compile: %s ...\n", row.label.c_str());
    row.cold_ms = timed_compile(*client, request, v1::CACHE_TIER_COMPILED, row.label, &handle);
    row.nvrtc_ms = handle.compile_ms();
    row.key = handle.key();
    row.cubin_bytes = handle.cubin().size();
    for (int i = 0; i < opts.memory_repeats; ++i)
      row.memory_ms.push_back(
          timed_compile(*client, request, v1::CACHE_TIER_MEMORY, row.label + " (memory hit)"));
    rows.push_back(std::move(row));
  }

  if (in_process) {
    // A restarted daemon has an empty memory tier: its first answer for each
    // key must come from the disk files the first one wrote.
    client.reset();
    daemon->shutdown(std::chrono::milliseconds(2000));
    daemon->wait();
    daemon.reset();
    daemon = start_daemon(cache_dir, opts);
    client = std::make_unique<flashcore::client::Client>(connect_or_die(daemon->address()));
    // One call first, so the disk column times the cache, not the new channel's first call.
    if (auto warm = client->server_info(); !warm)
      fail("GetServerInfo after the restart failed: " + error_text(warm.error()));
    for (size_t i = 0; i < rows.size(); ++i) {
      v1::KernelHandle handle;
      rows[i].disk_ms = timed_compile(*client, make_request(chosen[i], arch),
                                      v1::CACHE_TIER_DISK, rows[i].label + " (disk hit)", &handle);
      if (handle.key() != rows[i].key) fail(rows[i].label + ": the key changed across a restart");
    }
  }

  std::printf("## Compile and cache latency over gRPC (client wall time, cubin included)\n\n");
  std::printf("daemon: %s, NVRTC %s, arch %s, %s; %u hardware threads on this host\n",
              in_process ? "in-process, fresh temporary cache" : address.c_str(),
              info->nvrtc_version().c_str(), arch.c_str(),
              info->gpu_available() ? ("GPU " + info->gpu_name()).c_str() : "no GPU",
              std::thread::hardware_concurrency());
  std::printf("CUDA driver compute cache: off (the daemon sets CUDA_CACHE_DISABLE=1), so cold "
              "compiles run NVRTC in full\n\n");
  std::printf("| config | cold compile ms | server NVRTC ms | memory hit ms (median of %d) | "
              "memory hit min-max ms | disk hit ms | cubin KB |\n",
              opts.memory_repeats);
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& row : rows) {
    const auto [lo, hi] = std::minmax_element(row.memory_ms.begin(), row.memory_ms.end());
    char disk[32] = "n/a";
    if (row.disk_ms) std::snprintf(disk, sizeof disk, "%.2f", *row.disk_ms);
    std::printf("| %s | %.1f | %.1f | %.3f | %.3f-%.3f | %s | %.1f |\n", row.label.c_str(),
                row.cold_ms, row.nvrtc_ms, median(row.memory_ms), *lo, *hi, disk,
                row.cubin_bytes / 1024.0);
  }
  std::printf("\ncommand: %s\n", command_line(argc, argv).c_str());
  std::printf("every answer's tier was checked: compiled, then memory x%d%s\n", opts.memory_repeats,
              in_process ? ", then disk after a daemon restart" : "");

  client.reset();
  if (daemon) {
    daemon->shutdown(std::chrono::milliseconds(2000));
    daemon->wait();
    daemon.reset();
  }
  if (in_process && !opts.keep_cache) {
    std::error_code ec;
    fs::remove_all(cache_dir, ec);
  } else if (in_process) {
    std::printf("cache kept in %s\n", cache_dir.c_str());
  }
  return 0;
}
