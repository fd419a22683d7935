#include "cache/kernel_cache.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <latch>
#include <mutex>
#include <thread>
#include <vector>

#include "cache/cache_key.hpp"
#include "cache_test_util.hpp"
#include "scratch_dir.hpp"
#include "test_templates.hpp"

namespace flashcore {
namespace {

namespace fs = std::filesystem;
using namespace cache_testing;  // sample keys, entries and cubins
using namespace test_support;   // ScratchDir, file helpers, the small template registry

KernelSpec spec_with(bool causal, DType dtype = DType::fp16) {
  KernelSpec spec;
  spec.problem.dtype = dtype;
  spec.problem.head_dim = 64;
  spec.problem.causal = causal;
  spec.config = TileConfig{64, 64, 4, 2};
  spec.arch = "sm_80";
  return spec;
}

const RuntimeShape kShape{2, 4, 0, 100, 0};

// Occupies a pool thread until released, so tests can line up requests
// behind a compile deterministically.
class PoolBlocker {
 public:
  explicit PoolBlocker(CompilePool& pool) {
    std::promise<void> started;
    auto running = started.get_future();
    Status submitted = pool.submit([this, &started] {
      started.set_value();
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return released_; });
    });
    EXPECT_TRUE(submitted.ok());
    if (submitted.ok()) running.wait();
  }
  ~PoolBlocker() { release(); }
  void release() {
    {
      std::lock_guard lock(mutex_);
      released_ = true;
    }
    wake_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  bool released_ = false;
};

class KernelCacheTest : public ::testing::Test {
 protected:
  std::unique_ptr<KernelCache> make_cache(bool with_disk = true, size_t threads = 2,
                                          size_t max_queued = 16) {
    if (!pool_) pool_ = std::make_shared<CompilePool>(threads, max_queued);
    KernelCacheOptions options;
    if (with_disk) options.disk_dir = dir_.path() / "kernels";
    return std::make_unique<KernelCache>(options, compiler_, pool_);
  }

  ScratchDir dir_;
  std::shared_ptr<const NvrtcCompiler> compiler_ =
      std::make_shared<const NvrtcCompiler>(small_template_registry());
  std::shared_ptr<CompilePool> pool_;
};

TEST_F(KernelCacheTest, CompilesThenServesFromMemoryThenFromDiskAfterRestart) {
  const KernelSpec spec = spec_with(false);
  std::string key, cubin;
  {
    auto cache = make_cache();
    key = cache->key_for(spec);
    EXPECT_TRUE(is_well_formed_key(key));
    EXPECT_EQ(key, cache_key(spec, compiler_->fingerprint(spec)));

    auto first = cache->get_or_compile_sync(spec, kShape);
    ASSERT_TRUE(first.ok()) << first.error().message << "\n" << first.error().detail;
    EXPECT_EQ(first->tier, CacheTier::compiled);
    const CachedKernel& kernel = *first->kernel;
    EXPECT_EQ(kernel.key, key);
    EXPECT_FALSE(kernel.compiled.cubin.empty());
    EXPECT_EQ(kernel.compiled.cubin.substr(0, 4), "\x7f" "ELF");  // a real cubin
    EXPECT_EQ(kernel.cubin_size, kernel.compiled.cubin.size());
    EXPECT_FALSE(kernel.compiled.lowered_name.empty());
    EXPECT_EQ(kernel.first_shape.seq_q, kShape.seq_q);
    EXPECT_GT(kernel.created_unix_ms, 0);
    cubin = kernel.compiled.cubin;
    EXPECT_TRUE(fs::exists(DiskStore(dir_.path() / "kernels").path_for(key)));

    auto second = cache->get_or_compile_sync(spec, RuntimeShape{8, 16, 0, 4096, 0});
    ASSERT_TRUE(second.ok());
    EXPECT_EQ(second->tier, CacheTier::memory);
    EXPECT_EQ(second->kernel, first->kernel);

    auto by_key = cache->get(key);
    ASSERT_TRUE(by_key.ok());
    EXPECT_EQ(by_key->tier, CacheTier::memory);

    const CacheStats stats = cache->stats();
    EXPECT_EQ(stats.compiles, 1u);
    EXPECT_EQ(stats.memory_hits, 2u);
    EXPECT_EQ(stats.disk_hits, 0u);
    EXPECT_EQ(stats.memory_entries, 1u);
    EXPECT_EQ(stats.memory_bytes, kernel.footprint_bytes());
  }

  // A new cache on the same folder: a restarted daemon.
  auto restarted = make_cache();
  auto from_disk = restarted->get_or_compile_sync(spec, kShape);
  ASSERT_TRUE(from_disk.ok());
  EXPECT_EQ(from_disk->tier, CacheTier::disk);
  EXPECT_EQ(from_disk->kernel->compiled.cubin, cubin);
  EXPECT_EQ(from_disk->kernel->first_shape.seq_q, kShape.seq_q);  // the compiling request's
  auto again = restarted->get_or_compile_sync(spec, kShape);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->tier, CacheTier::memory);
  EXPECT_EQ(restarted->stats().compiles, 0u);
  EXPECT_EQ(restarted->stats().disk_hits, 1u);

  auto another = make_cache();
  auto by_key = another->get(key);
  ASSERT_TRUE(by_key.ok());
  EXPECT_EQ(by_key->tier, CacheTier::disk);
  EXPECT_EQ(by_key->kernel->compiled.cubin, cubin);
}

TEST_F(KernelCacheTest, CorruptDiskEntryIsRecompiled) {
  const KernelSpec spec = spec_with(true);
  fs::path path;
  {
    auto cache = make_cache();
    auto compiled = cache->get_or_compile_sync(spec, kShape);
    ASSERT_TRUE(compiled.ok()) << compiled.error().message << "\n" << compiled.error().detail;
    path = DiskStore(dir_.path() / "kernels").path_for(compiled->kernel->key);
  }
  std::string bytes = read_file(path);
  ASSERT_FALSE(bytes.empty());
  bytes[bytes.size() / 2] ^= 0x20;
  write_file(path, bytes);

  auto cache = make_cache();
  auto result = cache->get_or_compile_sync(spec, kShape);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->tier, CacheTier::compiled);
  EXPECT_EQ(cache->stats().corrupt_entries, 1u);
  EXPECT_EQ(cache->stats().compiles, 1u);
  // The recompile wrote a good file back.
  EXPECT_EQ(DiskStore(dir_.path() / "kernels").load(result->kernel->key)->compiled.cubin,
            result->kernel->compiled.cubin);
}

TEST_F(KernelCacheTest, ConcurrentRequestsForOneSpecCompileOnce) {
  auto cache = make_cache(/*with_disk=*/false, /*threads=*/1);
  const KernelSpec spec = spec_with(false, DType::bf16);
  constexpr int kRequests = 8;

  std::mutex results_mutex;
  std::vector<Result<CacheLookup>> results;
  std::latch answered(kRequests);
  {
    // Hold the only pool thread so all eight requests arrive while the
    // compile is still pending, whatever the scheduler does.
    PoolBlocker blocker(*pool_);
    std::latch start(kRequests);
    std::vector<std::thread> callers;
    for (int i = 0; i < kRequests; ++i) {
      callers.emplace_back([&] {
        start.arrive_and_wait();
        cache->get_or_compile(spec, kShape, [&](Result<CacheLookup> result) {
          {
            std::lock_guard lock(results_mutex);
            results.push_back(std::move(result));
          }
          answered.count_down();
        });
      });
    }
    for (auto& caller : callers) caller.join();
    const CacheStats pending = cache->stats();
    EXPECT_EQ(pending.compiles, 1u);
    EXPECT_EQ(pending.single_flight_joins, static_cast<size_t>(kRequests - 1));
    std::lock_guard lock(results_mutex);
    EXPECT_TRUE(results.empty()) << "answered before the compile ran";
  }
  answered.wait();

  ASSERT_EQ(results.size(), static_cast<size_t>(kRequests));
  ASSERT_TRUE(results[0].ok()) << results[0].error().message << "\n" << results[0].error().detail;
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok());
    EXPECT_EQ(result->tier, CacheTier::compiled);
    EXPECT_EQ(result->kernel->compiled.cubin, results[0]->kernel->compiled.cubin);
    EXPECT_EQ(result->kernel, results[0]->kernel);
  }
  EXPECT_EQ(cache->stats().compiles, 1u);
  EXPECT_EQ(cache->stats().single_flight_joins, static_cast<size_t>(kRequests - 1));

  // Done means done: the next request is a memory hit, not a join.
  auto later = cache->get_or_compile_sync(spec, kShape);
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->tier, CacheTier::memory);
}

TEST_F(KernelCacheTest, DifferentSpecsCompileSeparatelyAndListPages) {
  auto cache = make_cache();
  const KernelSpec a = spec_with(false), b = spec_with(false, DType::bf16);
  auto ra = cache->get_or_compile_sync(a, kShape);
  auto rb = cache->get_or_compile_sync(b, kShape);
  ASSERT_TRUE(ra.ok()) << ra.error().message << "\n" << ra.error().detail;
  ASSERT_TRUE(rb.ok());
  EXPECT_EQ(ra->tier, CacheTier::compiled);
  EXPECT_EQ(rb->tier, CacheTier::compiled);
  EXPECT_NE(ra->kernel->key, rb->kernel->key);
  EXPECT_NE(ra->kernel->compiled.lowered_name, rb->kernel->compiled.lowered_name);
  EXPECT_EQ(cache->stats().compiles, 2u);
  EXPECT_EQ(cache->stats().memory_entries, 2u);

  // Make the three kinds of entry a listing merges: b only in memory (its
  // file removed), a in both tiers, and one only on disk.
  DiskStore disk(dir_.path() / "kernels");
  ASSERT_TRUE(fs::remove(disk.path_for(rb->kernel->key)));
  const CachedKernel disk_only = sample_entry(test_key("disk only"), sample_cubin(64, 9));
  ASSERT_TRUE(disk.store(disk_only).ok());

  std::vector<std::string> want = {ra->kernel->key, rb->kernel->key, disk_only.key};
  std::sort(want.begin(), want.end());

  std::vector<std::string> got;
  std::string after;
  for (int page = 0; page < 5; ++page) {
    auto entries = cache->list(after, 2);
    if (entries.empty()) break;
    EXPECT_LE(entries.size(), 2u);
    for (const auto& entry : entries) {
      EXPECT_TRUE(entry.compiled.cubin.empty()) << "listings omit the cubin";
      EXPECT_GT(entry.cubin_size, 0u);
      got.push_back(entry.key);
    }
    after = got.back();
  }
  EXPECT_EQ(got, want);

  const auto all = cache->list("", 100);
  ASSERT_EQ(all.size(), 3u);
  for (const auto& entry : all) {
    if (entry.key == rb->kernel->key) {
      EXPECT_EQ(entry.cubin_size, rb->kernel->compiled.cubin.size());
    }
  }
  EXPECT_EQ(cache->list("", 1).size(), 1u);
  EXPECT_EQ(cache->list("", 0).size(), 0u);
}

TEST_F(KernelCacheTest, SaturatedPoolReportsResourceExhausted) {
  auto cache = make_cache(/*with_disk=*/false, /*threads=*/1, /*max_queued=*/1);
  PoolBlocker running(*pool_);
  // Fill the one queue slot.
  std::promise<void> filler_ran;
  ASSERT_TRUE(pool_->submit([&filler_ran] { filler_ran.set_value(); }).ok());

  std::promise<Result<CacheLookup>> answer;
  cache->get_or_compile(spec_with(false), kShape, [&answer](Result<CacheLookup> result) {
    answer.set_value(std::move(result));
  });
  auto future = answer.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(0)), std::future_status::ready)
      << "a refused request is answered at once";
  Result<CacheLookup> result = future.get();
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ErrorCode::resource_exhausted);
  EXPECT_EQ(cache->stats().compiles, 0u);

  running.release();
  filler_ran.get_future().wait();
  // Nothing of the refused request lingers: it can be asked again.
  auto retried = cache->get_or_compile_sync(spec_with(false), kShape);
  ASSERT_TRUE(retried.ok()) << retried.error().message;
  EXPECT_EQ(retried->tier, CacheTier::compiled);
}

// A queued compile whose every waiter abandons it never runs; one that
// still has a waiter does, and the abandoning waiter hears `cancelled` at once.
TEST_F(KernelCacheTest, AQueuedCompileEveryWaiterAbandonedNeverRuns) {
  auto cache = make_cache(/*with_disk=*/true, /*threads=*/1);
  PoolBlocker running(*pool_);  // keeps the compiles below queued

  std::promise<Result<CacheLookup>> gone;
  const KernelCache::Ticket lone = cache->get_or_compile(
      spec_with(false), kShape, [&gone](Result<CacheLookup> r) { gone.set_value(std::move(r)); });
  ASSERT_NE(lone.waiter, 0u);
  std::promise<Result<CacheLookup>> first, second;
  const KernelCache::Ticket a = cache->get_or_compile(
      spec_with(true), kShape, [&first](Result<CacheLookup> r) { first.set_value(std::move(r)); });
  cache->get_or_compile(spec_with(true), kShape,
                        [&second](Result<CacheLookup> r) { second.set_value(std::move(r)); });

  cache->abandon(lone);
  auto gone_result = gone.get_future();
  ASSERT_EQ(gone_result.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_EQ(gone_result.get().error().code, ErrorCode::cancelled);
  cache->abandon(a);  // the other waiter of this key stays
  auto first_result = first.get_future();
  EXPECT_EQ(first_result.get().error().code, ErrorCode::cancelled);
  cache->abandon(lone);  // a second abandon changes nothing

  running.release();
  Result<CacheLookup> kept = second.get_future().get();
  ASSERT_TRUE(kept.ok()) << kept.error().message;
  EXPECT_EQ(kept->tier, CacheTier::compiled);
  // Wait for the abandoned task to be skipped, then check it never compiled.
  for (int i = 0; i < 500 && cache->stats().abandoned_compiles == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(cache->stats().abandoned_compiles, 1u);
  EXPECT_EQ(cache->stats().compiles, 1u);
  EXPECT_FALSE(cache->get(cache->key_for(spec_with(false))).ok()) << "the abandoned kernel was cached";
  // Asked again, it compiles normally.
  auto again = cache->get_or_compile_sync(spec_with(false), kShape);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->tier, CacheTier::compiled);
}

TEST_F(KernelCacheTest, CompileErrorsReachEveryWaiterAndAreNotCached) {
  auto cache = make_cache(/*with_disk=*/false);
  KernelSpec bad = spec_with(false);
  bad.arch = "sm_75";  // not a supported arch
  auto first = cache->get_or_compile_sync(bad, kShape);
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.error().code, ErrorCode::invalid_argument);
  auto second = cache->get_or_compile_sync(bad, kShape);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(cache->stats().memory_entries, 0u);
}

TEST_F(KernelCacheTest, GetByKey) {
  auto cache = make_cache();
  auto unknown = cache->get(test_key("nothing here"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::not_found);

  const std::vector<std::string> malformed_keys = {"", "abc", "../etc/passwd",
                                                   std::string(64, 'G')};
  for (const auto& malformed : malformed_keys) {
    auto result = cache->get(malformed);
    ASSERT_FALSE(result.ok()) << malformed;
    EXPECT_EQ(result.error().code, ErrorCode::invalid_argument) << malformed;
  }
}

TEST_F(KernelCacheTest, WorksWithoutADiskTierAndWithAnUnwritableOne) {
  // The cache folder path is a regular file: every store fails, and the
  // kernel is still compiled and served from memory.
  write_file(dir_.path() / "kernels", "in the way");
  auto cache = make_cache();
  const KernelSpec spec = spec_with(true, DType::bf16);
  auto first = cache->get_or_compile_sync(spec, kShape);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->tier, CacheTier::compiled);
  auto second = cache->get_or_compile_sync(spec, kShape);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->tier, CacheTier::memory);
  const auto listed = cache->list("", 10);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].key, first->kernel->key);
}

}  // namespace
}  // namespace flashcore
