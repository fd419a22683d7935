// cache clear|evict (ClearCache, EvictCache) over real gRPC on loopback:
// what each removes from memory and disk, the refusals by field, the shared
// tier with an explicit flag (a real redis-server), and fetches racing a
// clear that see a whole kernel or none. The role check (admin) is in the
// auth matrix of test_shared_box.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "cache/disk_store.hpp"
#include "common/digest.hpp"
#include "redis_server.hpp"
#include "rpc_test_support.hpp"

namespace flashcore {
namespace {

using namespace rpc_testing;
using namespace test_support;
namespace fs = std::filesystem;

grpc::Status clear_cache(v1::FlashCore::Stub& stub, bool include_shared, v1::CacheChange* change) {
  v1::ClearCacheRequest request;
  request.set_include_shared(include_shared);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.ClearCache(&context, request, change);
}

grpc::Status evict_cache(v1::FlashCore::Stub& stub, const v1::EvictCacheRequest& request,
                         v1::CacheChange* change) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return stub.EvictCache(&context, request, change);
}

grpc::Status fetch(v1::FlashCore::Stub& stub, const std::string& key, v1::KernelHandle* handle) {
  v1::GetKernelRequest get;
  get.set_key(key);
  return get_kernel(stub, get, handle);
}

// Another kernel of the small template.
v1::KernelRequest request_with_block_n(int block_n) {
  v1::KernelRequest request = quick_request();
  request.mutable_config()->set_block_n(block_n);
  return request;
}

size_t entry_files(const fs::path& cache_dir) {
  size_t files = 0;
  for (const auto& file : fs::recursive_directory_iterator(cache_dir))
    if (file.path().extension() == ".fck") ++files;
  return files;
}

TEST(CacheAdminTest, ClearEmptiesMemoryAndDiskAndTheNextCompileCompilesAgain) {
  auto server = start_small_template_daemon();
  ASSERT_NE(server, nullptr);
  v1::KernelHandle a, b;
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(64), &a).ok());
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(32), &b).ok());
  ASSERT_EQ(entry_files(server->cache.path()), 2u);

  v1::CacheChange change;
  const grpc::Status status = clear_cache(*server->stub, false, &change);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(change.memory().entries_removed(), 2u);
  EXPECT_GT(change.memory().bytes_removed(), a.cubin_size() + b.cubin_size());
  EXPECT_EQ(change.memory().entries_left(), 0u);
  EXPECT_EQ(change.memory().bytes_left(), 0u);
  ASSERT_TRUE(change.has_disk());
  EXPECT_EQ(change.disk().entries_removed(), 2u);
  EXPECT_GT(change.disk().bytes_removed(), a.cubin_size() + b.cubin_size());
  EXPECT_EQ(change.disk().entries_left(), 0u);
  EXPECT_FALSE(change.has_shared());  // not asked
  EXPECT_EQ(entry_files(server->cache.path()), 0u);

  v1::KernelHandle gone;
  EXPECT_EQ(fetch(*server->stub, a.key(), &gone).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::ListKernelsResponse listed;
  ASSERT_TRUE(list_kernels(*server->stub, 0, "", &listed).ok());
  EXPECT_EQ(listed.kernels_size(), 0);

  v1::KernelHandle again;
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(64), &again).ok());
  EXPECT_EQ(again.tier(), v1::CACHE_TIER_COMPILED);
  EXPECT_EQ(again.key(), a.key());
  EXPECT_EQ(again.cubin_sha256(), a.cubin_sha256());

  // Clearing an empty tier is no error.
  ASSERT_TRUE(clear_cache(*server->stub, false, &change).ok());
  ASSERT_TRUE(clear_cache(*server->stub, false, &change).ok());
  EXPECT_EQ(change.memory().entries_removed(), 0u);
}

TEST(CacheAdminTest, EvictByKeyAndDownToBytes) {
  auto server = start_small_template_daemon();
  ASSERT_NE(server, nullptr);
  v1::KernelHandle a, b;
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(64), &a).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // distinct disk times
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(32), &b).ok());

  // By key: that kernel leaves memory and disk; a key no tier holds is named.
  v1::EvictCacheRequest by_key;
  by_key.add_keys(a.key());
  by_key.add_keys(std::string(64, 'c'));
  v1::CacheChange change;
  ASSERT_TRUE(evict_cache(*server->stub, by_key, &change).ok());
  EXPECT_EQ(change.memory().entries_removed(), 1u);
  EXPECT_EQ(change.memory().entries_left(), 1u);
  EXPECT_EQ(change.disk().entries_removed(), 1u);
  EXPECT_EQ(change.disk().entries_left(), 1u);
  ASSERT_EQ(change.keys_not_found_size(), 1);
  EXPECT_EQ(change.keys_not_found(0), std::string(64, 'c'));
  v1::KernelHandle handle;
  EXPECT_EQ(fetch(*server->stub, a.key(), &handle).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(fetch(*server->stub, b.key(), &handle).ok());
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_MEMORY);

  // Down to a size: nothing goes while the tiers fit; below that, the least
  // recently used first: b, in both tiers (stored first; its fetch above
  // came from memory, then a was compiled again and c for the first time).
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(64), &a).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  v1::KernelHandle c;
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(128), &c).ok());
  v1::EvictCacheRequest fits;
  fits.set_down_to_bytes(uint64_t{1} << 40);
  ASSERT_TRUE(evict_cache(*server->stub, fits, &change).ok());
  EXPECT_EQ(change.memory().entries_removed(), 0u);
  EXPECT_EQ(change.memory().entries_left(), 3u);
  EXPECT_EQ(change.disk().entries_left(), 3u);
  const uint64_t memory_bytes = change.memory().bytes_left();
  const uint64_t disk_bytes = change.disk().bytes_left();

  v1::EvictCacheRequest trim;
  trim.set_down_to_bytes(std::min(memory_bytes, disk_bytes) - 1);
  ASSERT_TRUE(evict_cache(*server->stub, trim, &change).ok());
  EXPECT_GE(change.memory().entries_removed(), 1u);
  EXPECT_LE(change.memory().bytes_left(), trim.down_to_bytes());
  EXPECT_GE(change.disk().entries_removed(), 1u);
  EXPECT_LE(change.disk().bytes_left(), trim.down_to_bytes());
  ASSERT_TRUE(fetch(*server->stub, c.key(), &handle).ok());  // the most recent stays
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_MEMORY);

  v1::EvictCacheRequest to_zero;
  to_zero.set_down_to_bytes(0);  // set, and zero: everything local goes
  ASSERT_TRUE(evict_cache(*server->stub, to_zero, &change).ok());
  EXPECT_EQ(change.memory().entries_left(), 0u);
  EXPECT_EQ(change.disk().entries_left(), 0u);
  EXPECT_EQ(entry_files(server->cache.path()), 0u);
}

TEST(CacheAdminTest, BadRequestsAreRefusedNamingTheField) {
  auto server = start_small_template_daemon();
  ASSERT_NE(server, nullptr);
  struct Case {
    const char* what;
    v1::EvictCacheRequest request;
    const char* field;
  };
  std::vector<Case> cases;
  cases.push_back({"nothing to evict", {}, "keys, down_to_bytes"});
  {
    v1::EvictCacheRequest both;
    both.add_keys(std::string(64, 'a'));
    both.set_down_to_bytes(10);
    cases.push_back({"keys and a size", both, "keys, down_to_bytes"});
  }
  {
    v1::EvictCacheRequest bad_key;
    bad_key.add_keys(std::string(64, 'a'));
    bad_key.add_keys("ABC");
    cases.push_back({"a malformed key", bad_key, "keys[1]"});
  }
  {
    v1::EvictCacheRequest shared_size;
    shared_size.set_down_to_bytes(10);
    shared_size.set_include_shared(true);
    cases.push_back({"a size for the shared tier", shared_size, "include_shared"});
  }
  for (const auto& c : cases) {
    v1::CacheChange change;
    const grpc::Status status = evict_cache(*server->stub, c.request, &change);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.what;
    EXPECT_EQ(status.error_message().rfind(c.field, 0), 0u) << c.what << ": " << status.error_message();
  }
  // The shared tier asked of a daemon without one.
  v1::CacheChange change;
  grpc::Status status = clear_cache(*server->stub, true, &change);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message().rfind("include_shared", 0), 0u) << status.error_message();
  v1::EvictCacheRequest shared_key;
  shared_key.add_keys(std::string(64, 'a'));
  shared_key.set_include_shared(true);
  status = evict_cache(*server->stub, shared_key, &change);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

// Fetches racing clears and evictions get a whole kernel (its bytes match
// its digest) or NOT_FOUND, never anything in between; what is left on disk
// afterwards decodes.
TEST(CacheAdminTest, FetchesRacingClearsSeeAWholeKernelOrNone) {
  auto server = start_small_template_daemon();
  ASSERT_NE(server, nullptr);
  std::vector<v1::KernelHandle> handles(2);
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(64), &handles[0]).ok());
  ASSERT_TRUE(compile(*server->stub, request_with_block_n(32), &handles[1]).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> whole{0}, missing{0}, wrong{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 3; ++t)
    clients.emplace_back([&, t] {
      auto stub = v1::FlashCore::NewStub(channel_to(*server->daemon));
      for (int i = 0; !stop.load(); ++i) {
        const v1::KernelHandle& want = handles[(i + t) % 2];
        v1::KernelHandle got;
        const grpc::Status status = fetch(*stub, want.key(), &got);
        if (status.ok() && got.cubin() == want.cubin() &&
            sha256_hex(got.cubin()) == want.cubin_sha256())
          ++whole;
        else if (status.error_code() == grpc::StatusCode::NOT_FOUND)
          ++missing;
        else
          ++wrong;
      }
    });
  // Put the kernels back on disk between clears (a restarted daemon's disk
  // tier is what a fetch then finds), from a store of the same folder.
  std::vector<CachedKernel> entries;
  {
    DiskStore reader(server->cache.path());
    for (const auto& h : handles) {
      auto loaded = reader.load(h.key());
      ASSERT_TRUE(loaded.has_value());
      entries.push_back(std::move(*loaded));
    }
  }
  for (int round = 0; round < 20; ++round) {
    v1::CacheChange change;
    if (round % 2 == 0) {
      ASSERT_TRUE(clear_cache(*server->stub, false, &change).ok());
    } else {
      v1::EvictCacheRequest evict;
      evict.add_keys(handles[0].key());
      ASSERT_TRUE(evict_cache(*server->stub, evict, &change).ok());
    }
    DiskStore writer(server->cache.path());
    for (const auto& entry : entries) ASSERT_TRUE(writer.store(entry).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  for (auto& client : clients) client.join();
  std::printf("racing fetches: %d whole, %d not found, %d wrong\n", whole.load(), missing.load(),
              wrong.load());
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(whole.load(), 0);
  for (const auto& file : fs::recursive_directory_iterator(server->cache.path())) {
    if (file.path().extension() != ".fck") continue;
    EXPECT_TRUE(DiskStore::decode(read_file(file.path()), nullptr).has_value()) << file.path();
  }
}

// The shared tier is cleared only when asked, for every daemon of the fleet;
// Redis out of reach: UNAVAILABLE, and the local tiers are left as they were.
TEST(CacheAdminTest, IncludeSharedClearsTheFleetsTierAndRedisDownLeavesLocalTiers) {
  RedisServer redis;
  ASSERT_TRUE(redis.start());
  auto with_redis = [&](DaemonConfig& config) { config.fleet.redis_url = redis.url(); };
  auto first = start_small_template_daemon(with_redis);
  auto second = start_small_template_daemon(with_redis);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  v1::KernelHandle a, b;
  ASSERT_TRUE(compile(*first->stub, request_with_block_n(64), &a).ok());
  ASSERT_TRUE(compile(*first->stub, request_with_block_n(32), &b).ok());

  // Without the flag the second daemon's clear leaves Redis alone: it still serves a.
  v1::CacheChange change;
  ASSERT_TRUE(clear_cache(*second->stub, false, &change).ok());
  v1::KernelHandle handle;
  ASSERT_TRUE(fetch(*second->stub, a.key(), &handle).ok());
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_SHARED);

  // Evict b everywhere from the second daemon: the first still holds it locally.
  v1::EvictCacheRequest evict;
  evict.add_keys(b.key());
  evict.set_include_shared(true);
  ASSERT_TRUE(evict_cache(*second->stub, evict, &change).ok());
  ASSERT_TRUE(change.has_shared());
  EXPECT_EQ(change.shared().entries_removed(), 1u);
  EXPECT_EQ(change.keys_not_found_size(), 0);
  EXPECT_EQ(fetch(*second->stub, b.key(), &handle).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(fetch(*first->stub, b.key(), &handle).ok());
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_MEMORY);

  // Clear with the flag: a is gone from Redis too.
  ASSERT_TRUE(clear_cache(*second->stub, true, &change).ok());
  EXPECT_EQ(change.shared().entries_removed(), 1u);
  EXPECT_EQ(change.memory().entries_removed(), 1u);  // a, promoted by the fetch above
  auto third = start_small_template_daemon(with_redis);
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(fetch(*third->stub, a.key(), &handle).error_code(), grpc::StatusCode::NOT_FOUND);

  // Redis down: UNAVAILABLE naming the shared tier; the first daemon's own tiers stay.
  redis.kill_now();
  const grpc::Status status = clear_cache(*first->stub, true, &change);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(status.error_message().find("shared tier"), std::string::npos) << status.error_message();
  ASSERT_TRUE(fetch(*first->stub, a.key(), &handle).ok());
  EXPECT_EQ(handle.tier(), v1::CACHE_TIER_MEMORY);
  EXPECT_EQ(entry_files(first->cache.path()), 2u);
  // Without the flag the local clear works with Redis down.
  ASSERT_TRUE(clear_cache(*first->stub, false, &change).ok());
  EXPECT_EQ(change.memory().entries_removed(), 2u);
}

}  // namespace
}  // namespace flashcore
