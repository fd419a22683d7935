#include "tuning/search_space.hpp"

#include "family/attention_sm90.hpp"
#include "family/template_catalog.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <set>
#include <string>
#include <vector>

namespace flashcore {
namespace {

ArchInfo arch(std::string_view name) {
  auto info = find_arch(name);
  EXPECT_TRUE(info.has_value()) << name;
  return info.value_or(ArchInfo{});
}

SearchSpace make_space(const ProblemClass& problem, std::string_view arch_name,
                       const SearchSpaceAxes& axes = {}) {
  auto space = SearchSpace::create(problem, arch(arch_name), axes);
  EXPECT_TRUE(space.ok()) << (space.ok() ? "" : space.error().message);
  return std::move(space).value();
}

using Key = std::array<int, kTileFields.size()>;
Key key(const TileConfig& c) {
  Key k{};
  for (size_t i = 0; i < kTileFields.size(); ++i) k[i] = field_value(c, kTileFields[i]);
  return k;
}

constexpr auto kReg = QPlacement::registers;
constexpr auto kSmem = QPlacement::shared;
constexpr auto kSwz = SmemLayout::swizzled;
constexpr auto kPad = SmemLayout::padded;

const std::vector<int>& axis_values(const SearchSpaceAxes& axes, TileField field) {
  switch (field) {
    case TileField::block_m: return axes.block_m;
    case TileField::block_n: return axes.block_n;
    case TileField::warps: return axes.warps;
    case TileField::stages: return axes.stages;
    case TileField::q_placement: return axes.q_placement;
    case TileField::smem_layout: return axes.smem_layout;
    case TileField::pingpong: return axes.pingpong;
    case TileField::separate_o: return axes.separate_o;
    case TileField::persistent: return axes.persistent;
    case TileField::fused_combine: return axes.fused_combine;
    case TileField::splits: return axes.splits;
  }
  return axes.block_m;
}

int differing_fields(const TileConfig& a, const TileConfig& b) {
  int count = 0;
  for (TileField field : kTileFields) count += field_value(a, field) != field_value(b, field);
  return count;
}

// A wider space than the default, with gaps: block_m 48 cannot be split for
// 2+ warps, and 8 warps need block_m 128.
SearchSpaceAxes wide_axes() {
  SearchSpaceAxes axes;
  axes.block_m = {16, 32, 48, 64, 128};
  axes.block_n = {16, 32, 48, 64, 96, 128};
  axes.warps = {1, 2, 4, 8};
  axes.stages = {1, 2, 3, 4};
  return axes;
}

TEST(SearchSpace, DefaultAxesHoldExactlyTheValidCombinationsInOrder) {
  const ProblemClass problem{DType::fp16, 64, false};
  const SearchSpaceAxes axes;
  const SearchSpace space = make_space(problem, "sm_90a");

  // The enum axes list concrete values only, each value of each enum once.
  EXPECT_EQ(axes.q_placement, (std::vector<int>{static_cast<int>(kReg), static_cast<int>(kSmem)}));
  EXPECT_EQ(axes.smem_layout, (std::vector<int>{static_cast<int>(kSwz), static_cast<int>(kPad)}));

  // Every config is valid, and every valid combination of the axes is present.
  for (const auto& config : space.configs())
    EXPECT_EQ(config_error(config, problem, arch("sm_90a")), std::nullopt)
        << canonical_config(config);
  size_t combinations = 0, valid = 0, valid_without_enums = 0;
  for (int m : axes.block_m)
    for (int n : axes.block_n)
      for (int w : axes.warps)
        for (int s : axes.stages) {
          valid_without_enums += !config_error(TileConfig{m, n, w, s}, problem, arch("sm_90a"));
          for (int q : axes.q_placement)
            for (int l : axes.smem_layout) {
              ++combinations;
              const TileConfig config{m, n, w, s, static_cast<QPlacement>(q),
                                      static_cast<SmemLayout>(l)};
              const bool ok = !config_error(config, problem, arch("sm_90a")).has_value();
              valid += ok;
              EXPECT_EQ(space.contains(config), ok) << canonical_config(config);
            }
        }
  EXPECT_EQ(space.size(), valid);
  EXPECT_EQ(space.size() + space.rejected().size(), combinations);
  size_t product = 1;
  for (TileField field : kTileFields) product *= axis_values(axes, field).size();
  EXPECT_EQ(combinations, product);
  // 2*5*2*3 = 60 combinations of the numeric fields; block_m 64 over 8 warps
  // (15 of them) leaves 8 rows a warp, below one mma tile; head_dim 64 fits
  // sm_90a's shared memory in either layout, and has a swizzle, so the two
  // enum axes reject nothing: each valid numeric config comes in 2 x 2 forms.
  EXPECT_EQ(valid_without_enums, 60u - 15u);
  EXPECT_EQ(space.size(), valid_without_enums * axes.q_placement.size() * axes.smem_layout.size());

  // Deterministic order: strictly increasing in kTileFields order (block_m,
  // block_n, warps, stages, q_placement, smem_layout), the last fastest.
  for (size_t i = 1; i < space.size(); ++i)
    EXPECT_LT(key(space.at(i - 1)), key(space.at(i))) << i;
  EXPECT_EQ(space.at(0), (TileConfig{64, 32, 4, 1, kReg, kSwz}));
  EXPECT_EQ(space.at(1), (TileConfig{64, 32, 4, 1, kReg, kPad}));
  EXPECT_EQ(space.at(2), (TileConfig{64, 32, 4, 1, kSmem, kSwz}));
  EXPECT_EQ(space.at(4), (TileConfig{64, 32, 4, 2, kReg, kSwz}));
  EXPECT_EQ(space.at(space.size() - 1), (TileConfig{128, 128, 8, 3, kSmem, kPad}));
}

TEST(SearchSpace, LayoutAxisCanRejectWhereOnlyTheSwizzleFits) {
  // D 96 on sm_86 (99 KiB): 128x96 tiles with 2 stages are 512 rows, which
  // fit at 192 bytes a row (swizzled) but not at 208 (padded).
  const ProblemClass problem{DType::fp16, 96, false};
  const SearchSpace space = make_space(problem, "sm_86");
  const TileConfig swizzled{128, 96, 4, 2, kSmem, kSwz};
  const TileConfig padded{128, 96, 4, 2, kSmem, kPad};
  EXPECT_TRUE(space.contains(swizzled));
  EXPECT_FALSE(space.contains(padded));
  auto rejected = std::find_if(space.rejected().begin(), space.rejected().end(),
                               [&](const RejectedConfig& r) { return r.config == padded; });
  ASSERT_NE(rejected, space.rejected().end());
  EXPECT_NE(rejected->reason.find("shared memory"), std::string::npos) << rejected->reason;
  // Automatic is padded for D 96, so the automatic form is not in the space either.
  EXPECT_FALSE(space.contains(TileConfig{128, 96, 4, 2}));
  // Both layouts are in the space wherever both fit.
  EXPECT_TRUE(space.contains(TileConfig{64, 32, 4, 1, kReg, kSwz}));
  EXPECT_TRUE(space.contains(TileConfig{64, 32, 4, 1, kReg, kPad}));
}

TEST(SearchSpace, EnumAxesRefuseAutomaticAndUnknownValues) {
  SearchSpaceAxes automatic_q;
  automatic_q.q_placement = {static_cast<int>(QPlacement::automatic), static_cast<int>(kReg)};
  auto a = SearchSpace::create(ProblemClass{}, arch("sm_90a"), automatic_q);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(a.error().message.find("q_placement"), std::string::npos) << a.error().message;

  SearchSpaceAxes automatic_layout;
  automatic_layout.smem_layout = {static_cast<int>(SmemLayout::automatic)};
  auto b = SearchSpace::create(ProblemClass{}, arch("sm_90a"), automatic_layout);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message.find("smem_layout"), std::string::npos) << b.error().message;

  // A value no enum has is rejected per config by config_error, naming the field.
  SearchSpaceAxes unknown;
  unknown.q_placement = {7};
  auto c = SearchSpace::create(ProblemClass{}, arch("sm_90a"), unknown);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("config.q_placement"), std::string::npos) << c.error().message;

  // One value per enum axis: a space with the other fields alone.
  SearchSpaceAxes fixed;
  fixed.q_placement = {static_cast<int>(kSmem)};
  fixed.smem_layout = {static_cast<int>(kPad)};
  const SearchSpace one = make_space(ProblemClass{}, "sm_90a", fixed);
  const SearchSpace all = make_space(ProblemClass{}, "sm_90a");
  EXPECT_EQ(one.size() * 4, all.size());
  for (const auto& config : one.configs()) {
    EXPECT_EQ(config.q_placement, kSmem);
    EXPECT_EQ(config.smem_layout, kPad);
    EXPECT_TRUE(all.contains(config));
  }
}

TEST(SearchSpace, IndexOfAndAtAgree) {
  const SearchSpace space = make_space(ProblemClass{}, "sm_90a", wide_axes());
  for (size_t i = 0; i < space.size(); ++i) EXPECT_EQ(space.index_of(space.at(i)), i);
  EXPECT_EQ(space.index_of(TileConfig{64, 64, 8, 2}), std::nullopt);   // invalid
  EXPECT_EQ(space.index_of(TileConfig{128, 80, 4, 2}), std::nullopt);  // valid, off the axes
  // An automatic config is found as its resolved twin.
  for (const TileConfig& automatic : {TileConfig{64, 64, 2, 2}, TileConfig{128, 32, 1, 3}}) {
    const TileConfig twin = resolved(automatic, space.problem());
    ASSERT_TRUE(space.index_of(twin).has_value()) << canonical_config(twin);
    EXPECT_EQ(space.index_of(automatic), space.index_of(twin));
    EXPECT_TRUE(space.contains(automatic));
  }
  EXPECT_THROW((void)space.at(space.size()), std::out_of_range);
}

TEST(SearchSpace, SharedMemoryLimitExcludesOnSm86ButNotSm90a) {
  // head_dim 128, 128x128 tiles, 3 stages: 32 KiB of Q + 6 * 32 KiB of K/V =
  // 224 KiB: over sm_86's 99 KiB, under sm_90a's 227 KiB.
  const ProblemClass problem{DType::bf16, 128, true};
  const TileConfig big{128, 128, 4, 3};
  const SearchSpace sm86 = make_space(problem, "sm_86");
  const SearchSpace sm90a = make_space(problem, "sm_90a");
  // The automatic form is the space member with the same key.
  const TileConfig big_member = resolved(big, problem);
  EXPECT_FALSE(sm86.contains(big));
  EXPECT_TRUE(sm90a.contains(big));
  EXPECT_LT(sm86.size(), sm90a.size());

  auto rejected = std::find_if(sm86.rejected().begin(), sm86.rejected().end(),
                               [&](const RejectedConfig& r) { return r.config == big_member; });
  ASSERT_NE(rejected, sm86.rejected().end());
  EXPECT_NE(rejected->reason.find("shared memory"), std::string::npos) << rejected->reason;
  EXPECT_NE(rejected->reason.find("sm_86"), std::string::npos) << rejected->reason;
  for (const auto& config : sm86.configs())
    EXPECT_LE(smem_bytes(config, problem), arch("sm_86").max_dynamic_smem_bytes);
}

TEST(SearchSpace, PruneRemovesExactlyWhatThePredicateRejects) {
  SearchSpace space = make_space(ProblemClass{}, "sm_90a", wide_axes());
  const std::vector<TileConfig> before = space.configs();
  const size_t rejected_before = space.rejected().size();

  // Stand-in for a ptxas report: "spills" when a thread holds too much of the tile.
  auto keep = [](const TileConfig& c, std::string* why) {
    if (c.block_m * c.block_n / c.threads() > 96) {
      *why = "spills: " + canonical_config(c);
      return false;
    }
    return true;
  };
  const size_t dropped = space.prune(keep);

  std::vector<TileConfig> expected_kept, expected_dropped;
  for (const auto& c : before) {
    std::string why;
    (keep(c, &why) ? expected_kept : expected_dropped).push_back(c);
  }
  ASSERT_GT(expected_dropped.size(), 0u);
  ASSERT_GT(expected_kept.size(), 0u);
  EXPECT_EQ(dropped, expected_dropped.size());
  EXPECT_EQ(space.configs(), expected_kept);  // same order, nothing else lost
  for (size_t i = 0; i < space.size(); ++i) EXPECT_EQ(space.index_of(space.at(i)), i);
  for (const auto& c : expected_dropped) EXPECT_FALSE(space.contains(c));

  ASSERT_EQ(space.rejected().size(), rejected_before + dropped);
  for (size_t i = 0; i < dropped; ++i) {
    const auto& r = space.rejected()[rejected_before + i];
    EXPECT_EQ(r.config, expected_dropped[i]);
    EXPECT_EQ(r.reason, "spills: " + canonical_config(r.config));
  }

  // A predicate that gives no reason still leaves one.
  const size_t more = space.prune([](const TileConfig& c, std::string*) { return c.stages != 1; });
  EXPECT_GT(more, 0u);
  EXPECT_EQ(space.rejected().back().reason, "pruned");
}

TEST(SearchSpace, AxesAreSortedAndDeduplicated) {
  SearchSpaceAxes messy;
  messy.block_m = {128, 64, 128};
  messy.block_n = {128, 32, 96, 48, 64, 32};
  messy.warps = {8, 4};
  messy.stages = {3, 1, 2, 2};
  messy.q_placement = {static_cast<int>(kSmem), static_cast<int>(kReg), static_cast<int>(kSmem)};
  messy.smem_layout = {static_cast<int>(kPad), static_cast<int>(kSwz)};
  const SearchSpace a = make_space(ProblemClass{}, "sm_80", messy);
  const SearchSpace b = make_space(ProblemClass{}, "sm_80");
  EXPECT_EQ(a.configs(), b.configs());
}

TEST(SearchSpace, CreateRejectsBadProblemsAndEmptySpaces) {
  auto bad_head_dim = SearchSpace::create(ProblemClass{DType::fp16, 48, false}, arch("sm_90a"));
  ASSERT_FALSE(bad_head_dim.ok());
  EXPECT_EQ(bad_head_dim.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(bad_head_dim.error().message.find("problem.head_dim"), std::string::npos);

  SearchSpaceAxes no_stages;
  no_stages.stages.clear();
  auto empty_axis = SearchSpace::create(ProblemClass{}, arch("sm_90a"), no_stages);
  ASSERT_FALSE(empty_axis.ok());
  EXPECT_NE(empty_axis.error().message.find("stages"), std::string::npos);

  // head_dim 256 with 256x256 tiles and 4 stages fits no arch.
  SearchSpaceAxes huge;
  huge.block_m = {256};
  huge.block_n = {256};
  huge.warps = {4};
  huge.stages = {4};
  auto nothing_fits = SearchSpace::create(ProblemClass{DType::fp16, 256, false}, arch("sm_86"), huge);
  ASSERT_FALSE(nothing_fits.ok());
  EXPECT_NE(nothing_fits.error().message.find("sm_86"), std::string::npos)
      << nothing_fits.error().message;
}

TEST(SearchSpace, NeighboursChangeOneFieldToTheNearestValueInTheSpace) {
  const SearchSpace space = make_space(ProblemClass{}, "sm_90a", wide_axes());
  const SearchSpaceAxes& axes = space.axes();
  auto axis = [&](TileField f) -> const std::vector<int>& { return axis_values(axes, f); };

  for (const auto& config : space.configs()) {
    for (TileField field : kTileFields) {
      for (int direction : {-1, 1}) {
        const auto n = space.neighbour(config, field, direction);
        // Every axis value strictly between config and the neighbour (or, when
        // there is none, beyond config) must give a config outside the space.
        const int from = field_value(config, field);
        const int to = n ? field_value(*n, field) : (direction < 0 ? -1 : 1 << 20);
        for (int v : axis(field)) {
          const bool between = direction < 0 ? (v < from && v > to) : (v > from && v < to);
          if (!between) continue;
          TileConfig skipped = config;
          set_field_value(skipped, field, v);
          EXPECT_FALSE(space.contains(skipped)) << canonical_config(skipped);
        }
        if (!n) continue;
        EXPECT_TRUE(space.contains(*n));
        EXPECT_EQ(differing_fields(config, *n), 1);
        EXPECT_EQ(direction < 0, field_value(*n, field) < from);
      }
    }
    const auto all = space.neighbours(config);
    const std::set<Key> unique_keys = [&] {
      std::set<Key> keys;
      for (const auto& n : all) keys.insert(key(n));
      return keys;
    }();
    EXPECT_EQ(unique_keys.size(), all.size());
    EXPECT_LE(all.size(), 2 * kTileFields.size());
  }
}

TEST(SearchSpace, NeighboursStepOverGapsAndStopAtTheEdges) {
  const SearchSpace space = make_space(ProblemClass{}, "sm_90a", wide_axes());
  // Two warps cannot split block_m 48 into 16-row slices: the step from 32 goes to 64.
  EXPECT_EQ(space.neighbour(TileConfig{32, 64, 2, 2, kReg, kSwz}, TileField::block_m, 1),
            (TileConfig{64, 64, 2, 2, kReg, kSwz}));
  EXPECT_EQ(space.neighbour(TileConfig{64, 64, 2, 2, kSmem, kPad}, TileField::block_m, -1),
            (TileConfig{32, 64, 2, 2, kSmem, kPad}));
  // No smaller block_m holds 8 warps; nothing past the axis ends.
  EXPECT_EQ(space.neighbour(TileConfig{128, 64, 8, 2, kReg, kSwz}, TileField::block_m, -1),
            std::nullopt);
  EXPECT_EQ(space.neighbour(TileConfig{128, 128, 8, 4, kReg, kSwz}, TileField::block_n, 1),
            std::nullopt);
  EXPECT_EQ(space.neighbour(TileConfig{16, 16, 1, 1, kReg, kSwz}, TileField::stages, -1),
            std::nullopt);
  // The enum axes are two-valued: one step each way, and none past the ends.
  EXPECT_EQ(space.neighbour(TileConfig{64, 64, 2, 2, kReg, kSwz}, TileField::q_placement, 1),
            (TileConfig{64, 64, 2, 2, kSmem, kSwz}));
  EXPECT_EQ(space.neighbour(TileConfig{64, 64, 2, 2, kReg, kSwz}, TileField::q_placement, -1),
            std::nullopt);
  EXPECT_EQ(space.neighbour(TileConfig{64, 64, 2, 2, kReg, kPad}, TileField::smem_layout, -1),
            (TileConfig{64, 64, 2, 2, kReg, kSwz}));
  EXPECT_EQ(space.neighbour(TileConfig{64, 64, 2, 2, kReg, kPad}, TileField::smem_layout, 1),
            std::nullopt);

  // In the default space, 8 warps are out of reach from block_m 64.
  const SearchSpace defaults = make_space(ProblemClass{}, "sm_90a");
  const std::vector<TileConfig> expected = {
      {128, 64, 4, 2, kReg, kSwz}, {64, 48, 4, 2, kReg, kSwz}, {64, 96, 4, 2, kReg, kSwz},
      {64, 64, 4, 1, kReg, kSwz},  {64, 64, 4, 3, kReg, kSwz}, {64, 64, 4, 2, kSmem, kSwz},
      {64, 64, 4, 2, kReg, kPad}};
  EXPECT_EQ(defaults.neighbours(TileConfig{64, 64, 4, 2, kReg, kSwz}), expected);
}

TEST(SearchSpace, NeighboursOfAnAutomaticConfigAreThoseOfItsResolvedTwin) {
  // A seed from an older tuning row has automatic fields. Its neighbours are
  // space members (concrete), and moving q_placement away from "automatic"
  // must change the kernel, not land on the rule's own choice.
  const SearchSpace space = make_space(ProblemClass{}, "sm_90a");
  for (const TileConfig& automatic : {TileConfig{64, 64, 4, 2}, TileConfig{128, 96, 4, 3}}) {
    const TileConfig twin = resolved(automatic, space.problem());
    ASSERT_TRUE(space.contains(twin));
    EXPECT_EQ(space.neighbours(automatic), space.neighbours(twin)) << canonical_config(automatic);
    for (TileField field : kTileFields)
      for (int direction : {-1, 1})
        EXPECT_EQ(space.neighbour(automatic, field, direction),
                  space.neighbour(twin, field, direction))
            << canonical_config(automatic) << " " << tile_field_name(field) << " " << direction;
  }
}

TEST(SearchSpace, MutationStaysInTheSpaceAndMovesWhenAsked) {
  const SearchSpace space = make_space(ProblemClass{}, "sm_90a", wide_axes());
  std::mt19937_64 rng(7);
  std::set<Key> reached;
  for (int round = 0; round < 2000; ++round) {
    const TileConfig& from = space.at(uniform_index(rng, space.size()));
    const TileConfig forced = space.mutate(from, rng, 0.0, /*at_least_one=*/true);
    EXPECT_TRUE(space.contains(forced));
    if (!space.neighbours(from).empty()) {
      EXPECT_NE(forced, from);
      EXPECT_EQ(differing_fields(forced, from), 1);  // rate 0: only the forced move
    }
    const TileConfig free = space.mutate(from, rng, 0.5, /*at_least_one=*/false);
    EXPECT_TRUE(space.contains(free));
    reached.insert(key(free));
    EXPECT_EQ(space.mutate(from, rng, 0.0, /*at_least_one=*/false), from);
  }
  // Chained moves with rate 1 reach beyond the one-step neighbours.
  const TileConfig start{64, 64, 2, 2, kReg, kSwz};
  bool moved_several = false;
  for (int round = 0; round < 200; ++round)
    moved_several |= differing_fields(space.mutate(start, rng, 1.0, false), start) >= 3;
  EXPECT_TRUE(moved_several);
  EXPECT_GT(reached.size(), space.size() / 2);
}

TEST(SearchSpace, RandomDrawsAreInRangeRoughlyUniformAndReplay) {
  std::mt19937_64 a(42), b(42);
  constexpr uint64_t kBins = 7;
  constexpr int kDraws = 70000;
  std::array<int, kBins> counts{};
  for (int i = 0; i < kDraws; ++i) {
    const uint64_t x = uniform_index(a, kBins);
    ASSERT_LT(x, kBins);
    ++counts[x];
    ASSERT_EQ(x, uniform_index(b, kBins));
  }
  // 10000 expected per bin, standard deviation about 93: 5% is over 5 sigma.
  for (int c : counts) EXPECT_NEAR(c, kDraws / kBins, 500);

  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    const double u = unit_interval(a);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
  EXPECT_EQ(uniform_index(a, 1), 0u);
}

// The Hopper family's space: its own axes and validity, every member one its
// config_error accepts, each switch both ways, and moves that stay inside.
TEST(SearchSpaceTest, HopperFamilySpaceHoldsOnlyValidConfigsWithEverySwitchBothWays) {
  for (int d : {64, 128, 256}) {
    SCOPED_TRACE("head_dim " + std::to_string(d));
    const ProblemClass problem{DType::bf16, d, true};
    auto space = SearchSpace::create(problem, arch("sm_90a"),
                                     family_axes(sm90_family::kTemplateId),
                                     sm90_family::kTemplateId);
    ASSERT_TRUE(space.ok()) << space.error().message;
    EXPECT_EQ(space->template_id(), sm90_family::kTemplateId);
    EXPECT_GE(space->size(), 20u);
    EXPECT_FALSE(space->rejected().empty());  // warps not matching block_m, spilling tiles, ...
    std::set<int> pingpong, separate_o, persistent, block_m;
    for (const TileConfig& c : space->configs()) {
      EXPECT_EQ(sm90_family::config_error(c, problem, arch("sm_90a")), std::nullopt)
          << config_label(c);
      EXPECT_EQ(c.warps, 4 * (c.block_m / 64 + 1));
      pingpong.insert(c.pingpong);
      separate_o.insert(c.separate_o);
      persistent.insert(c.persistent);
      block_m.insert(c.block_m);
      for (const TileConfig& n : space->neighbours(c)) EXPECT_TRUE(space->contains(n));
    }
    EXPECT_EQ(pingpong.size(), 2u);
    EXPECT_EQ(persistent.size(), 2u);
    EXPECT_EQ(separate_o.size(), 2u);
    EXPECT_TRUE(block_m.count(128));
  }
  // Not on sm_80: every member would be rejected.
  auto sm80 = SearchSpace::create(ProblemClass{DType::fp16, 128, false}, arch("sm_80"),
                                  family_axes(sm90_family::kTemplateId), sm90_family::kTemplateId);
  ASSERT_FALSE(sm80.ok());
  EXPECT_NE(sm80.error().message.find("sm_90a"), std::string::npos) << sm80.error().message;
  // The sm80 family's default axes are unchanged by the Hopper switches.
  EXPECT_EQ(family_axes("attention_fwd").pingpong, std::vector<int>{0});
}

// The Hopper family's seeds (its measured winners) are valid members of its
// search space, none is the default (tried first anyway), and the catalog
// hands them to a tuning job.
TEST(SearchSpaceTest, HopperFamilySeedsAreValidMembersOfItsSpace) {
  for (int d : {64, 128, 256}) {
    SCOPED_TRACE("head_dim " + std::to_string(d));
    const ProblemClass problem{DType::fp16, d, false};
    auto space = SearchSpace::create(problem, arch("sm_90a"),
                                     family_axes(sm90_family::kTemplateId),
                                     sm90_family::kTemplateId);
    ASSERT_TRUE(space.ok()) << space.error().message;
    const auto seeds = sm90_family::search_seeds(problem, RuntimeShape{}, arch("sm_90a"));
    EXPECT_GE(seeds.size(), 2u);
    const TileConfig def = sm90_family::default_config(problem);
    for (const TileConfig& seed : seeds) {
      EXPECT_TRUE(space->contains(seed)) << config_label(seed);
      EXPECT_NE(seed, def) << config_label(seed);
    }
    const TemplateInfo* info = find_template(sm90_family::kTemplateId);
    ASSERT_NE(info, nullptr);
    ASSERT_NE(info->search_seeds, nullptr);
    EXPECT_EQ(info->search_seeds(problem, RuntimeShape{}, arch("sm_90a")).size(), seeds.size());
  }
  // D 64's separate-O winner without ping-pong is among them.
  const auto d64 = sm90_family::search_seeds(ProblemClass{DType::bf16, 64, false}, RuntimeShape{},
                                             arch("sm_90a"));
  EXPECT_TRUE(std::any_of(d64.begin(), d64.end(), [](const TileConfig& c) {
    return c.block_n == 128 && c.separate_o && !c.pingpong && c.persistent;
  }));
}

// The decode family's space: its axes and validity (automatic enum fields,
// packed rows by 16), both combine modes; a tuning job further keeps the
// configs whose packed rows its shape fits.
TEST(SearchSpaceTest, DecodeFamilySpaceHoldsOnlyValidConfigs) {
  for (int d : {64, 128, 256}) {
    SCOPED_TRACE("head_dim " + std::to_string(d));
    const ProblemClass problem{DType::bf16, d, false};
    auto space = SearchSpace::create(problem, arch("sm_90a"), family_axes("attention_decode"),
                                     "attention_decode");
    ASSERT_TRUE(space.ok()) << space.error().message;
    EXPECT_GE(space->size(), 20u);
    std::set<int> rows, fused;
    for (const TileConfig& c : space->configs()) {
      EXPECT_EQ(template_info("attention_decode").config_error(c, problem, arch("sm_90a")),
                std::nullopt)
          << config_label(c);
      rows.insert(c.block_m);
      fused.insert(c.fused_combine);
    }
    EXPECT_EQ(rows, (std::set<int>{16, 32, 48, 64}));
    EXPECT_EQ(fused.size(), 2u);
  }
}

// What a tuning job keeps for a shape (shape_error, then search_skip): only
// the smallest packed tile that holds its rows, and some of it for every
// tile size, the 3-m-tile one (48 rows) included.
TEST(SearchSpaceTest, DecodeSearchKeepsTheShapesOwnTileForEveryRowCount) {
  const TemplateInfo& decode = template_info("attention_decode");
  const ProblemClass problem{DType::bf16, 128, false};
  auto space = SearchSpace::create(problem, arch("sm_90a"), family_axes("attention_decode"),
                                   "attention_decode");
  ASSERT_TRUE(space.ok()) << space.error().message;
  // (heads, kv_heads, seq_q) -> packed tile: 4, 32, 40 and 64 rows.
  for (auto [heads, kv_heads, seq_q, tile] : std::vector<std::array<int, 4>>{
           {32, 8, 1, 16}, {32, 8, 8, 32}, {8, 1, 5, 48}, {8, 1, 8, 64}}) {
    RuntimeShape shape;
    shape.batch = 2;
    shape.heads = heads;
    shape.kv_heads = kv_heads;
    shape.seq_q = seq_q;
    shape.seq_k = 4096;
    size_t kept = 0;
    for (const TileConfig& c : space->configs()) {
      if (decode.shape_error(c, problem, shape) || decode.search_skip(c, problem, shape)) continue;
      EXPECT_EQ(c.block_m, tile) << config_label(c);
      ++kept;
    }
    EXPECT_GE(kept, 20u) << heads << "/" << kv_heads << " x " << seq_q;
  }
}

}  // namespace
}  // namespace flashcore
