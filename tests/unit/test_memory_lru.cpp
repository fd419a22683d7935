#include "cache/memory_lru.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "cache_test_util.hpp"

namespace flashcore {
namespace {

using cache_testing::sample_cubin;
using cache_testing::sample_entry;
using cache_testing::test_key;

std::shared_ptr<const CachedKernel> entry(const std::string& name, size_t cubin_bytes) {
  return std::make_shared<const CachedKernel>(
      sample_entry(test_key(name), sample_cubin(cubin_bytes, 1)));
}

TEST(MemoryLru, FootprintGrowsWithTheCubin) {
  auto small = sample_entry(test_key("a"), sample_cubin(100, 1));
  auto large = sample_entry(test_key("a"), sample_cubin(5100, 1));
  EXPECT_GE(small.footprint_bytes(), 100u);
  EXPECT_EQ(large.footprint_bytes() - small.footprint_bytes(), 5000u);
}

TEST(MemoryLru, EvictsLeastRecentlyUsedByBytes) {
  auto a = entry("a", 1000), b = entry("b", 1000), c = entry("c", 1000), d = entry("d", 1000);
  // Room for exactly three entries of this size.
  MemoryLru lru(a->footprint_bytes() * 3);
  lru.put(a);
  lru.put(b);
  lru.put(c);
  EXPECT_EQ(lru.size(), 3u);
  EXPECT_EQ(lru.bytes(), a->footprint_bytes() * 3);

  // Touching a makes b the oldest, so d pushes b out rather than a.
  ASSERT_EQ(lru.get(a->key), a);
  lru.put(d);
  EXPECT_EQ(lru.size(), 3u);
  EXPECT_EQ(lru.evictions(), 1u);
  EXPECT_EQ(lru.get(b->key), nullptr);
  EXPECT_EQ(lru.get(a->key), a);
  EXPECT_EQ(lru.get(c->key), c);
  EXPECT_EQ(lru.get(d->key), d);
  EXPECT_LE(lru.bytes(), lru.max_bytes());

  // Order now (newest first): d, c, a. A double-size entry evicts a and c.
  auto big = entry("big", 1000 + a->footprint_bytes());
  ASSERT_LE(big->footprint_bytes(), lru.max_bytes() - d->footprint_bytes());
  lru.put(big);
  EXPECT_EQ(lru.evictions(), 3u);
  EXPECT_EQ(lru.get(a->key), nullptr);
  EXPECT_EQ(lru.get(c->key), nullptr);
  EXPECT_EQ(lru.get(d->key), d);
  EXPECT_EQ(lru.get(big->key), big);
  EXPECT_EQ(lru.bytes(), d->footprint_bytes() + big->footprint_bytes());
}

// cache clear|evict: entries go whole; a caller holding one keeps it.
TEST(MemoryLru, ClearEraseAndTrimCountWhatTheyRemove) {
  auto a = entry("a", 1000), b = entry("b", 2000), c = entry("c", 3000);
  MemoryLru lru(1 << 20);
  for (const auto& e : {a, b, c}) lru.put(e);
  ASSERT_EQ(lru.get(a->key), a);  // order now (newest first): a, c, b

  TierRemoval erased = lru.erase(c->key);
  EXPECT_EQ(erased.entries_removed, 1u);
  EXPECT_EQ(erased.bytes_removed, c->footprint_bytes());
  EXPECT_EQ(erased.entries_left, 2u);
  EXPECT_EQ(erased.bytes_left, a->footprint_bytes() + b->footprint_bytes());
  EXPECT_EQ(lru.get(c->key), nullptr);
  EXPECT_EQ(lru.erase(c->key).entries_removed, 0u);  // not held: nothing

  // Down to a's size: b, the least recent, goes; a stays.
  TierRemoval trimmed = lru.trim_to(a->footprint_bytes());
  EXPECT_EQ(trimmed.entries_removed, 1u);
  EXPECT_EQ(trimmed.bytes_removed, b->footprint_bytes());
  EXPECT_EQ(lru.get(b->key), nullptr);
  EXPECT_EQ(lru.get(a->key), a);
  EXPECT_EQ(lru.trim_to(a->footprint_bytes()).entries_removed, 0u);
  EXPECT_EQ(lru.evictions(), 0u);  // administrative removals are not LRU evictions

  std::shared_ptr<const CachedKernel> held = lru.get(a->key);
  TierRemoval cleared = lru.clear();
  EXPECT_EQ(cleared.entries_removed, 1u);
  EXPECT_EQ(cleared.bytes_removed, a->footprint_bytes());
  EXPECT_EQ(cleared.entries_left, 0u);
  EXPECT_EQ(cleared.bytes_left, 0u);
  EXPECT_EQ(lru.size(), 0u);
  EXPECT_EQ(lru.bytes(), 0u);
  EXPECT_EQ(held->compiled.cubin, a->compiled.cubin);  // still whole for its holder
  lru.put(b);
  EXPECT_EQ(lru.get(b->key), b);  // the tier works on after a clear
}

TEST(MemoryLru, OversizedEntryIsNotKeptAndEvictsNothing) {
  auto a = entry("a", 1000);
  MemoryLru lru(a->footprint_bytes() * 2);
  lru.put(a);
  auto huge = entry("huge", lru.max_bytes() + 1);
  lru.put(huge);
  EXPECT_EQ(lru.get(huge->key), nullptr);
  EXPECT_EQ(lru.get(a->key), a);
  EXPECT_EQ(lru.size(), 1u);
  EXPECT_EQ(lru.evictions(), 0u);
  EXPECT_EQ(lru.bytes(), a->footprint_bytes());
}

TEST(MemoryLru, ReplacingAKeyDoesNotCountItTwice) {
  auto first = entry("same", 1000);
  auto second = std::make_shared<const CachedKernel>(
      sample_entry(first->key, sample_cubin(3000, 2)));
  MemoryLru lru(1 << 20);
  lru.put(first);
  lru.put(second);
  EXPECT_EQ(lru.size(), 1u);
  EXPECT_EQ(lru.bytes(), second->footprint_bytes());
  EXPECT_EQ(lru.get(first->key), second);
  EXPECT_EQ(lru.evictions(), 0u);
}

TEST(MemoryLru, SnapshotListsEveryEntryHeld) {
  MemoryLru lru(1 << 20);
  EXPECT_TRUE(lru.snapshot().empty());
  auto a = entry("a", 10), b = entry("b", 10);
  lru.put(a);
  lru.put(b);
  auto all = lru.snapshot();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0], b);  // most recent first
  EXPECT_EQ(all[1], a);
}

TEST(MemoryLru, ConcurrentUseKeepsTheBudget) {
  auto probe = entry("probe", 500);
  MemoryLru lru(probe->footprint_bytes() * 10);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&lru, t] {
      for (int i = 0; i < 200; ++i) {
        lru.put(entry("t" + std::to_string(t) + "-" + std::to_string(i % 25), 500));
        lru.get(test_key("t0-" + std::to_string(i % 25)));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_LE(lru.bytes(), lru.max_bytes());
  EXPECT_EQ(lru.size(), 10u);
  EXPECT_EQ(lru.bytes(), probe->footprint_bytes() * 10);
  EXPECT_EQ(lru.snapshot().size(), lru.size());
}

}  // namespace
}  // namespace flashcore
