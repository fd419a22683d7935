#include "search/tile_config.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace flashcore {
namespace {

ArchInfo arch(std::string_view name) {
  auto info = find_arch(name);
  EXPECT_TRUE(info.has_value()) << name;
  return info.value_or(ArchInfo{});
}

// The error text must start with the field the RPC names, so a client can
// tell which of its inputs to fix.
void expect_field(const std::optional<std::string>& error, const std::string& field) {
  ASSERT_TRUE(error.has_value()) << "expected an error naming " << field;
  EXPECT_EQ(error->substr(0, field.size() + 1), field + ":") << *error;
}

TEST(TileConfig, DefaultConfigIsValidOnEveryArchForHeadDim64) {
  const ProblemClass problem{DType::fp16, 64, false};
  for (const auto& a : supported_archs())
    EXPECT_EQ(config_error(TileConfig{}, problem, a), std::nullopt) << a.name;
}

TEST(TileConfig, BlockMMustBeAMultipleOf16) {
  const ProblemClass problem;
  expect_field(config_error(TileConfig{120, 64, 4, 2}, problem, arch("sm_90a")), "config.block_m");
  expect_field(config_error(TileConfig{8, 64, 1, 2}, problem, arch("sm_90a")), "config.block_m");
}

TEST(TileConfig, BlockMMustSplitIntoSixteenRowsPerWarp) {
  const ProblemClass problem;
  // 64 rows over 8 warps is 8 rows a warp: below one mma tile.
  expect_field(config_error(TileConfig{64, 64, 8, 2}, problem, arch("sm_90a")), "config.block_m");
  EXPECT_EQ(config_error(TileConfig{128, 64, 8, 2}, problem, arch("sm_90a")), std::nullopt);
}

TEST(TileConfig, WarpsMustBeAPowerOfTwo) {
  expect_field(config_error(TileConfig{96, 64, 3, 2}, ProblemClass{}, arch("sm_90a")),
               "config.warps");
  expect_field(config_error(TileConfig{128, 64, 0, 2}, ProblemClass{}, arch("sm_90a")),
               "config.warps");
}

TEST(TileConfig, StagesOutsideOneToFourAreRejected) {
  expect_field(config_error(TileConfig{128, 64, 4, 0}, ProblemClass{}, arch("sm_90a")),
               "config.stages");
  expect_field(config_error(TileConfig{128, 64, 4, 5}, ProblemClass{}, arch("sm_90a")),
               "config.stages");
  EXPECT_EQ(config_error(TileConfig{128, 64, 4, 1}, ProblemClass{}, arch("sm_90a")), std::nullopt);
  EXPECT_EQ(config_error(TileConfig{64, 32, 4, 4}, ProblemClass{}, arch("sm_90a")), std::nullopt);
}

TEST(TileConfig, SharedMemoryLimitDependsOnArch) {
  // head_dim 128, 128x128 tiles, 2 stages: 32 KiB of Q + 2*2*32 KiB of K/V = 160 KiB.
  const ProblemClass problem{DType::bf16, 128, true};
  const TileConfig config{128, 128, 4, 2};
  EXPECT_GT(smem_bytes(config, problem), arch("sm_86").max_dynamic_smem_bytes);
  EXPECT_LE(smem_bytes(config, problem), arch("sm_90a").max_dynamic_smem_bytes);
  expect_field(config_error(config, problem, arch("sm_86")), "config");
  EXPECT_NE(config_error(config, problem, arch("sm_86"))->find("sm_86"), std::string::npos);
  EXPECT_EQ(config_error(config, problem, arch("sm_90a")), std::nullopt);
}

TEST(TileConfig, SmemGrowsWithStagesAndHeadDim) {
  const ProblemClass d64{DType::fp16, 64, false};
  const ProblemClass d128{DType::fp16, 128, false};
  EXPECT_LT(smem_bytes(TileConfig{128, 64, 4, 1}, d64), smem_bytes(TileConfig{128, 64, 4, 2}, d64));
  EXPECT_EQ(smem_bytes(TileConfig{128, 64, 4, 2}, d128),
            2 * smem_bytes(TileConfig{128, 64, 4, 2}, d64));
}

TEST(TileConfig, HeadDimMustBeSupported) {
  for (int head_dim : {0, 7, 80})
    expect_field(problem_class_error(ProblemClass{DType::fp16, head_dim, false}),
                 "problem.head_dim");
  for (int head_dim : kSupportedHeadDims)
    EXPECT_EQ(problem_class_error(ProblemClass{DType::bf16, head_dim, true}), std::nullopt);
}

TEST(TileConfig, RuntimeShapeErrorsNameTheField) {
  EXPECT_EQ(runtime_shape_error(RuntimeShape{2, 16, 4, 1000, 2048}), std::nullopt);
  EXPECT_EQ(runtime_shape_error(RuntimeShape{}), std::nullopt);

  RuntimeShape shape;
  shape.batch = -1;
  expect_field(runtime_shape_error(shape), "problem.batch");

  shape = RuntimeShape{};
  shape.seq_q = 0;
  expect_field(runtime_shape_error(shape), "problem.seq_q");

  shape = RuntimeShape{};
  shape.heads = 12;
  shape.kv_heads = 5;
  expect_field(runtime_shape_error(shape), "problem.kv_heads");
  shape.kv_heads = 4;
  EXPECT_EQ(runtime_shape_error(shape), std::nullopt);
}

TEST(TileConfig, LaunchGeometryCoversEveryQueryRow) {
  const ProblemClass problem{DType::fp16, 64, false};
  const TileConfig config{128, 64, 4, 2};
  const RuntimeShape shape{3, 8, 0, 500, 0};
  const LaunchGeometry geometry = launch_geometry(config, problem, shape);
  EXPECT_EQ(geometry.grid.x, 4u);  // 3 full tiles of 128 and one of 116 rows
  EXPECT_EQ(geometry.grid.y, 8u);
  EXPECT_EQ(geometry.grid.z, 3u);
  EXPECT_EQ(geometry.block.x, 128u);
  EXPECT_EQ(geometry.block.y, 1u);
  EXPECT_EQ(geometry.dynamic_smem_bytes, static_cast<uint32_t>(smem_bytes(config, problem)));

  EXPECT_EQ(launch_geometry(config, problem, RuntimeShape{1, 1, 0, 512, 0}).grid.x, 4u);
  EXPECT_EQ(launch_geometry(config, problem, RuntimeShape{1, 1, 0, 513, 0}).grid.x, 5u);
}

TEST(TileConfig, NameExpressionSpellsTheTemplateArguments) {
  EXPECT_EQ(name_expression(ProblemClass{DType::fp16, 64, false}, TileConfig{128, 64, 4, 2}),
            "flashcore::attention_fwd<flashcore::fp16_t, 64, false, 128, 64, 4, 2>");
  EXPECT_EQ(name_expression(ProblemClass{DType::bf16, 128, true}, TileConfig{64, 32, 2, 3}),
            "flashcore::attention_fwd<flashcore::bf16_t, 128, true, 64, 32, 2, 3>");
}

TEST(TileConfig, ArchLookupAndDtypeNames) {
  EXPECT_TRUE(find_arch("sm_90a").has_value());
  EXPECT_FALSE(find_arch("sm_75").has_value());
  EXPECT_FALSE(find_arch("").has_value());
  EXPECT_EQ(parse_dtype(dtype_name(DType::bf16)), DType::bf16);
  EXPECT_EQ(parse_dtype(dtype_name(DType::fp16)), DType::fp16);
  EXPECT_EQ(parse_dtype("fp8"), std::nullopt);
}

TEST(TileConfig, CanonicalTextDiffersForEveryField) {
  const ProblemClass base;
  EXPECT_NE(canonical_problem_class(base), canonical_problem_class({DType::bf16, 64, false}));
  EXPECT_NE(canonical_problem_class(base), canonical_problem_class({DType::fp16, 128, false}));
  EXPECT_NE(canonical_problem_class(base), canonical_problem_class({DType::fp16, 64, true}));
  const TileConfig config;
  EXPECT_NE(canonical_config(config), canonical_config({64, 64, 4, 2}));
  EXPECT_NE(canonical_config(config), canonical_config({128, 128, 4, 2}));
  EXPECT_NE(canonical_config(config), canonical_config({128, 64, 8, 2}));
  EXPECT_NE(canonical_config(config), canonical_config({128, 64, 4, 3}));
}

}  // namespace
}  // namespace flashcore
