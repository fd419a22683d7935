#include "cache/disk_store.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cache/cache_key.hpp"
#include "cache_test_util.hpp"
#include "scratch_dir.hpp"

namespace flashcore {
namespace {

namespace fs = std::filesystem;
using namespace cache_testing;  // sample keys, entries and cubins
using namespace test_support;   // ScratchDir, read_file, write_file

void expect_same_entry(const CachedKernel& got, const CachedKernel& want, bool with_cubin) {
  EXPECT_EQ(got.key, want.key);
  EXPECT_EQ(got.spec.template_id, want.spec.template_id);
  EXPECT_EQ(got.spec.problem.dtype, want.spec.problem.dtype);
  EXPECT_EQ(got.spec.problem.head_dim, want.spec.problem.head_dim);
  EXPECT_EQ(got.spec.problem.causal, want.spec.problem.causal);
  EXPECT_EQ(got.spec.config, want.spec.config);
  EXPECT_EQ(got.spec.arch, want.spec.arch);
  EXPECT_EQ(got.first_shape.batch, want.first_shape.batch);
  EXPECT_EQ(got.first_shape.heads, want.first_shape.heads);
  EXPECT_EQ(got.first_shape.kv_heads, want.first_shape.kv_heads);
  EXPECT_EQ(got.first_shape.seq_q, want.first_shape.seq_q);
  EXPECT_EQ(got.first_shape.seq_k, want.first_shape.seq_k);
  EXPECT_EQ(got.compiled.name_expression, want.compiled.name_expression);
  EXPECT_EQ(got.compiled.lowered_name, want.compiled.lowered_name);
  if (with_cubin) {
    EXPECT_EQ(got.compiled.cubin, want.compiled.cubin);
  } else {
    EXPECT_TRUE(got.compiled.cubin.empty());
  }
  EXPECT_EQ(got.cubin_size, want.compiled.cubin.size());
  const auto& gr = got.compiled.resources;
  const auto& wr = want.compiled.resources;
  EXPECT_EQ(gr.registers, wr.registers);
  EXPECT_EQ(gr.static_smem_bytes, wr.static_smem_bytes);
  EXPECT_EQ(gr.spill_store_bytes, wr.spill_store_bytes);
  EXPECT_EQ(gr.spill_load_bytes, wr.spill_load_bytes);
  EXPECT_EQ(gr.stack_frame_bytes, wr.stack_frame_bytes);
  EXPECT_EQ(gr.constant_bytes, wr.constant_bytes);
  EXPECT_EQ(gr.ptxas_log, wr.ptxas_log);
  EXPECT_DOUBLE_EQ(got.compiled.compile_ms, want.compiled.compile_ms);
  EXPECT_EQ(got.compiled.toolchain.nvrtc_version, want.compiled.toolchain.nvrtc_version);
  EXPECT_EQ(got.compiled.toolchain.template_source_hash,
            want.compiled.toolchain.template_source_hash);
  EXPECT_EQ(got.compiled.toolchain.options, want.compiled.toolchain.options);
  EXPECT_EQ(got.created_unix_ms, want.created_unix_ms);
}

TEST(DiskStore, EncodeDecodeRoundTrip) {
  const CachedKernel entry = sample_entry(test_key("a"), sample_cubin(3000, 7));
  const std::string bytes = DiskStore::encode(entry);
  EXPECT_EQ(bytes.substr(0, 8), "FCKERNEL");
  std::string why;
  auto decoded = DiskStore::decode(bytes, &why);
  ASSERT_TRUE(decoded.has_value()) << why;
  expect_same_entry(*decoded, entry, /*with_cubin=*/true);
}

TEST(DiskStore, EveryQPlacementAndLayoutRoundTripsByName) {
  for (QPlacement q : {QPlacement::automatic, QPlacement::registers, QPlacement::shared})
    for (SmemLayout l : {SmemLayout::automatic, SmemLayout::swizzled, SmemLayout::padded}) {
      CachedKernel entry = sample_entry(test_key("enums"), sample_cubin(64, 2));
      entry.spec.config.q_placement = q;
      entry.spec.config.smem_layout = l;
      const std::string bytes = DiskStore::encode(entry);
      // Stored by name, so the file reads the same whatever the enum's numbering.
      EXPECT_NE(bytes.find("\"q_placement\":\"" + std::string(q_placement_name(q)) + "\""),
                std::string::npos);
      EXPECT_NE(bytes.find("\"smem_layout\":\"" + std::string(smem_layout_name(l)) + "\""),
                std::string::npos);
      std::string why;
      auto decoded = DiskStore::decode(bytes, &why);
      ASSERT_TRUE(decoded.has_value()) << why;
      EXPECT_EQ(decoded->spec.config, entry.spec.config) << config_label(entry.spec.config);
    }
}

// The Hopper and decode families' config fields and a second kernel survive
// the disk (an entry read back must be the kernel its key names).
TEST(DiskStore, OtherFamiliesFieldsAndExtraKernelsRoundTrip) {
  CachedKernel entry = sample_entry(test_key("families"), sample_cubin(300, 4));
  entry.spec.template_id = "attention_fwd_sm90";
  entry.spec.config = TileConfig{128, 128, 12, 2};
  entry.spec.config.pingpong = entry.spec.config.persistent = true;
  entry.spec.config.fused_combine = true;
  entry.spec.config.splits = 7;
  entry.compiled.extra_kernels = {{"flashcore::combine<1>", "_Z7combineILi1EEvv"}};
  std::string why;
  auto decoded = DiskStore::decode(DiskStore::encode(entry), &why);
  ASSERT_TRUE(decoded.has_value()) << why;
  EXPECT_EQ(decoded->spec.config, entry.spec.config) << config_label(decoded->spec.config);
  EXPECT_EQ(decoded->compiled.extra_kernels, entry.compiled.extra_kernels);
  // An sm80 entry writes none of them (its metadata is what it always was).
  const CachedKernel plain = sample_entry(test_key("plain"), sample_cubin(300, 5));
  const std::string bytes = DiskStore::encode(plain);
  EXPECT_EQ(bytes.find("pingpong"), std::string::npos);
  EXPECT_EQ(bytes.find("extra_kernels"), std::string::npos);
}

TEST(DiskStore, DecodeRefusesAnUnknownEnumAndTheOlderFormat) {
  // An out-of-range value is written as a name no parser accepts, and the
  // entry is then refused rather than read back as some other kernel.
  CachedKernel entry = sample_entry(test_key("enums"), sample_cubin(64, 2));
  entry.spec.config.q_placement = static_cast<QPlacement>(9);
  std::string why;
  EXPECT_FALSE(DiskStore::decode(DiskStore::encode(entry), &why).has_value());
  EXPECT_NE(why.find("q_placement"), std::string::npos) << why;
  entry = sample_entry(test_key("enums"), sample_cubin(64, 2));
  entry.spec.config.smem_layout = static_cast<SmemLayout>(9);
  EXPECT_FALSE(DiskStore::decode(DiskStore::encode(entry), &why).has_value());
  EXPECT_NE(why.find("smem_layout"), std::string::npos) << why;

  // Format 1 files (before q_placement and smem_layout) are not read.
  ASSERT_GE(kCacheFormatVersion, 2u);
  std::string old = DiskStore::encode(sample_entry(test_key("a"), sample_cubin(64, 2)));
  old[8] = 1;
  EXPECT_FALSE(DiskStore::decode(old, &why).has_value());
  EXPECT_NE(why.find("version 1"), std::string::npos) << why;
}

TEST(DiskStore, DecodeRejectsDamage) {
  const CachedKernel entry = sample_entry(test_key("a"), sample_cubin(3000, 7));
  const std::string good = DiskStore::encode(entry);
  std::string why;

  std::string bad_magic = good;
  bad_magic[0] = 'X';
  EXPECT_FALSE(DiskStore::decode(bad_magic, &why));
  EXPECT_NE(why.find("magic"), std::string::npos) << why;

  std::string bad_version = good;
  bad_version[8] = static_cast<char>(kCacheFormatVersion + 1);
  EXPECT_FALSE(DiskStore::decode(bad_version, &why));
  EXPECT_NE(why.find("version"), std::string::npos) << why;

  std::string flipped = good;
  flipped[flipped.size() - 100] ^= 0x01;  // inside the cubin
  EXPECT_FALSE(DiskStore::decode(flipped, &why));
  EXPECT_NE(why.find("checksum"), std::string::npos) << why;

  EXPECT_FALSE(DiskStore::decode(good.substr(0, good.size() - 1), &why));
  EXPECT_FALSE(DiskStore::decode(good + "x", &why));
  EXPECT_FALSE(DiskStore::decode(good.substr(0, 20), &why));
  EXPECT_FALSE(DiskStore::decode("", &why));

  // Lengths far past the file: rejected without reading out of bounds.
  std::string huge = good;
  for (int i = 16; i < 24; ++i) huge[i] = '\xff';
  EXPECT_FALSE(DiskStore::decode(huge, &why));
  EXPECT_FALSE(DiskStore::decode(huge, nullptr));
}

TEST(DiskStore, StoreThenLoadAcrossInstances) {
  ScratchDir dir;
  const CachedKernel entry = sample_entry(test_key("a"), sample_cubin(5000, 3));
  {
    DiskStore store(dir.path() / "cache");
    EXPECT_FALSE(store.load(entry.key).has_value());
    ASSERT_TRUE(store.store(entry).ok());
    const fs::path path = store.path_for(entry.key);
    EXPECT_EQ(path, dir.path() / "cache" / entry.key.substr(0, 2) / (entry.key + ".fck"));
    EXPECT_TRUE(fs::exists(path));
    auto loaded = store.load(entry.key);
    ASSERT_TRUE(loaded.has_value());
    expect_same_entry(*loaded, entry, /*with_cubin=*/true);
  }
  DiskStore reopened(dir.path() / "cache");
  auto loaded = reopened.load(entry.key);
  ASSERT_TRUE(loaded.has_value());
  expect_same_entry(*loaded, entry, /*with_cubin=*/true);
  EXPECT_EQ(reopened.corrupt_entries(), 0u);
  EXPECT_FALSE(reopened.load(test_key("never stored")).has_value());
  EXPECT_FALSE(reopened.load("not-a-key").has_value());
}

class DiskStoreCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(store_.store(entry_).ok());
    path_ = store_.path_for(entry_.key);
    ASSERT_TRUE(fs::exists(path_));
  }

  void expect_miss_and_removed() {
    EXPECT_FALSE(store_.load(entry_.key).has_value());
    EXPECT_FALSE(fs::exists(path_)) << "corrupt file was left in place";
    EXPECT_EQ(store_.corrupt_entries(), 1u);
    // Gone means a plain miss from now on, not a second corruption.
    EXPECT_FALSE(store_.load(entry_.key).has_value());
    EXPECT_EQ(store_.corrupt_entries(), 1u);
  }

  ScratchDir dir_;
  DiskStore store_{dir_.path()};
  CachedKernel entry_ = sample_entry(test_key("victim"), sample_cubin(4000, 5));
  fs::path path_;
};

TEST_F(DiskStoreCorruption, FlippedCubinByte) {
  std::string bytes = read_file(path_);
  bytes[bytes.size() - 10] ^= 0x40;
  write_file(path_, bytes);
  expect_miss_and_removed();
}

TEST_F(DiskStoreCorruption, TruncatedFile) {
  fs::resize_file(path_, fs::file_size(path_) / 2);
  expect_miss_and_removed();
}

TEST_F(DiskStoreCorruption, GarbageFile) {
  write_file(path_, "this is not a cache entry at all");
  expect_miss_and_removed();
}

TEST_F(DiskStoreCorruption, EntryFiledUnderAnotherKey) {
  // A valid entry, but under the wrong name: serving it would hand out the
  // wrong kernel.
  const std::string other = test_key("other");
  fs::create_directories(store_.path_for(other).parent_path());
  fs::rename(path_, store_.path_for(other));
  EXPECT_FALSE(store_.load(other).has_value());
  EXPECT_FALSE(fs::exists(store_.path_for(other)));
  EXPECT_EQ(store_.corrupt_entries(), 1u);
}

TEST(DiskStore, StoreIntoAnUnusableFolderFailsEveryTime) {
  ScratchDir dir;
  write_file(dir.path() / "file", "a regular file where the cache folder should be");
  DiskStore store(dir.path() / "file");
  const CachedKernel entry = sample_entry(test_key("a"), sample_cubin(100, 1));
  EXPECT_FALSE(store.store(entry).ok());
  EXPECT_FALSE(store.store(entry).ok());  // logged once, still reported
  EXPECT_FALSE(store.load(entry.key).has_value());
  EXPECT_TRUE(store.list("", 10).empty());
}

TEST(DiskStore, StoreRejectsAMalformedKey) {
  ScratchDir dir;
  DiskStore store(dir.path());
  Status stored = store.store(sample_entry("../../escape", sample_cubin(10, 1)));
  ASSERT_FALSE(stored.ok());
  EXPECT_EQ(stored.error().code, ErrorCode::invalid_argument);
}

TEST(DiskStore, ListIsSortedPaginatedAndSkipsCorruptFiles) {
  ScratchDir dir;
  DiskStore store(dir.path());
  std::vector<CachedKernel> entries;
  for (int i = 0; i < 7; ++i) {
    entries.push_back(sample_entry(test_key("list" + std::to_string(i)),
                                   sample_cubin(100 + 10 * i, i)));
    ASSERT_TRUE(store.store(entries.back()).ok());
  }
  // Debris that is not an entry: ignored, not deleted.
  write_file(dir.path() / "ab" / "notes.txt", "hello");
  write_file(dir.path() / "ab" / (test_key("x") + ".fck.tmp.1.2"), "partial");
  // A corrupt entry (bad metadata): removed and skipped.
  const std::string bad_key = test_key("corrupt");
  write_file(store.path_for(bad_key), "FCKERNEL garbage");

  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.key < b.key; });

  std::vector<CachedKernel> seen;
  std::string after;
  int pages = 0;
  for (;;) {
    auto page = store.list(after, 3);
    if (page.empty()) break;
    ASSERT_LE(page.size(), 3u);
    ++pages;
    for (auto& entry : page) seen.push_back(std::move(entry));
    after = seen.back().key;
    ASSERT_LT(pages, 10) << "pagination does not advance";
  }
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), entries.size());
  for (size_t i = 0; i < seen.size(); ++i) expect_same_entry(seen[i], entries[i], false);

  EXPECT_FALSE(fs::exists(store.path_for(bad_key)));
  EXPECT_EQ(store.corrupt_entries(), 1u);
  EXPECT_TRUE(fs::exists(dir.path() / "ab" / "notes.txt"));
  EXPECT_EQ(store.list("", 0).size(), 0u);
  EXPECT_EQ(store.list(entries.back().key, 10).size(), 0u);
  EXPECT_TRUE(DiskStore(dir.path() / "absent").list("", 10).empty());
}

// The bound: past max_bytes the least recently used entries go, a hit
// counts as a use, the entry just stored always stays, and the order and
// the total survive a restart.
TEST(DiskStore, BoundEvictsTheLeastRecentlyUsedEntries) {
  ScratchDir dir;
  const fs::path root = dir.path() / "cache";
  std::vector<CachedKernel> entries;
  for (int i = 0; i < 5; ++i)
    entries.push_back(sample_entry(test_key("lru" + std::to_string(i)), sample_cubin(10000, i)));
  const uint64_t one = DiskStore::encode(entries[0]).size();
  {
    DiskStore store(root, 3 * one + one / 2);  // room for three
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(store.store(entries[i]).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // distinct file times
    }
    ASSERT_TRUE(store.load(entries[0].key).has_value());  // 0 is now the most recent
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_TRUE(store.store(entries[3]).ok());           // evicts 1, the least recent
    EXPECT_EQ(store.evicted_entries(), 1u);
    EXPECT_FALSE(fs::exists(store.path_for(entries[1].key)));
    for (int i : {0, 2, 3}) EXPECT_TRUE(store.load(entries[i].key).has_value()) << i;
    EXPECT_LE(store.bytes(), 3 * one + one / 2);
  }
  // A new store on the folder counts what is there and keeps evicting by time.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  DiskStore reopened(root, 3 * one + one / 2);
  EXPECT_EQ(reopened.bytes(), 3 * one);
  ASSERT_TRUE(reopened.store(entries[4]).ok());
  EXPECT_EQ(reopened.evicted_entries(), 1u);
  EXPECT_EQ(reopened.list("", 10).size(), 3u);
  EXPECT_TRUE(reopened.load(entries[4].key).has_value());
  // A bound smaller than one entry keeps just the newest.
  DiskStore tiny(root, 1);
  EXPECT_EQ(tiny.list("", 10).size(), 0u);  // start evicts everything over the bound
  ASSERT_TRUE(tiny.store(entries[1]).ok());
  EXPECT_TRUE(tiny.load(entries[1].key).has_value());
  EXPECT_EQ(tiny.list("", 10).size(), 1u);
}

// cache clear|evict: every entry file goes whole (also one another daemon
// sharing the folder wrote), a temp file of a writer in flight stays, and
// the byte count follows.
TEST(DiskStore, ClearEraseAndTrimRemoveWholeEntries) {
  ScratchDir dir;
  const fs::path root = dir.path() / "cache";
  std::vector<CachedKernel> entries;
  for (int i = 0; i < 4; ++i)
    entries.push_back(sample_entry(test_key("admin" + std::to_string(i)), sample_cubin(5000, i)));
  const uint64_t one = DiskStore::encode(entries[0]).size();
  DiskStore store(root);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(store.store(entries[i]).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // distinct file times
  }
  ASSERT_TRUE(store.load(entries[0].key).has_value());  // 1 is now the least recent

  TierRemoval erased = store.erase(entries[2].key);
  EXPECT_EQ(erased.entries_removed, 1u);
  EXPECT_EQ(erased.bytes_removed, one);
  EXPECT_EQ(erased.entries_left, 2u);
  EXPECT_EQ(erased.bytes_left, 2 * one);
  EXPECT_FALSE(fs::exists(store.path_for(entries[2].key)));
  EXPECT_EQ(store.erase(entries[2].key).entries_removed, 0u);
  EXPECT_EQ(store.erase("not-a-key").entries_removed, 0u);

  TierRemoval trimmed = store.trim_to(one);
  EXPECT_EQ(trimmed.entries_removed, 1u);
  EXPECT_FALSE(store.load(entries[1].key).has_value());
  EXPECT_TRUE(store.load(entries[0].key).has_value());
  EXPECT_EQ(store.bytes(), one);
  EXPECT_EQ(store.evicted_entries(), 0u);  // administrative, not the bound's

  // Another daemon's entry (written behind this store's back) and a writer's temp file.
  {
    DiskStore other(root);
    ASSERT_TRUE(other.store(entries[3]).ok());
  }
  const fs::path temp = store.path_for(entries[1].key).string() + ".tmp.4242.1";
  write_file(temp, "half of an entry");
  TierRemoval cleared = store.clear();
  EXPECT_EQ(cleared.entries_removed, 2u);
  EXPECT_EQ(cleared.bytes_removed, 2 * one);
  EXPECT_EQ(cleared.entries_left, 0u);
  EXPECT_EQ(cleared.bytes_left, 0u);
  EXPECT_EQ(store.bytes(), 0u);
  EXPECT_TRUE(store.list("", 10).empty());
  EXPECT_TRUE(fs::exists(temp));
  // Stores and loads go on after a clear.
  ASSERT_TRUE(store.store(entries[1]).ok());
  EXPECT_TRUE(store.load(entries[1].key).has_value());
  EXPECT_EQ(store.bytes(), one);
}

// Loads and stores racing a clear never leave the index naming a file that
// is gone, nor a file that does not decode.
TEST(DiskStore, ClearsRacingStoresAndLoadsLeaveOnlyWholeEntries) {
  ScratchDir dir;
  const fs::path root = dir.path() / "cache";
  std::vector<CachedKernel> entries;
  for (int i = 0; i < 4; ++i)
    entries.push_back(sample_entry(test_key("race" + std::to_string(i)), sample_cubin(20000, i)));
  DiskStore store(root);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        const CachedKernel& e = entries[(i + t) % entries.size()];
        (void)store.store(e);
        if (auto loaded = store.load(e.key); loaded && loaded->compiled.cubin != e.compiled.cubin)
          ++bad;
      }
    });
  for (int i = 0; i < 50; ++i) {
    store.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(store.corrupt_entries(), 0u);
  // What the index counts is exactly what is on disk, and each file decodes.
  uint64_t on_disk = 0;
  for (const auto& e : entries) {
    std::error_code ec;
    const auto size = fs::file_size(store.path_for(e.key), ec);
    if (ec) continue;
    on_disk += size;
    EXPECT_TRUE(DiskStore::decode(read_file(store.path_for(e.key)), nullptr).has_value());
  }
  EXPECT_EQ(store.bytes(), on_disk);
}

// Temp files a crashed writer left are removed at start; a fresh one (a
// writer sharing the folder right now) is left alone.
TEST(DiskStore, StaleTempFilesAreRemovedAtStart) {
  ScratchDir dir;
  const fs::path root = dir.path() / "cache";
  const CachedKernel entry = sample_entry(test_key("tmp"), sample_cubin(1000, 9));
  { ASSERT_TRUE(DiskStore(root).store(entry).ok()); }
  const fs::path shard = root / entry.key.substr(0, 2);
  const fs::path stale = shard / (entry.key + ".fck.tmp.4242.7");
  const fs::path fresh = shard / (entry.key + ".fck.tmp.4243.8");
  std::ofstream(stale) << "half a write";
  std::ofstream(fresh) << "being written";
  fs::last_write_time(stale, fs::file_time_type::clock::now() - std::chrono::hours(2));
  DiskStore store(root);
  EXPECT_EQ(store.stale_temp_files_removed(), 1u);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh));
  EXPECT_TRUE(store.load(entry.key).has_value());
}

}  // namespace
}  // namespace flashcore
