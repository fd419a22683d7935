// Continuous proof (issue 16), with the real flashcored binary:
// - kill -9 loop: the daemon is killed at random moments (at least 50 times)
//   while clients compile distinct kernels into one cache folder; afterwards
//   every listed entry is served, verified (the disk tier checks each file's
//   SHA-256 on read) and is a cubin, and no temp file survives a start;
// - load: 64 clients over loopback, a fixed count of mixed calls
//   (compile, get, list, validate refused for lack of a GPU), 0 unexpected
//   errors, the daemon's resident set bounded.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "daemon_process.hpp"
#include "flashcore/client.hpp"
#include "scratch_dir.hpp"
#include "test_templates.hpp"

namespace flashcore {
namespace {

using namespace std::chrono_literals;
using rpc_testing::DaemonProcess;
using Clock = std::chrono::steady_clock;

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

// Distinct kernels of the small template: arch x dtype x causal x head_dim,
// each the family's default tile (64 keys).
std::vector<v1::KernelRequest> distinct_requests() {
  std::vector<v1::KernelRequest> out;
  for (const char* arch : {"sm_80", "sm_86", "sm_89", "sm_90"})
    for (v1::DType dtype : {v1::DTYPE_FP16, v1::DTYPE_BF16})
      for (bool causal : {false, true})
        for (int head_dim : {32, 64, 96, 128}) {
          v1::KernelRequest request;
          request.set_template_id("attention_fwd");
          request.set_arch(arch);
          request.set_omit_cubin(true);
          v1::Problem* problem = request.mutable_problem();
          problem->set_dtype(dtype);
          problem->set_head_dim(head_dim);
          problem->set_causal(causal);
          problem->set_batch(1);
          problem->set_heads(4);
          problem->set_seq_q(300);
          out.push_back(request);
        }
  return out;
}

Result<client::Client> connect_to(const std::string& address,
                                  std::chrono::milliseconds timeout = 10000ms) {
  client::ConnectOptions options;
  options.address = address;
  options.connect_timeout = timeout;
  // A cold compile on a loaded 2-core machine (ctest -j2 runs the kill loop
  // beside the load test) has taken over two minutes.
  options.call_timeout = 600000ms;
  return client::Client::connect(options);
}

std::vector<std::string> temp_files(const std::filesystem::path& dir) {
  std::vector<std::string> found;
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error))
    if (it->path().filename().string().find(".tmp.") != std::string::npos)
      found.push_back(it->path().string());
  return found;
}

TEST(KillLoopTest, EveryEntryServedAfterKillsDuringCacheWritesVerifies) {
  const int kills = env_int("FLASHCORE_KILL_LOOP_KILLS", 50);
  test_support::ScratchDir dir, templates;
  test_support::write_attention_templates(templates, test_support::kSmallAttentionTemplate);
  const auto cache = dir / "cache";
  const std::vector<v1::KernelRequest> requests = distinct_requests();
  std::mt19937 rng(16);
  std::atomic<int> compiled{0};
  int survived = 0;
  int kills_mid_write = 0;
  for (int round = 0; round < kills; ++round) {
    DaemonProcess daemon(dir.path(),
                         {{"--cache-dir", cache.string(), "--templates-dir",
                           templates.path().string(), "--compile-threads", "2", "--log-level",
                           "warn"}});
    const int port = daemon.wait_for_port();
    ASSERT_GT(port, 0) << "round " << round << ": " << daemon.log_text();
    const std::string address = "127.0.0.1:" + std::to_string(port);
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, c] {
        auto client = connect_to(address);
        if (!client) return;
        // Each client walks the kernels from its own offset: entries still
        // missing get compiled and written while the kill may land.
        for (size_t i = 0; !stop.load(); ++i) {
          const auto& request = requests[(round * 7 + c * 16 + i) % requests.size()];
          auto handle = client->compile(request);
          if (handle && handle->tier() == v1::CACHE_TIER_COMPILED) ++compiled;
          if (!handle) return;  // killed
        }
      });
    }
    // Even rounds: the kill lands the moment a writer's temp file is seen
    // (mid-write: before its rename); odd rounds, or when none shows within
    // 3 s: at a random moment.
    const auto random_moment =
        Clock::now() + std::chrono::milliseconds(std::uniform_int_distribution<int>(100, 900)(rng));
    const auto give_up = Clock::now() + 2s;
    bool mid_write = false;
    if (round % 2 == 0) {
      while (Clock::now() < give_up && !(mid_write = !temp_files(cache).empty()))
        std::this_thread::sleep_for(200us);
    } else {
      std::this_thread::sleep_until(random_moment);
    }
    daemon.kill_now();
    if (mid_write) ++kills_mid_write;
    ASSERT_TRUE(WIFSIGNALED(daemon.wait_exit(0ms).value_or(0)));
    ++survived;
    stop = true;
    for (auto& t : clients) t.join();
  }

  // A clean start: temp files of the killed writers are gone, and every
  // entry listed is served and verifies.
  DaemonProcess daemon(dir.path(), {{"--cache-dir", cache.string(), "--templates-dir",
                                     templates.path().string(), "--log-level", "warn"}});
  ASSERT_GT(daemon.wait_for_port(), 0) << daemon.log_text();
  auto client = connect_to(daemon.address());
  ASSERT_TRUE(client.ok());
  // Temp files younger than a minute are left to a writer that may share the
  // folder (disk_store.cpp scan()); older ones are a dead writer's.
  const std::vector<std::string> left = temp_files(cache);
  for (const auto& temp : left) {
    const auto age = std::filesystem::file_time_type::clock::now() -
                     std::filesystem::last_write_time(temp);
    EXPECT_LT(age, std::chrono::minutes(1)) << temp << " outlived a start";
    std::filesystem::last_write_time(temp, std::filesystem::file_time_type::clock::now() -
                                               std::chrono::minutes(2));
  }
  std::vector<std::string> keys;
  std::string token;
  do {
    auto page = client->list_kernels(100, token);
    ASSERT_TRUE(page.ok()) << page.error().message;
    for (const auto& kernel : page->kernels()) keys.push_back(kernel.key());
    token = page->next_page_token();
  } while (!token.empty());
  size_t served = 0;
  for (const auto& key : keys) {
    auto handle = client->get_kernel(key);
    ASSERT_TRUE(handle.ok()) << key << ": " << handle.error().message;
    ASSERT_EQ(handle->cubin().size(), static_cast<size_t>(handle->cubin_size()));
    ASSERT_EQ(handle->cubin().substr(0, 4), std::string("\x7f" "ELF")) << key;
    ++served;
  }
  // A start after their grace minute removes them.
  daemon.kill_now();
  {
    DaemonProcess again(dir.path(), {{"--cache-dir", cache.string(), "--templates-dir",
                                      templates.path().string(), "--log-level", "info"}});
    ASSERT_GT(again.wait_for_port(), 0) << again.log_text();
    EXPECT_TRUE(temp_files(cache).empty()) << temp_files(cache).front();
    if (!left.empty())
      EXPECT_NE(again.log_text().find("temp files a crashed writer left"), std::string::npos);
  }
  std::printf("kill -9 loop: %zu temp files of killed writers, removed at the next start\n",
              left.size());
  std::printf("kill -9 loop: %d kills survived (%d with a cache file mid-write), %d compiles "
              "finished between kills, %zu entries listed afterwards, %zu served and verified\n",
              survived, kills_mid_write, compiled.load(), keys.size(), served);
  EXPECT_GE(survived, kills);
  EXPECT_GT(kills_mid_write, 0) << "no kill landed during a cache write";
  EXPECT_GT(keys.size(), 0u);
}

TEST(LoadTest, SixtyFourClientsMixedCallsNoUnexpectedErrorsRssBounded) {
  constexpr int kClients = 64;
  const int calls_per_client = env_int("FLASHCORE_LOAD_CALLS_PER_CLIENT", 25);
  test_support::ScratchDir dir, templates;
  test_support::write_attention_templates(templates, test_support::kSmallAttentionTemplate);
  DaemonProcess daemon(dir.path(), {{"--templates-dir", templates.path().string(),
                                     "--compile-threads", "2", "--log-level", "warn"}});
  ASSERT_GT(daemon.wait_for_port(), 0) << daemon.log_text();
  const std::string address = daemon.address();
  const std::vector<v1::KernelRequest> requests = distinct_requests();
  // Eight kernels warm; the rest compile during the load (single flight
  // joins concurrent callers of one key).
  std::vector<std::string> warm_keys;
  {
    auto client = connect_to(address);
    ASSERT_TRUE(client.ok());
    warm_keys.resize(8);
    std::vector<std::thread> warmers;
    for (int i = 0; i < 8; ++i)
      warmers.emplace_back([&, i] {
        auto handle = client->compile(requests[i]);
        if (handle) warm_keys[i] = handle->key();
        else ADD_FAILURE() << "warm-up compile " << i << ": " << handle.error().message;
      });
    for (auto& t : warmers) t.join();
    for (const auto& key : warm_keys) ASSERT_EQ(key.size(), 64u) << "a warm-up compile failed";
  }
  const long rss_before = daemon.rss_kib();

  std::atomic<int> ok{0}, refused_as_expected{0}, unexpected{0};
  std::mutex mutex;
  std::vector<std::string> unexpected_messages;
  std::vector<double> latencies_ms;
  std::atomic<long> rss_peak{rss_before};
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    while (sampling) {
      rss_peak = std::max(rss_peak.load(), daemon.rss_kib());
      std::this_thread::sleep_for(50ms);
    }
  });
  const auto begun = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto client = connect_to(address, 30000ms);
      if (!client) {
        ++unexpected;
        std::lock_guard lock(mutex);
        unexpected_messages.push_back(client.error().message);
        return;
      }
      std::vector<double> mine;
      for (int i = 0; i < calls_per_client; ++i) {
        const auto started = Clock::now();
        std::optional<Error> error;
        bool expected_refusal = false;
        switch ((c + i) % 8) {
          case 0: case 1: case 2: {  // compile: warm keys mostly, a cold one now and then
            const auto& request = requests[(c * 3 + i) % (i % 5 == 0 ? 24 : 8)];
            auto handle = client->compile(request);
            if (!handle) error = handle.error();
            break;
          }
          case 3: case 4: {
            auto handle = client->get_kernel(warm_keys[(c + i) % warm_keys.size()], i % 2 == 0);
            if (!handle) error = handle.error();
            break;
          }
          case 5: {
            auto page = client->list_kernels(20, "");
            if (!page) error = page.error();
            break;
          }
          case 6: {
            auto info = client->server_info();
            if (!info) error = info.error();
            break;
          }
          case 7: {  // no GPU here: refused with the reason, as it must be
            v1::ValidateRequest request;
            *request.mutable_kernel() = requests[c % 8];
            auto handle = client->validate(request);
            expected_refusal = !handle && handle.error().code == ErrorCode::failed_precondition;
            if (!handle && !expected_refusal) error = handle.error();
            if (handle) error = make_error(ErrorCode::internal, "Validate served without a GPU");
            break;
          }
        }
        mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - started).count());
        if (error) {
          ++unexpected;
          std::lock_guard lock(mutex);
          unexpected_messages.push_back(error->message);
        } else if (expected_refusal) {
          ++refused_as_expected;
        } else {
          ++ok;
        }
      }
      std::lock_guard lock(mutex);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : clients) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - begun).count();
  sampling = false;
  sampler.join();
  const long rss_after = daemon.rss_kib();
  std::sort(latencies_ms.begin(), latencies_ms.end());
  const auto pct = [&](double p) {
    return latencies_ms.empty() ? 0.0 : latencies_ms[static_cast<size_t>(p * (latencies_ms.size() - 1))];
  };
  std::printf("load: %d clients x %d calls in %.1f s: %d ok, %d refused as expected (Validate "
              "without GPU), %d unexpected; latency p50 %.1f ms, p99 %.1f ms; RSS %ld MiB before, "
              "peak %ld MiB, %ld MiB after\n",
              kClients, calls_per_client, wall_s, ok.load(), refused_as_expected.load(),
              unexpected.load(), pct(0.5), pct(0.99), rss_before >> 10, rss_peak.load() >> 10,
              rss_after >> 10);
  EXPECT_EQ(unexpected.load(), 0) << (unexpected_messages.empty() ? "" : unexpected_messages[0]);
  EXPECT_EQ(ok.load() + refused_as_expected.load(), kClients * calls_per_client);
  // Bounded: the memory tier is 256 MiB by default and these cubins are a
  // few hundred KB; a leak per call would show as growth over the 1600 calls.
  // The absolute figure is mostly NVRTC's heap from concurrent compiles
  // (seen 527 to 866 MiB at peak here).
  EXPECT_LT(rss_peak.load(), 2048L * 1024) << "resident set over 2 GiB";
  EXPECT_LT(rss_after - rss_before, 256L * 1024) << "resident set grew by over 256 MiB";
  EXPECT_FALSE(daemon.exited());
}

}  // namespace
}  // namespace flashcore
