// The Hopper family (template attention_fwd_sm90,
// kernel_templates/hopper/attention_fwd_sm90.cuh): wgmma + TMA, one producer
// warpgroup and block_m / 64 consumer warpgroups. Its config is a TileConfig:
//   block_m     64, 128 or 192: 64 query rows per consumer warpgroup
//   block_n     key rows per K/V tile: a multiple of 16 in [16, 256]
//   warps       4 * (block_m / 64 + 1): the consumers plus the producer
//   stages      K/V ring depth, 1..4
//   pingpong, separate_o, persistent  (tile_config.hpp)
// q_placement and smem_layout are the sm80 family's and must stay automatic.
// The register split is the family's rule: 240 per consumer thread and 24 per
// producer thread with two consumer warpgroups, 160 / 24 with three, none
// with one. Kernels take AttentionTmaParams (ABI version 2), whose four
// tensor maps the launcher encodes as the handle's recipe says.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "family/tile_config.hpp"

namespace flashcore::sm90_family {

inline constexpr std::string_view kTemplateId = "attention_fwd_sm90";
inline constexpr std::array<int, 3> kHeadDims = {64, 128, 256};
inline constexpr int kTmaColumns = 64;  // head_dim elements per box (128 bytes, 128-byte swizzle)
inline constexpr int kQRows = 64;       // Q and O box rows: one consumer warpgroup's
inline constexpr unsigned kAbiVersion = 2;

int consumers(const TileConfig& config);  // block_m / 64
int consumer_registers(const TileConfig& config);
int producer_registers(const TileConfig& config);

// The family's choice per head dim, as measured on the H200 (bench/RESULTS.md).
TileConfig default_config(const ProblemClass& problem);

// Configs a Tune tries right after the default: the winners of the H200
// measurements per head dim (bench/RESULTS.md §0), so that a short search
// reaches them; those invalid for the problem are left out.
std::vector<TileConfig> search_seeds(const ProblemClass& problem, const RuntimeShape& shape,
                                     const ArchInfo& arch);

// Mirrors Sm90Layout::kBytes in the template.
int smem_bytes(const TileConfig& config, const ProblemClass& problem);

// "<field>: <reason>" naming the offending field, before NVRTC is called.
std::optional<std::string> config_error(const TileConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch);

// "flashcore::attention_fwd_sm90<flashcore::fp16_t, 128, false, 128, 2, 2, true, true, 240, 24>"
std::string name_expression(const ProblemClass& problem, const TileConfig& config);

// grid.x = ceil(seq_q / block_m) * heads * batch tiles (the upper bound a
// persistent launch clamps to the device's multiprocessor count); y = z = 1.
LaunchGeometry launch_geometry(const TileConfig& config, const ProblemClass& problem,
                               const RuntimeShape& shape);
std::string grid_formula(const TileConfig& config);

}  // namespace flashcore::sm90_family
