#include "family/tile_config.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <set>
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
  // The two trailing bools are QInRegisters and SwizzledSmem.
  EXPECT_EQ(name_expression(ProblemClass{DType::fp16, 64, false},
                            TileConfig{128, 64, 4, 2, QPlacement::registers, SmemLayout::swizzled}),
            "flashcore::attention_fwd<flashcore::fp16_t, 64, false, 128, 64, 4, 2, true, true>");
  EXPECT_EQ(name_expression(ProblemClass{DType::bf16, 128, true},
                            TileConfig{64, 32, 2, 3, QPlacement::shared, SmemLayout::padded}),
            "flashcore::attention_fwd<flashcore::bf16_t, 128, true, 64, 32, 2, 3, false, false>");
  // Automatic fields are spelled as the rule resolves them: D 128 with 32
  // rows a warp keeps Q in shared memory; D 96 has no power-of-two swizzle.
  EXPECT_EQ(name_expression(ProblemClass{DType::bf16, 128, true}, TileConfig{64, 32, 2, 3}),
            "flashcore::attention_fwd<flashcore::bf16_t, 128, true, 64, 32, 2, 3, false, true>");
  EXPECT_EQ(name_expression(ProblemClass{DType::fp16, 96, false}, TileConfig{128, 64, 8, 2}),
            "flashcore::attention_fwd<flashcore::fp16_t, 96, false, 128, 64, 8, 2, true, false>");
  for (int head_dim : kSupportedHeadDims) {
    const ProblemClass problem{DType::fp16, head_dim, false};
    for (const TileConfig& c : {TileConfig{}, TileConfig{64, 32, 2, 3}, TileConfig{128, 128, 8, 1}})
      EXPECT_EQ(name_expression(problem, c), name_expression(problem, resolved(c, problem)))
          << head_dim << " " << config_label(c);
  }
}

// ---- q_placement and smem_layout ------------------------------------------------

// The family's rule, written out from its definition: Q's A fragments cost
// (rows per warp / 16) * (head_dim / 16) * 4 registers per thread and stay in
// registers while that is at most 32; the layout is padded exactly where
// head_dim / 8 is not a power of two.
QPlacement expected_q_placement(const TileConfig& c, int head_dim) {
  return (c.block_m / c.warps / 16) * (head_dim / 16) * 4 <= 32 ? QPlacement::registers
                                                                 : QPlacement::shared;
}
SmemLayout expected_smem_layout(int head_dim) {
  const int chunks = head_dim / 8;
  return (chunks & (chunks - 1)) == 0 ? SmemLayout::swizzled : SmemLayout::padded;
}

TEST(TileConfig, ResolvedAppliesTheFamilyRuleToAutomaticFieldsOnly) {
  int registers = 0, shared = 0;
  for (int head_dim : kSupportedHeadDims) {
    const ProblemClass problem{DType::fp16, head_dim, false};
    for (int warps : {1, 2, 4, 8})
      for (int block_m = 16 * warps; block_m <= 256; block_m += 16 * warps) {
        const TileConfig automatic{block_m, 64, warps, 2};
        const TileConfig r = resolved(automatic, problem);
        SCOPED_TRACE(std::to_string(head_dim) + " " + config_label(automatic));
        EXPECT_EQ(r.q_placement, expected_q_placement(automatic, head_dim));
        EXPECT_EQ(r.smem_layout, expected_smem_layout(head_dim));
        (r.q_placement == QPlacement::registers ? registers : shared) += 1;
        // Only the automatic fields change, and resolving twice changes nothing.
        EXPECT_EQ((TileConfig{r.block_m, r.block_n, r.warps, r.stages}), automatic);
        EXPECT_EQ(resolved(r, problem), r);
        // Concrete choices are kept whatever the rule would say.
        for (QPlacement q : {QPlacement::registers, QPlacement::shared})
          for (SmemLayout l : {SmemLayout::swizzled, SmemLayout::padded}) {
            const TileConfig concrete{block_m, 64, warps, 2, q, l};
            EXPECT_EQ(resolved(concrete, problem), concrete);
          }
        TileConfig half = automatic;
        half.q_placement = QPlacement::shared;
        EXPECT_EQ(resolved(half, problem).q_placement, QPlacement::shared);
        EXPECT_EQ(resolved(half, problem).smem_layout, expected_smem_layout(head_dim));
      }
  }
  // Both outcomes of the q rule occur over this range, so the check above tests both.
  EXPECT_GT(registers, 0);
  EXPECT_GT(shared, 0);
  // The boundary: exactly 32 registers is still registers.
  EXPECT_EQ(resolved(TileConfig{128, 64, 4, 2}, ProblemClass{DType::fp16, 64, false}).q_placement,
            QPlacement::registers);  // (32 / 16) * 4 * 4 = 32
  EXPECT_EQ(resolved(TileConfig{128, 64, 4, 2}, ProblemClass{DType::fp16, 96, false}).q_placement,
            QPlacement::shared);  // (32 / 16) * 6 * 4 = 48
  EXPECT_EQ(resolved(TileConfig{}, ProblemClass{DType::fp16, 96, false}).smem_layout,
            SmemLayout::padded);
}

TEST(TileConfig, EnumNamesRoundTripAndUnknownNamesAreRefused) {
  for (QPlacement q : {QPlacement::automatic, QPlacement::registers, QPlacement::shared})
    EXPECT_EQ(parse_q_placement(q_placement_name(q)), q);
  for (SmemLayout l : {SmemLayout::automatic, SmemLayout::swizzled, SmemLayout::padded})
    EXPECT_EQ(parse_smem_layout(smem_layout_name(l)), l);
  EXPECT_EQ(parse_q_placement(""), std::nullopt);
  EXPECT_EQ(parse_q_placement("Registers"), std::nullopt);
  EXPECT_EQ(parse_q_placement("padded"), std::nullopt);
  EXPECT_EQ(parse_smem_layout("shared"), std::nullopt);
  EXPECT_EQ(parse_smem_layout("?"), std::nullopt);
}

TEST(TileConfig, ConfigLabelRoundTripsEveryFieldCombination) {
  std::set<std::string> labels;
  for (const TileConfig& base : {TileConfig{}, TileConfig{64, 32, 2, 1}, TileConfig{256, 256, 16, 4},
                                 TileConfig{16, 16, 1, 3}})
    for (QPlacement q : {QPlacement::automatic, QPlacement::registers, QPlacement::shared})
      for (SmemLayout l : {SmemLayout::automatic, SmemLayout::swizzled, SmemLayout::padded}) {
        TileConfig c = base;
        c.q_placement = q;
        c.smem_layout = l;
        const std::string label = config_label(c);
        EXPECT_EQ(parse_config_label(label), c) << label;
        EXPECT_TRUE(labels.insert(label).second) << "two configs share " << label;
      }
  EXPECT_EQ(config_label(TileConfig{}), "128x64w4s2");
  EXPECT_EQ(config_label(TileConfig{128, 64, 4, 2, QPlacement::shared, SmemLayout::swizzled}),
            "128x64w4s2-qsmem-swz");
  EXPECT_EQ(config_label(TileConfig{64, 32, 2, 3, QPlacement::registers, SmemLayout::padded}),
            "64x32w2s3-qreg-pad");
  // Suffixes in either order, only the one given, and the all-x spelling.
  EXPECT_EQ(parse_config_label("128x64w4s2-swz-qsmem"),
            (TileConfig{128, 64, 4, 2, QPlacement::shared, SmemLayout::swizzled}));
  EXPECT_EQ(parse_config_label("128x64w4s2-pad"),
            (TileConfig{128, 64, 4, 2, QPlacement::automatic, SmemLayout::padded}));
  EXPECT_EQ(parse_config_label("64x32x2x3"), (TileConfig{64, 32, 2, 3}));
  EXPECT_EQ(parse_config_label("64x32x2x3-qreg"),
            (TileConfig{64, 32, 2, 3, QPlacement::registers, SmemLayout::automatic}));
}

TEST(TileConfig, ParseConfigLabelRejectsMalformedLabels) {
  for (const char* bad :
       {"", "128", "128x64", "128x64w4", "128x64w4s", "128x64w4s2x", "128x64w4s2-",
        "128x64w4s2--qreg", "128x64w4s2-qreg-", "128x64w4s2-QREG", "128x64w4s2-qregs",
        "128x64w4s2-registers", "128x64w4s2 -qreg", "128x64w4s2-qreg-qsmem", "128x64w4s2-swz-pad",
        "128x64w4s2-swz-swz", "128y64w4s2", "128x64q4s2", "128x64w4t2", "128x64s4w2", "x64w4s2",
        "128x64w4s2.5", " 128x64w4s2", "128x 64w4s2", "+128x64w4s2", "128x+64w4s2",
        "99999999999x64w4s2", "abc", "-qreg"}) {
    EXPECT_EQ(parse_config_label(bad), std::nullopt) << "accepted '" << bad << "'";
  }
}

TEST(TileConfig, EnumFieldsAreCheckedByName) {
  const ProblemClass problem{DType::fp16, 64, false};
  TileConfig c;
  c.q_placement = static_cast<QPlacement>(7);
  expect_field(config_error(c, problem, arch("sm_90a")), "config.q_placement");
  c = TileConfig{};
  c.smem_layout = static_cast<SmemLayout>(-1);
  expect_field(config_error(c, problem, arch("sm_90a")), "config.smem_layout");
  // Every concrete choice is valid for every supported head_dim: each has a
  // swizzle (D 96's 12 chunks have one of their own) and a padded layout.
  for (int head_dim : kSupportedHeadDims)
    for (QPlacement q : {QPlacement::automatic, QPlacement::registers, QPlacement::shared})
      for (SmemLayout l : {SmemLayout::automatic, SmemLayout::swizzled, SmemLayout::padded})
        EXPECT_EQ(config_error(TileConfig{64, 32, 4, 1, q, l}, ProblemClass{DType::bf16, head_dim, true},
                               arch("sm_80")),
                  std::nullopt)
            << head_dim << " " << config_label(TileConfig{64, 32, 4, 1, q, l});
}

TEST(TileConfig, SwizzleIsRefusedWhereNoneIsDefined) {
  // No supported head_dim lacks a swizzle, so this guards head dims the
  // template may take later: 80 and 160 (10 and 20 chunks a row) have none.
  for (int head_dim : {80, 160}) {
    const ProblemClass problem{DType::fp16, head_dim, false};
    const TileConfig swizzled{64, 32, 4, 1, QPlacement::shared, SmemLayout::swizzled};
    expect_field(config_error(swizzled, problem, arch("sm_90a")), "config.smem_layout");
    EXPECT_NE(config_error(swizzled, problem, arch("sm_90a"))->find(std::to_string(head_dim)),
              std::string::npos);
    // Automatic resolves to padded there, which is valid.
    EXPECT_EQ(config_error(TileConfig{64, 32, 4, 1}, problem, arch("sm_90a")), std::nullopt);
    EXPECT_EQ(config_error(TileConfig{64, 32, 4, 1, QPlacement::shared, SmemLayout::padded}, problem,
                           arch("sm_90a")),
              std::nullopt);
  }
}

TEST(TileConfig, PaddedRowsAreSixteenBytesLonger) {
  for (int head_dim : kSupportedHeadDims) {
    const ProblemClass problem{DType::fp16, head_dim, false};
    TileConfig swizzled{128, 64, 4, 3, QPlacement::registers, SmemLayout::swizzled};
    TileConfig padded = swizzled;
    padded.smem_layout = SmemLayout::padded;
    // Q (128 rows) plus 3 stages of K and V (64 rows each) = 512 rows.
    EXPECT_EQ(smem_bytes(swizzled, problem), 512 * head_dim * 2) << head_dim;
    EXPECT_EQ(smem_bytes(padded, problem), 512 * (head_dim * 2 + 16)) << head_dim;
    // Automatic is whichever layout the rule picks.
    EXPECT_EQ(smem_bytes(TileConfig{128, 64, 4, 3}, problem),
              smem_bytes(resolved(TileConfig{128, 64, 4, 3}, problem), problem));
  }
  // The layout alone decides a fit: D 96, 128 + 2 * 2 * 96 = 512 rows of 192
  // bytes fit sm_86's 99 KiB, rows of 208 bytes do not.
  const ProblemClass d96{DType::fp16, 96, false};
  EXPECT_EQ(config_error(TileConfig{128, 96, 4, 2, QPlacement::shared, SmemLayout::swizzled}, d96,
                         arch("sm_86")),
            std::nullopt);
  expect_field(config_error(TileConfig{128, 96, 4, 2, QPlacement::shared, SmemLayout::padded}, d96,
                            arch("sm_86")),
               "config");
  expect_field(config_error(TileConfig{128, 96, 4, 2}, d96, arch("sm_86")), "config");
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
  // Every value of the enum fields is a text of its own, automatic included.
  std::set<std::string> texts;
  for (QPlacement q : {QPlacement::automatic, QPlacement::registers, QPlacement::shared})
    for (SmemLayout l : {SmemLayout::automatic, SmemLayout::swizzled, SmemLayout::padded})
      texts.insert(canonical_config(TileConfig{128, 64, 4, 2, q, l}));
  EXPECT_EQ(texts.size(), 9u);
}

// The other families' fields: labelled and parsed back, keyed only when set
// (an sm80 key never changes), and refused by the sm80 family by name.
TEST(TileConfig, OtherFamiliesFieldsRoundTripAndTheSm80FamilyRefusesThem) {
  TileConfig decode{16, 64, 4, 3};
  decode.fused_combine = true;
  decode.splits = 16;
  EXPECT_EQ(config_label(decode), "16x64w4s3-fused-k16");
  EXPECT_EQ(parse_config_label("16x64w4s3-fused-k16"), decode);
  TileConfig hopper{128, 128, 12, 2};
  hopper.pingpong = hopper.separate_o = hopper.persistent = true;
  EXPECT_EQ(parse_config_label(config_label(hopper)), hopper);
  EXPECT_EQ(parse_config_label("16x64w4s3-k"), std::nullopt);
  EXPECT_EQ(parse_config_label("16x64w4s3-fused-fused"), std::nullopt);
  EXPECT_EQ(canonical_config(TileConfig{128, 64, 4, 2}).find("splits"), std::string::npos);
  EXPECT_NE(canonical_config(decode), canonical_config(TileConfig{16, 64, 4, 3}));

  const ProblemClass problem{DType::fp16, 64, false};
  for (auto [config, name] : {std::pair{decode, "config.fused_combine"},
                              std::pair{hopper, "config.pingpong"}}) {
    const auto error = config_error(config, problem, *find_arch("sm_90a"));
    ASSERT_TRUE(error.has_value()) << name;
    EXPECT_EQ(error->rfind(std::string(name) + ":", 0), 0u) << *error;
  }
}

}  // namespace
}  // namespace flashcore
