#include "family/attention_sm90.hpp"

#include <algorithm>
#include <span>
#include <sstream>

namespace flashcore::sm90_family {
namespace {

std::string field(std::string_view name, const std::string& reason) {
  return std::string(name) + ": " + reason;
}

constexpr int kElementBytes = 2;
// Registers a consumer thread needs beyond S (block_n / 2), P (block_n / 4)
// and O (head_dim / 2): addresses, softmax state, loop counters. Configs over
// the budget spill; the rule keeps them out of the search before NVRTC runs.
constexpr int kConsumerOverheadRegisters = 32;

}  // namespace

int consumers(const TileConfig& config) { return config.block_m / 64; }

int consumer_registers(const TileConfig& config) {
  switch (consumers(config)) {
    case 2: return 240;
    case 3: return 160;
    default: return 0;  // one consumer: the launch-time 255 cap, no reallocation
  }
}

int producer_registers(const TileConfig& config) { return consumers(config) > 1 ? 24 : 0; }

TileConfig default_config(const ProblemClass& problem) {
  TileConfig c;
  c.block_m = 128;
  c.warps = 12;
  c.pingpong = true;
  c.persistent = true;
  if (problem.head_dim <= 64) {
    c.block_n = 128;
    c.stages = 3;
    c.separate_o = true;
  } else if (problem.head_dim <= 128) {
    c.block_n = 128;
    c.stages = 2;
    c.separate_o = true;
  } else {
    c.block_n = 80;
    c.stages = 2;
    c.separate_o = false;  // 256-wide O tiles do not fit beside Q and the ring
  }
  return c;
}

std::vector<TileConfig> search_seeds(const ProblemClass& problem, const RuntimeShape&,
                                     const ArchInfo& arch) {
  // (block_n, stages, consumers, pingpong, separate_o, persistent)
  struct Seed {
    int block_n, stages, consumers;
    bool pingpong, separate_o, persistent;
  };
  // D 64: separate O without ping-pong won 4x16x2048 (fp16 s2, bf16 s3) and
  // n144 s3 the 16384-key row; D 128: FlashAttention-3's 176-key tile beside
  // the default's 128; D 256: the default without the persistent grid.
  static constexpr Seed kD64[] = {{128, 2, 2, false, true, true},
                                  {128, 3, 2, false, true, true},
                                  {144, 3, 2, false, true, true}};
  static constexpr Seed kD128[] = {{176, 2, 2, true, false, true},
                                   {128, 2, 2, false, true, true},
                                   {128, 2, 2, true, false, true}};
  static constexpr Seed kD256[] = {{80, 2, 2, true, false, false},
                                   {64, 2, 2, true, false, true}};
  std::span<const Seed> seeds = problem.head_dim <= 64    ? std::span<const Seed>(kD64)
                                : problem.head_dim <= 128 ? std::span<const Seed>(kD128)
                                                          : std::span<const Seed>(kD256);
  std::vector<TileConfig> out;
  for (const Seed& s : seeds) {
    TileConfig c;
    c.block_m = 64 * s.consumers;
    c.warps = 4 * (s.consumers + 1);
    c.block_n = s.block_n;
    c.stages = s.stages;
    c.pingpong = s.pingpong;
    c.separate_o = s.separate_o;
    c.persistent = s.persistent;
    if (!sm90_family::config_error(c, problem, arch)) out.push_back(c);
  }
  return out;
}

int smem_bytes(const TileConfig& config, const ProblemClass& problem) {
  const int q = consumers(config) * kQRows * problem.head_dim * kElementBytes;
  const int kv = config.block_n * problem.head_dim * kElementBytes;
  const int barriers = 8 * (2 * consumers(config) + 4 * config.stages);
  return q * (config.separate_o ? 2 : 1) + 2 * config.stages * kv + barriers + 1024;
}

std::optional<std::string> config_error(const TileConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch) {
  if (arch.name != "sm_90a")
    return field("arch", "the Hopper family (" + std::string(kTemplateId) +
                             ") needs sm_90a (wgmma, setmaxnreg), not " + std::string(arch.name));
  if (std::find(kHeadDims.begin(), kHeadDims.end(), problem.head_dim) == kHeadDims.end())
    return field("problem.head_dim", std::to_string(problem.head_dim) +
                                         " is not in the Hopper family (64, 128, 256); the sm80 "
                                         "family (attention_fwd) serves it on sm_90a");
  if (config.block_m != 64 && config.block_m != 128 && config.block_m != 192)
    return field("config.block_m", std::to_string(config.block_m) +
                                       " must be 64, 128 or 192 (64 rows per consumer warpgroup)");
  const int want_warps = 4 * (consumers(config) + 1);
  if (config.warps != want_warps)
    return field("config.warps", std::to_string(config.warps) + " must be " +
                                     std::to_string(want_warps) + " for block_m " +
                                     std::to_string(config.block_m) +
                                     " (a producer warpgroup plus one per 64 rows)");
  if (config.block_n < 16 || config.block_n > 256 || config.block_n % 16 != 0)
    return field("config.block_n",
                 std::to_string(config.block_n) + " must be a multiple of 16 in [16, 256]");
  if (config.stages < 1 || config.stages > 4)
    return field("config.stages", std::to_string(config.stages) + " must be in [1, 4]");
  if (config.q_placement != QPlacement::automatic)
    return field("config.q_placement", "is a field of the sm80 family; leave it unset");
  if (config.smem_layout != SmemLayout::automatic)
    return field("config.smem_layout", "is a field of the sm80 family; leave it unset");
  if (config.fused_combine)
    return field("config.fused_combine", "is a field of the decode family only");
  if (config.splits != 0) return field("config.splits", "is a field of the decode family only");
  if (config.pingpong && consumers(config) != 2)
    return field("config.pingpong", "needs two consumer warpgroups (block_m 128)");
  if (consumers(config) > 1) {
    const int need =
        config.block_n / 2 + config.block_n / 4 + problem.head_dim / 2 + kConsumerOverheadRegisters;
    if (need > consumer_registers(config))
      return field("config.block_n", std::to_string(config.block_n) + " with head_dim " +
                                         std::to_string(problem.head_dim) + " needs about " +
                                         std::to_string(need) + " registers per thread, over " +
                                         std::to_string(consumer_registers(config)));
  }
  const int smem = sm90_family::smem_bytes(config, problem);
  if (smem > arch.max_dynamic_smem_bytes)
    return field("config", "needs " + std::to_string(smem) + " bytes of shared memory, over " +
                               std::string(arch.name) + "'s limit of " +
                               std::to_string(arch.max_dynamic_smem_bytes));
  return std::nullopt;
}

std::string name_expression(const ProblemClass& problem, const TileConfig& config) {
  const auto b = [](bool v) { return v ? "true" : "false"; };
  std::ostringstream out;
  out << "flashcore::attention_fwd_sm90<"
      << (problem.dtype == DType::fp16 ? "flashcore::fp16_t" : "flashcore::bf16_t") << ", "
      << problem.head_dim << ", " << b(problem.causal) << ", " << config.block_n << ", "
      << config.stages << ", " << consumers(config) << ", " << b(config.pingpong) << ", "
      << b(config.separate_o) << ", " << consumer_registers(config) << ", "
      << producer_registers(config) << ">";
  return out.str();
}

LaunchGeometry launch_geometry(const TileConfig& config, const ProblemClass& problem,
                               const RuntimeShape& shape) {
  LaunchGeometry geometry;
  const int64_t tiles = (shape.seq_q + config.block_m - 1) / config.block_m * shape.heads *
                        shape.batch;
  geometry.grid.x = static_cast<uint32_t>(tiles);
  geometry.block.x = static_cast<uint32_t>(128 * (consumers(config) + 1));
  geometry.dynamic_smem_bytes = static_cast<uint32_t>(sm90_family::smem_bytes(config, problem));
  return geometry;
}

std::string grid_formula(const TileConfig& config) {
  const std::string tiles =
      "ceil_div(seq_q," + std::to_string(config.block_m) + ")*heads*batch";
  return "x=" + (config.persistent ? "min(" + tiles + ",multiprocessor_count)" : tiles) +
         ";y=1;z=1";
}

}  // namespace flashcore::sm90_family
