// The decode family's definition (family/attention_decode): which shapes it
// serves, its validity rules naming the field, its NVRTC name expressions and
// its launch geometry and workspace, all from decode_params.cuh.
#include "family/attention_decode.hpp"

#include <gtest/gtest.h>

#include <array>
#include <vector>

#include "cuda/attention_launch.hpp"
#include "decode/decode_params.cuh"

namespace flashcore {
namespace {

using decode_family::DecodeConfig;

ArchInfo arch(std::string_view name) { return *find_arch(name); }

RuntimeShape shape(int64_t batch, int64_t heads, int64_t kv_heads, int64_t seq_q, int64_t seq_k) {
  return RuntimeShape{batch, heads, kv_heads, seq_q, seq_k};
}

TEST(DecodeFamily, PacksTheQueryHeadsOfOneKvHead) {
  EXPECT_EQ(decode_family::packed_rows_for(shape(1, 32, 8, 1, 8192)), 16);   // GQA 4 x 1 row
  EXPECT_EQ(decode_family::packed_rows_for(shape(1, 32, 8, 4, 8192)), 16);   // 4 x 4
  EXPECT_EQ(decode_family::packed_rows_for(shape(1, 64, 8, 8, 4096)), 64);   // 8 x 8
  EXPECT_EQ(decode_family::packed_rows_for(shape(1, 32, 32, 1, 1024)), 16);  // MHA
  EXPECT_EQ(decode_family::packed_rows_for(shape(1, 8, 1, 5, 100)), 48);     // MQA 8 x 5 = 40
  EXPECT_EQ(decode_family::packed_rows_for(shape(1, 32, 8, 17, 100)), 0);    // 68 rows: prefill
  const ProblemClass bf16_128{DType::bf16, 128, false};
  EXPECT_TRUE(decode_family::serves(bf16_128, shape(4, 64, 8, 1, 16384)));
  // Top-left causal: one query row sees key 0 only, a mask the family does
  // not apply, so causal is served only with a single key (no mask at all).
  EXPECT_FALSE(decode_family::serves({DType::bf16, 128, true}, shape(1, 32, 8, 1, 10)));
  EXPECT_TRUE(decode_family::serves({DType::bf16, 128, true}, shape(1, 32, 8, 1, 1)));
  EXPECT_FALSE(decode_family::serves({DType::bf16, 128, true}, shape(1, 32, 8, 4, 10)))
      << "top-left causal with several query rows is not a decode";
  EXPECT_FALSE(decode_family::serves({DType::fp16, 96, false}, shape(1, 8, 8, 1, 10)));
  EXPECT_FALSE(decode_family::serves(bf16_128, shape(1, 32, 8, 17, 100)));
}

TEST(DecodeFamily, DefaultConfigsAreValidOnEveryArch) {
  for (int d : {64, 128, 256})
    for (const char* a : {"sm_80", "sm_86", "sm_90a"})
      for (const RuntimeShape& s : {shape(1, 32, 8, 1, 8192), shape(1, 64, 8, 8, 100),
                                    shape(16, 32, 32, 1, 1024), shape(1, 8, 1, 5, 1)}) {
        const ProblemClass problem{DType::fp16, d, false};
        const DecodeConfig c = decode_family::default_config(problem, s, arch(a));
        EXPECT_EQ(decode_family::config_error(c, problem, arch(a)), std::nullopt)
            << "D" << d << " " << a << " rows " << c.packed_rows;
        EXPECT_GE(c.packed_rows, decode_family::packed_rows_for(s));
      }
  // Where it fits, the default is the configuration measured best on the H200.
  const DecodeConfig h200 = decode_family::default_config({DType::bf16, 128, false},
                                                          shape(1, 32, 8, 1, 8192), arch("sm_90a"));
  EXPECT_EQ(h200, (DecodeConfig{16, 64, 4, 3, true, 0}));
}

TEST(DecodeFamily, BadConfigsNameTheField) {
  const ProblemClass problem{DType::bf16, 128, false};
  struct Case {
    DecodeConfig config;
    const char* field;
  };
  const Case cases[] = {
      {{24, 64, 4, 3, true, 0}, "config.packed_rows"},
      {{80, 64, 5, 3, true, 0}, "config.packed_rows"},
      {{32, 64, 3, 3, true, 0}, "config.warps"},   // 2 m-tiles: warps must be even
      {{16, 48, 4, 3, true, 0}, "config.block_n"},  // 4 warps share a tile: 64-key multiples
      {{16, 64, 4, 1, true, 0}, "config.stages"},
      {{16, 64, 4, 3, true, -1}, "config.splits"},
      {{16, 64, 4, 3, true, 5000}, "config.splits"},
      {{64, 256, 16, 6, true, 0}, "config"},  // too much shared memory on sm_86
  };
  for (const Case& c : cases) {
    const auto error = decode_family::config_error(c.config, problem, arch("sm_86"));
    ASSERT_TRUE(error.has_value()) << c.field;
    EXPECT_EQ(error->rfind(std::string(c.field) + ":", 0), 0u) << *error;
  }
  EXPECT_NE(decode_family::config_error(DecodeConfig{}, {DType::bf16, 96, false}, arch("sm_90a")),
            std::nullopt);
}

TEST(DecodeFamily, NameExpressionsSpellTheTemplateArguments) {
  const ProblemClass problem{DType::bf16, 128, false};
  EXPECT_EQ(decode_family::split_name_expression(problem, DecodeConfig{16, 64, 4, 3, true, 0}),
            "flashcore::attention_decode_split<flashcore::bf16_t, 128, 16, 64, 4, 3, true>");
  EXPECT_EQ(decode_family::combine_name_expression({DType::fp16, 64, false}),
            "flashcore::attention_decode_combine<flashcore::fp16_t, 64>");
}

TEST(DecodeFamily, LaunchFollowsTheSplitRuleAndSizesTheWorkspace) {
  const ProblemClass problem{DType::bf16, 128, false};
  DecodeConfig config;  // 64-key tiles, fused combine, splits by the rule
  // B1 Llama-3-8B decode on 132 SMs: 8 kv heads, 128 tiles; the rule splits.
  const RuntimeShape small = shape(1, 32, 8, 1, 8192);
  const auto fused = decode_family::launch(config, problem, small, 132);
  EXPECT_EQ(fused.num_splits, decode_num_splits(1, 32, 8, 1, 8192, 128, 64, 132));
  EXPECT_GT(fused.num_splits, 1);
  EXPECT_EQ(fused.split.grid.x, static_cast<uint32_t>(fused.num_splits));
  EXPECT_EQ(fused.split.grid.y, 8u);
  EXPECT_EQ(fused.split.grid.z, 1u);
  EXPECT_EQ(fused.split.block.x, 128u);
  EXPECT_FALSE(fused.combine.has_value());
  EXPECT_EQ(fused.workspace_bytes,
            static_cast<uint64_t>(decode_workspace_bytes(1, 32, 8, 1, 128, fused.num_splits)));
  // Unfused: a combine kernel over every output row.
  config.fused_combine = false;
  const auto two = decode_family::launch(config, problem, small, 132);
  ASSERT_TRUE(two.combine.has_value());
  EXPECT_EQ(two.combine->block.x, static_cast<uint32_t>(kDecodeCombineThreads));
  EXPECT_EQ(two.combine->grid.x * decode_combine_rows_per_block(128) >= 32u, true);
  // A large batch fills the GPU without splitting: one launch, no workspace.
  const auto big = decode_family::launch(config, problem, shape(64, 32, 8, 1, 1024), 132);
  EXPECT_EQ(big.num_splits, 1);
  EXPECT_FALSE(big.combine.has_value());
  EXPECT_EQ(big.workspace_bytes, 0u);
  // A fixed split count is taken, reduced to the splits that own a tile.
  config.splits = 1000;
  EXPECT_EQ(decode_family::launch(config, problem, shape(1, 32, 8, 1, 300), 132).num_splits,
            decode_effective_splits(300, 64, 1000));
  config.splits = 7;
  EXPECT_EQ(decode_family::launch(config, problem, small, 132).num_splits, 7);
}

// A handle's launch config is checked before the split rule divides by it:
// sizes read from a handle's int32 fields as unsigned (-1 is 4294967295)
// would come out negative as int there (the handle-ABI fuzzer found
// block_n -1 dividing by zero in decode_effective_splits).
TEST(DecodeFamily, LaunchConfigOutsideTheBlockLimitsIsRefusedNamingTheField) {
  cuda::DecodeLaunchConfig config;
  config.head_dim = 128;
  config.packed_rows = 16;
  config.block_n = 64;
  config.split_threads = 128;
  config.splits = 8;
  EXPECT_TRUE(cuda::decode_launch_error(config).ok());
  for (unsigned bad : {0u, 1025u, 4294967295u}) {
    cuda::DecodeLaunchConfig c = config;
    c.block_n = bad;
    const auto block_n = cuda::decode_launch_error(c);
    ASSERT_FALSE(block_n.ok()) << bad;
    EXPECT_NE(block_n.error().message.find("config.block_n"), std::string::npos);
    c = config;
    c.packed_rows = bad;
    const auto rows = cuda::decode_launch_error(c);
    ASSERT_FALSE(rows.ok()) << bad;
    EXPECT_NE(rows.error().message.find("config.block_m"), std::string::npos);
    c = config;
    c.split_threads = bad;
    const auto threads = cuda::decode_launch_error(c);
    ASSERT_FALSE(threads.ok()) << bad;
    EXPECT_NE(threads.error().message.find("launch.block.x"), std::string::npos);
  }
}

// The split counters sit at offset 0 of the workspace whatever the shape, so
// a workspace reused for another shape keeps them where it zeroed them; the
// partials follow, and everything fits in decode_workspace_bytes.
TEST(DecodeFamily, WorkspaceCountersLeadAtOffsetZeroForEveryShape) {
  const CUdeviceptr base = 0x100000;
  for (auto [batch, heads, kv_heads, seq_q, splits] :
       std::vector<std::array<int, 5>>{{1, 32, 8, 1, 16}, {8, 32, 8, 1, 4}, {3, 16, 16, 1, 7},
                                       {1, 64, 8, 8, 32}}) {
    AttentionParams p{};
    p.batch = batch;
    p.heads = heads;
    p.kv_heads = kv_heads;
    p.seq_q = seq_q;
    const int d = 128;
    const DecodeParams dp = cuda::make_decode_params(p, base, d, splits);
    const auto at = [&](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) - base; };
    EXPECT_EQ(at(dp.split_counters), 0u);
    const auto counters = static_cast<uintptr_t>(decode_counter_bytes(batch, kv_heads));
    EXPECT_GE(counters, 4u * batch * kv_heads);
    EXPECT_EQ(at(dp.o_partial), counters);
    const uintptr_t o_bytes = 4ull * batch * heads * seq_q * splits * d;
    EXPECT_GE(at(dp.lse_partial), counters + o_bytes);
    EXPECT_EQ(at(dp.lse_partial) % 256, 0u);
    EXPECT_LE(at(dp.lse_partial) + 4ull * batch * heads * seq_q * splits,
              static_cast<uintptr_t>(decode_workspace_bytes(batch, heads, kv_heads, seq_q, d,
                                                            splits)));
  }
}

}  // namespace
}  // namespace flashcore
