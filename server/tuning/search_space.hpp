// The tuning search space: every TileConfig built from per-field value sets
// (SearchSpaceAxes) that config_error() accepts for one problem class and
// arch, in a fixed order, optionally pruned further (say, by the ptxas
// resource report) before any GPU time is spent.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "family/tile_config.hpp"

namespace flashcore {

// The candidate values of each TileConfig field, in one place. Axes are kept
// sorted ascending and free of duplicates, so "adjacent value" is well defined.
struct SearchSpaceAxes {
  std::vector<int> block_m{64, 128};
  std::vector<int> block_n{32, 48, 64, 96, 128};
  std::vector<int> warps{4, 8};
  std::vector<int> stages{1, 2, 3};
  // Enum fields as their integer values, so every axis is handled alike;
  // `automatic` is never an axis value (it is a rule, not a kernel).
  std::vector<int> q_placement{static_cast<int>(QPlacement::registers),
                               static_cast<int>(QPlacement::shared)};
  std::vector<int> smem_layout{static_cast<int>(SmemLayout::swizzled),
                               static_cast<int>(SmemLayout::padded)};
  // The Hopper family's switches (0/1); the sm80 family has only 0.
  std::vector<int> pingpong{0};
  std::vector<int> separate_o{0};
  std::vector<int> persistent{0};
  // The decode family's (0/1, and the key splits: 0 = the family's rule).
  std::vector<int> fused_combine{0};
  std::vector<int> splits{0};
};

// The axes a family is searched over: the defaults above for the sm80 family
// (attention_fwd); for the Hopper family (attention_fwd_sm90) block_m
// 64/128/192 with their warp counts, block_n 64..192, 1-3 stages, the enum
// fields automatic (not its fields) and every switch both ways; for the
// decode family packed rows 16-64, block_n 32-128, 1-8 warps, 2-4 stages,
// fused and separate combine, splits by the rule (a tuning job also drops
// the configs whose packed rows its shape does not fit).
SearchSpaceAxes family_axes(std::string_view template_id);

// The fields of a TileConfig as search dimensions, in canonical_config() order.
enum class TileField {
  block_m, block_n, warps, stages, q_placement, smem_layout, pingpong, separate_o, persistent,
  fused_combine, splits
};
inline constexpr std::array<TileField, 11> kTileFields = {
    TileField::block_m,       TileField::block_n,     TileField::warps,
    TileField::stages,        TileField::q_placement, TileField::smem_layout,
    TileField::pingpong,      TileField::separate_o,  TileField::persistent,
    TileField::fused_combine, TileField::splits};

std::string_view tile_field_name(TileField field);  // "block_m", ...
int field_value(const TileConfig& config, TileField field);
void set_field_value(TileConfig& config, TileField field, int value);

// A config left out of the space, with the reason (config_error's text or the
// prune predicate's), for progress messages and tuning reports.
struct RejectedConfig {
  TileConfig config;
  std::string reason;
};

// Portable random draws. std::uniform_int_distribution and friends are
// implementation-defined, so the same seed would propose different configs
// under another standard library; these use only the engine's raw output.
uint64_t uniform_index(std::mt19937_64& rng, uint64_t n);  // in [0, n), n > 0
double unit_interval(std::mt19937_64& rng);                // in [0, 1)
bool bernoulli(std::mt19937_64& rng, double p);

class SearchSpace {
 public:
  // Every combination of the axes' values, ordered lexicographically by
  // kTileFields with each axis ascending, filtered by
  // config_error(). Fails on an invalid problem class, an empty axis, or when
  // no combination is valid (the error names the first rejection's reason).
  // `template_id` picks the family whose config_error() filters and whose
  // resolve() maps automatic fields (axes should come from family_axes()).
  static Result<SearchSpace> create(const ProblemClass& problem, const ArchInfo& arch,
                                    const SearchSpaceAxes& axes = {},
                                    std::string_view template_id = kAttentionTemplateId);

  using KeepPredicate = std::function<bool(const TileConfig&, std::string* why)>;
  // Drops every config for which keep() returns false, recording `why` (or a
  // generic reason when keep leaves it empty) in rejected(). Order is kept.
  // Returns how many were dropped. Prune before handing the space to a
  // searcher: searchers take a copy at initialize().
  size_t prune(const KeepPredicate& keep);

  size_t size() const { return configs_.size(); }
  bool empty() const { return configs_.empty(); }
  const TileConfig& at(size_t index) const { return configs_.at(index); }
  const std::vector<TileConfig>& configs() const { return configs_; }
  std::optional<size_t> index_of(const TileConfig& config) const;
  bool contains(const TileConfig& config) const { return index_of(config).has_value(); }

  const ProblemClass& problem() const { return problem_; }
  const std::string& template_id() const { return template_id_; }
  const ArchInfo& arch() const { return arch_; }
  const SearchSpaceAxes& axes() const { return axes_; }
  const std::vector<RejectedConfig>& rejected() const { return rejected_; }

  // The nearest config in the space reached by moving `field` along its axis
  // in `direction` (-1 or +1), the other fields unchanged. Values whose
  // combination is not in the space are stepped over, so a gap (an invalid
  // warps value for this block_m, say) does not cut the axis in two. An
  // automatic config moves as its resolved twin; the result is a member.
  std::optional<TileConfig> neighbour(const TileConfig& config, TileField field,
                                      int direction) const;
  // All configs one neighbour() step away, per field (-1 before +1), no duplicates.
  std::vector<TileConfig> neighbours(const TileConfig& config) const;

  // Moves each field, with probability `rate`, to a random neighbour along it;
  // the moves are chained, so every intermediate config is in the space too.
  // With at_least_one, a field is always moved when any can be. Returns the
  // config unchanged when no field can move.
  TileConfig mutate(const TileConfig& config, std::mt19937_64& rng, double rate,
                    bool at_least_one) const;

 private:
  SearchSpace() = default;
  void rebuild_index();
  const std::vector<int>& axis(TileField field) const;

  ProblemClass problem_;
  std::string template_id_;
  ArchInfo arch_;
  SearchSpaceAxes axes_;
  std::vector<TileConfig> configs_;
  std::vector<RejectedConfig> rejected_;
  std::map<std::array<int, kTileFields.size()>, size_t> index_;
};

}  // namespace flashcore
