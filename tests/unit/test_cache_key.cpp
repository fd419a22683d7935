#include "cache/cache_key.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/digest.hpp"

namespace flashcore {
namespace {

KernelSpec base_spec() {
  KernelSpec spec;
  spec.template_id = "attention_fwd";
  spec.problem.dtype = DType::fp16;
  spec.problem.head_dim = 64;
  spec.problem.causal = false;
  spec.config = TileConfig{128, 64, 4, 2};
  spec.arch = "sm_90a";
  return spec;
}

ToolchainFingerprint base_toolchain() {
  return ToolchainFingerprint{"13.0", sha256_hex("template sources"),
                              {"--gpu-architecture=sm_90a", "--std=c++17", "-lineinfo"}};
}

TEST(CacheKey, IsSixtyFourLowercaseHexCharacters) {
  const std::string key = cache_key(base_spec(), base_toolchain());
  EXPECT_EQ(key.size(), 64u);
  EXPECT_EQ(key.find_first_not_of("0123456789abcdef"), std::string::npos) << key;
  EXPECT_TRUE(is_well_formed_key(key));
}

TEST(CacheKey, IsDeterministicAndIndependentOfAssignmentAndOptionOrder) {
  // The same spec, its fields assigned in the reverse order.
  KernelSpec reversed;
  reversed.arch = "sm_90a";
  reversed.config.stages = 2;
  reversed.config.warps = 4;
  reversed.config.block_n = 64;
  reversed.config.block_m = 128;
  reversed.problem.causal = false;
  reversed.problem.head_dim = 64;
  reversed.problem.dtype = DType::fp16;
  reversed.template_id = "attention_fwd";

  ToolchainFingerprint shuffled = base_toolchain();
  std::swap(shuffled.options.front(), shuffled.options.back());
  ToolchainFingerprint rebuilt;
  rebuilt.options = {"-lineinfo", "--std=c++17", "--gpu-architecture=sm_90a"};
  rebuilt.template_source_hash = sha256_hex("template sources");
  rebuilt.nvrtc_version = "13.0";

  const std::string key = cache_key(base_spec(), base_toolchain());
  EXPECT_EQ(cache_key(base_spec(), base_toolchain()), key);
  EXPECT_EQ(cache_key(reversed, base_toolchain()), key);
  EXPECT_EQ(cache_key(base_spec(), shuffled), key);
  EXPECT_EQ(cache_key(reversed, rebuilt), key);
}

TEST(CacheKey, ChangesWithEverySingleInput) {
  struct Change {
    std::string what;
    std::function<void(KernelSpec&, ToolchainFingerprint&)> apply;
  };
  const std::vector<Change> changes = {
      {"dtype", [](KernelSpec& s, ToolchainFingerprint&) { s.problem.dtype = DType::bf16; }},
      {"head_dim", [](KernelSpec& s, ToolchainFingerprint&) { s.problem.head_dim = 128; }},
      {"causal", [](KernelSpec& s, ToolchainFingerprint&) { s.problem.causal = true; }},
      {"block_m", [](KernelSpec& s, ToolchainFingerprint&) { s.config.block_m = 64; }},
      {"block_n", [](KernelSpec& s, ToolchainFingerprint&) { s.config.block_n = 128; }},
      {"warps", [](KernelSpec& s, ToolchainFingerprint&) { s.config.warps = 8; }},
      {"stages", [](KernelSpec& s, ToolchainFingerprint&) { s.config.stages = 3; }},
      // The base config resolves to registers and swizzled (D 64, 32 rows a
      // warp): the other value of each is another kernel.
      {"q_placement",
       [](KernelSpec& s, ToolchainFingerprint&) { s.config.q_placement = QPlacement::shared; }},
      {"smem_layout",
       [](KernelSpec& s, ToolchainFingerprint&) { s.config.smem_layout = SmemLayout::padded; }},
      {"arch", [](KernelSpec& s, ToolchainFingerprint&) { s.arch = "sm_80"; }},
      {"template_id", [](KernelSpec& s, ToolchainFingerprint&) { s.template_id = "attention_bwd"; }},
      {"nvrtc_version", [](KernelSpec&, ToolchainFingerprint& t) { t.nvrtc_version = "13.1"; }},
      {"template_source_hash",
       [](KernelSpec&, ToolchainFingerprint& t) { t.template_source_hash = sha256_hex("edited"); }},
      {"option changed",
       [](KernelSpec&, ToolchainFingerprint& t) { t.options[1] = "--std=c++20"; }},
      {"option added",
       [](KernelSpec&, ToolchainFingerprint& t) { t.options.push_back("--use_fast_math"); }},
      {"option removed", [](KernelSpec&, ToolchainFingerprint& t) { t.options.pop_back(); }},
  };

  const std::string base = cache_key(base_spec(), base_toolchain());
  std::set<std::string> seen = {base};
  for (const auto& change : changes) {
    KernelSpec spec = base_spec();
    ToolchainFingerprint toolchain = base_toolchain();
    change.apply(spec, toolchain);
    const std::string key = cache_key(spec, toolchain);
    EXPECT_NE(key, base) << change.what << " did not change the key";
    EXPECT_TRUE(is_well_formed_key(key)) << change.what;
    seen.insert(key);
  }
  // Every change also gives a key of its own.
  EXPECT_EQ(seen.size(), changes.size() + 1);
}

TEST(CacheKey, AnAutomaticConfigAndItsResolvedTwinShareOneKey) {
  // One kernel, one key: an UNSPECIFIED request and one naming the rule's
  // choice must hit the same cache entry. Across head dims the rule picks
  // both q placements and both layouts, so each case is covered.
  std::set<std::string> keys;
  int shared = 0, padded = 0;
  for (int head_dim : kSupportedHeadDims)
    for (const TileConfig& automatic : {TileConfig{128, 64, 4, 2}, TileConfig{64, 32, 4, 1},
                                        TileConfig{128, 32, 8, 3}}) {
      KernelSpec spec = base_spec();
      spec.problem.head_dim = head_dim;
      spec.config = automatic;
      const TileConfig twin = resolved(automatic, spec.problem);
      shared += twin.q_placement == QPlacement::shared;
      padded += twin.smem_layout == SmemLayout::padded;
      SCOPED_TRACE(std::to_string(head_dim) + " " + config_label(twin));
      const std::string key = cache_key(spec, base_toolchain());
      KernelSpec concrete = spec;
      concrete.config = twin;
      EXPECT_EQ(cache_key(concrete, base_toolchain()), key);
      // Half automatic is the same kernel too.
      KernelSpec half = spec;
      half.config.smem_layout = twin.smem_layout;
      EXPECT_EQ(cache_key(half, base_toolchain()), key);
      // Any other concrete choice is another kernel with another key.
      for (QPlacement q : {QPlacement::registers, QPlacement::shared})
        for (SmemLayout l : {SmemLayout::swizzled, SmemLayout::padded}) {
          KernelSpec other = spec;
          other.config.q_placement = q;
          other.config.smem_layout = l;
          if (other.config == twin) continue;
          EXPECT_NE(cache_key(other, base_toolchain()), key) << config_label(other.config);
        }
      keys.insert(key);
    }
  EXPECT_GT(shared, 0);
  EXPECT_GT(padded, 0);
  EXPECT_EQ(keys.size(), kSupportedHeadDims.size() * 3);
}

TEST(CacheKey, EveryConcreteQPlacementAndLayoutHasAKeyOfItsOwn) {
  std::set<std::string> keys;
  for (QPlacement q : {QPlacement::registers, QPlacement::shared})
    for (SmemLayout l : {SmemLayout::swizzled, SmemLayout::padded}) {
      KernelSpec spec = base_spec();
      spec.config.q_placement = q;
      spec.config.smem_layout = l;
      keys.insert(cache_key(spec, base_toolchain()));
    }
  EXPECT_EQ(keys.size(), 4u);
}

TEST(CacheKey, FieldBoundariesDoNotRunTogether) {
  // Moving a character from one option to the next keeps the concatenation
  // the same; the key must still differ.
  ToolchainFingerprint a = base_toolchain(), b = base_toolchain();
  a.options = {"-DA=1", "-DB"};
  b.options = {"-DA=1-DB"};
  EXPECT_NE(cache_key(base_spec(), a), cache_key(base_spec(), b));
  a.nvrtc_version = "13.0";
  a.template_source_hash = "x";
  b = a;
  b.nvrtc_version = "13.0x";
  b.template_source_hash = "";
  EXPECT_NE(cache_key(base_spec(), a), cache_key(base_spec(), b));
}

TEST(CacheKey, WellFormedKeyCheck) {
  const std::string good = sha256_hex("anything");
  EXPECT_TRUE(is_well_formed_key(good));
  EXPECT_FALSE(is_well_formed_key(""));
  EXPECT_FALSE(is_well_formed_key(good.substr(1)));
  EXPECT_FALSE(is_well_formed_key(good + "0"));
  std::string upper = good;
  upper[0] = 'A';
  EXPECT_FALSE(is_well_formed_key(upper));
  std::string traversal = good;
  traversal.replace(0, 3, "../");
  EXPECT_FALSE(is_well_formed_key(traversal));
  std::string non_hex = good;
  non_hex[10] = 'g';
  EXPECT_FALSE(is_well_formed_key(non_hex));
}

}  // namespace
}  // namespace flashcore
