#include "tuning/search_space.hpp"

#include <algorithm>

#include "family/attention_decode.hpp"
#include "family/attention_sm90.hpp"
#include "family/template_catalog.hpp"

namespace flashcore {
namespace {

std::array<int, kTileFields.size()> key_of(const TileConfig& c) {
  std::array<int, kTileFields.size()> key{};
  for (size_t i = 0; i < kTileFields.size(); ++i) key[i] = field_value(c, kTileFields[i]);
  return key;
}

// The axis of `field`, const or not, without a cast.
template <typename Axes>
auto& axis_of(Axes& axes, TileField field) {
  switch (field) {
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
    case TileField::block_m: break;
  }
  return axes.block_m;
}

void normalise(std::vector<int>& axis) {
  std::sort(axis.begin(), axis.end());
  axis.erase(std::unique(axis.begin(), axis.end()), axis.end());
}

}  // namespace

std::string_view tile_field_name(TileField field) {
  switch (field) {
    case TileField::block_m: return "block_m";
    case TileField::block_n: return "block_n";
    case TileField::warps: return "warps";
    case TileField::stages: return "stages";
    case TileField::q_placement: return "q_placement";
    case TileField::smem_layout: return "smem_layout";
    case TileField::pingpong: return "pingpong";
    case TileField::separate_o: return "separate_o";
    case TileField::persistent: return "persistent";
    case TileField::fused_combine: return "fused_combine";
    case TileField::splits: return "splits";
  }
  return "?";
}

int field_value(const TileConfig& config, TileField field) {
  switch (field) {
    case TileField::block_m: return config.block_m;
    case TileField::block_n: return config.block_n;
    case TileField::warps: return config.warps;
    case TileField::stages: return config.stages;
    case TileField::q_placement: return static_cast<int>(config.q_placement);
    case TileField::smem_layout: return static_cast<int>(config.smem_layout);
    case TileField::pingpong: return config.pingpong ? 1 : 0;
    case TileField::separate_o: return config.separate_o ? 1 : 0;
    case TileField::persistent: return config.persistent ? 1 : 0;
    case TileField::fused_combine: return config.fused_combine ? 1 : 0;
    case TileField::splits: return config.splits;
  }
  return 0;
}

void set_field_value(TileConfig& config, TileField field, int value) {
  switch (field) {
    case TileField::block_m: config.block_m = value; break;
    case TileField::block_n: config.block_n = value; break;
    case TileField::warps: config.warps = value; break;
    case TileField::stages: config.stages = value; break;
    case TileField::q_placement: config.q_placement = static_cast<QPlacement>(value); break;
    case TileField::smem_layout: config.smem_layout = static_cast<SmemLayout>(value); break;
    case TileField::pingpong: config.pingpong = value != 0; break;
    case TileField::separate_o: config.separate_o = value != 0; break;
    case TileField::persistent: config.persistent = value != 0; break;
    case TileField::fused_combine: config.fused_combine = value != 0; break;
    case TileField::splits: config.splits = value; break;
  }
}

uint64_t uniform_index(std::mt19937_64& rng, uint64_t n) {
  // Rejection sampling: accept only the top 2^64 - (2^64 mod n) outputs, a
  // whole number of copies of [0, n), so no index is favoured.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % n;
  }
}

double unit_interval(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

bool bernoulli(std::mt19937_64& rng, double p) { return unit_interval(rng) < p; }

SearchSpaceAxes family_axes(std::string_view template_id) {
  if (template_id == decode_family::kTemplateId) {
    SearchSpaceAxes axes;
    axes.block_m = {16, 32, 48, 64};
    axes.block_n = {32, 64, 128};
    axes.warps = {2, 3, 4, 6, 8};  // 3 and 6 for the 48-row tile (3 m-tiles)
    axes.stages = {2, 3, 4};
    axes.q_placement = {static_cast<int>(QPlacement::automatic)};
    axes.smem_layout = {static_cast<int>(SmemLayout::automatic)};
    axes.fused_combine = {0, 1};
    // 0: the family's split rule for the shape (decode_num_splits); a fixed
    // count where the bucket's shapes want more or fewer blocks than the rule gives.
    axes.splits = {0, 8, 16, 32, 64};
    return axes;
  }
  if (template_id != sm90_family::kTemplateId) return SearchSpaceAxes{};
  SearchSpaceAxes axes;
  axes.block_m = {64, 128, 192};
  axes.block_n = {64, 80, 96, 112, 128, 144, 160, 176, 192};
  axes.warps = {8, 12, 16};
  axes.stages = {1, 2, 3};
  axes.q_placement = {static_cast<int>(QPlacement::automatic)};
  axes.smem_layout = {static_cast<int>(SmemLayout::automatic)};
  axes.pingpong = {0, 1};
  axes.separate_o = {0, 1};
  axes.persistent = {0, 1};
  return axes;
}

Result<SearchSpace> SearchSpace::create(const ProblemClass& problem, const ArchInfo& arch,
                                        const SearchSpaceAxes& axes,
                                        std::string_view template_id) {
  if (auto error = problem_class_error(problem))
    return make_error(ErrorCode::invalid_argument, *error);
  const TemplateInfo* family = find_template(template_id);
  if (family == nullptr)
    return make_error(ErrorCode::invalid_argument,
                      "template_id: unknown template '" + std::string(template_id) + "'");
  // A family that resolves automatic fields (sm80) needs concrete axis
  // values; one that has no such fields keeps them automatic.
  const bool resolves = template_id == kAttentionTemplateId;

  SearchSpace space;
  space.problem_ = problem;
  space.template_id_ = std::string(template_id);
  space.arch_ = arch;
  space.axes_ = axes;
  for (TileField field : kTileFields) {
    auto& values = axis_of(space.axes_, field);
    normalise(values);
    if (values.empty())
      return make_error(ErrorCode::invalid_argument,
                        "search space axis " + std::string(tile_field_name(field)) + " is empty");
  }

  // An odometer over the axes, the last field fastest: lexicographic order.
  const auto automatic_value = [](TileField field) {
    return field == TileField::q_placement   ? static_cast<int>(QPlacement::automatic)
           : field == TileField::smem_layout ? static_cast<int>(SmemLayout::automatic)
                                             : -1;
  };
  for (TileField field : kTileFields)
    for (int value : axis_of(space.axes_, field))
      if (resolves && value == automatic_value(field))
        return make_error(ErrorCode::invalid_argument,
                          "search space axis " + std::string(tile_field_name(field)) +
                              " must list concrete values, not automatic");
  std::array<size_t, kTileFields.size()> digit{};
  for (;;) {
    TileConfig config;
    for (size_t i = 0; i < kTileFields.size(); ++i)
      set_field_value(config, kTileFields[i], axis_of(space.axes_, kTileFields[i])[digit[i]]);
    if (auto error = family->config_error(config, problem, arch))
      space.rejected_.push_back({config, *error});
    else
      space.configs_.push_back(config);
    size_t i = kTileFields.size();
    while (i > 0 && ++digit[i - 1] == axis_of(space.axes_, kTileFields[i - 1]).size()) digit[--i] = 0;
    if (i == 0) break;
  }

  if (space.configs_.empty()) {
    return make_error(ErrorCode::invalid_argument,
                      "no tile config in the search space is valid for " +
                          canonical_problem_class(problem) + " on " + std::string(arch.name) +
                          " (first rejection: " + canonical_config(space.rejected_.front().config) +
                          " " + space.rejected_.front().reason + ")");
  }
  space.rebuild_index();
  return space;
}

size_t SearchSpace::prune(const KeepPredicate& keep) {
  std::vector<TileConfig> kept;
  kept.reserve(configs_.size());
  size_t dropped = 0;
  for (const auto& config : configs_) {
    std::string why;
    if (keep(config, &why)) {
      kept.push_back(config);
    } else {
      rejected_.push_back({config, why.empty() ? "pruned" : std::move(why)});
      ++dropped;
    }
  }
  configs_ = std::move(kept);
  rebuild_index();
  return dropped;
}

std::optional<size_t> SearchSpace::index_of(const TileConfig& config) const {
  auto it = index_.find(key_of(template_info(template_id_).resolve(config, problem_)));
  if (it == index_.end()) return std::nullopt;
  return it->second;
}

void SearchSpace::rebuild_index() {
  index_.clear();
  for (size_t i = 0; i < configs_.size(); ++i) index_.emplace(key_of(configs_[i]), i);
}

const std::vector<int>& SearchSpace::axis(TileField field) const { return axis_of(axes_, field); }

std::optional<TileConfig> SearchSpace::neighbour(const TileConfig& automatic_or_not,
                                                 TileField field, int direction) const {
  // From the concrete twin: an automatic field is no axis value, and stepping
  // from it could land on the value the rule already picks (the same kernel).
  const TileConfig config = template_info(template_id_).resolve(automatic_or_not, problem_);
  const auto& values = axis(field);
  const int value = field_value(config, field);
  // Position of the value on its axis; a value between axis points (a seed
  // from another space, say) still has a well-defined below and above.
  const auto pos = static_cast<std::ptrdiff_t>(
      std::lower_bound(values.begin(), values.end(), value) - values.begin());
  const auto n = static_cast<std::ptrdiff_t>(values.size());
  std::ptrdiff_t i;
  if (direction < 0) {
    i = pos - 1;
  } else {
    i = (pos < n && values[pos] == value) ? pos + 1 : pos;
  }
  const std::ptrdiff_t step = direction < 0 ? -1 : 1;
  for (; i >= 0 && i < n; i += step) {
    TileConfig candidate = config;
    set_field_value(candidate, field, values[i]);
    if (contains(candidate)) return candidate;
  }
  return std::nullopt;
}

std::vector<TileConfig> SearchSpace::neighbours(const TileConfig& config) const {
  std::vector<TileConfig> result;
  for (TileField field : kTileFields)
    for (int direction : {-1, 1})
      if (auto n = neighbour(config, field, direction);
          n && std::find(result.begin(), result.end(), *n) == result.end())
        result.push_back(*n);
  return result;
}

TileConfig SearchSpace::mutate(const TileConfig& config, std::mt19937_64& rng, double rate,
                               bool at_least_one) const {
  // One move along `field` to a neighbour chosen uniformly among those that exist.
  auto move = [&](TileConfig& c, TileField field) {
    std::optional<TileConfig> options[2] = {neighbour(c, field, -1), neighbour(c, field, 1)};
    const int count = (options[0] ? 1 : 0) + (options[1] ? 1 : 0);
    if (count == 0) return false;
    if (count == 2)
      c = *options[uniform_index(rng, 2)];
    else
      c = options[0] ? *options[0] : *options[1];
    return true;
  };

  TileConfig result = config;
  bool moved = false;
  for (TileField field : kTileFields)
    if (bernoulli(rng, rate)) moved = move(result, field) || moved;

  if (at_least_one && !moved) {
    std::vector<TileField> movable;
    for (TileField field : kTileFields)
      if (neighbour(result, field, -1) || neighbour(result, field, 1)) movable.push_back(field);
    if (!movable.empty()) move(result, movable[uniform_index(rng, movable.size())]);
  }
  return result;
}

}  // namespace flashcore
