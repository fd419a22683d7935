#include "family/attention_decode.hpp"

#include <algorithm>
#include <array>
#include <sstream>

#include "decode/decode_params.cuh"

namespace flashcore::decode_family {
namespace {

constexpr std::array<int, 3> kHeadDims = {64, 128, 256};

std::string field(std::string_view name, const std::string& reason) {
  return std::string(name) + ": " + reason;
}

}  // namespace

int packed_rows_for(const RuntimeShape& shape) {
  const int64_t group = shape.heads / std::max<int64_t>(1, shape.effective_kv_heads());
  const int64_t rows = group * shape.seq_q;
  if (rows < 1 || rows > kMaxPackedRows) return 0;
  return static_cast<int>((rows + 15) / 16 * 16);
}

bool serves(const ProblemClass& problem, const RuntimeShape& shape) {
  if (std::find(kHeadDims.begin(), kHeadDims.end(), problem.head_dim) == kHeadDims.end())
    return false;
  // Top-left causal: query row i sees keys 0..i, a mask the decode kernels
  // do not apply; it is no mask only when there is one key.
  if (problem.causal && shape.effective_seq_k() > 1) return false;
  return packed_rows_for(shape) != 0;
}

DecodeConfig default_config(const ProblemClass& problem, const RuntimeShape& shape,
                            const ArchInfo& arch) {
  DecodeConfig c;
  c.packed_rows = std::max(16, packed_rows_for(shape));
  const int m_tiles = c.packed_rows / 16;
  // Preferred first: four warps where the rows allow it (warps of one m-tile
  // split each key tile), 3 stages, 64-key tiles; then smaller until it fits.
  const int preferred_warps =
      problem.head_dim >= 256 ? 2 * m_tiles : m_tiles * std::max(1, 4 / m_tiles);
  for (int warps : {preferred_warps, m_tiles})
    for (int stages : {3, 2})
      for (int block_n : {problem.head_dim >= 256 ? 32 : 64, 32, 16}) {
        DecodeConfig candidate = c;
        candidate.warps = warps;
        candidate.stages = stages;
        candidate.block_n = block_n;
        if (!config_error(candidate, problem, arch)) return candidate;
      }
  c.warps = m_tiles;
  c.stages = 2;
  c.block_n = 16;
  return c;  // the smallest; config_error says why when even it does not fit
}

std::optional<std::string> config_error(const DecodeConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch) {
  if (std::find(kHeadDims.begin(), kHeadDims.end(), problem.head_dim) == kHeadDims.end())
    return field("problem.head_dim", std::to_string(problem.head_dim) +
                                         " is not in the decode family (64, 128, 256)");
  if (config.packed_rows < 16 || config.packed_rows > kMaxPackedRows ||
      config.packed_rows % 16 != 0)
    return field("config.packed_rows", std::to_string(config.packed_rows) +
                                           " must be 16, 32, 48 or 64 (16-row mma tiles)");
  const int m_tiles = config.packed_rows / 16;
  if (config.warps < 1 || config.warps > 16 || config.warps % m_tiles != 0)
    return field("config.warps", std::to_string(config.warps) + " must be a multiple of " +
                                     std::to_string(m_tiles) + " (one whole m-tile per warp), at most 16");
  const int warps_n = config.warps / m_tiles;
  if (config.block_n < 16 || config.block_n > 256 || config.block_n % (16 * warps_n) != 0)
    return field("config.block_n", std::to_string(config.block_n) + " must be a multiple of " +
                                       std::to_string(16 * warps_n) +
                                       " (16-key steps for each of the " + std::to_string(warps_n) +
                                       " warps sharing a tile), at most 256");
  if (config.stages < 2 || config.stages > 6)
    return field("config.stages", std::to_string(config.stages) + " must be in [2, 6]");
  if (config.splits < 0 || config.splits > kDecodeMaxSplits)
    return field("config.splits", std::to_string(config.splits) + " must be in [0, " +
                                      std::to_string(kDecodeMaxSplits) + "] (0 = the rule)");
  if (arch.compute_capability < 80)
    return field("arch", std::string(arch.name) + " is below sm_80 (mma.sync, cp.async)");
  const int smem = smem_bytes(config, problem);
  if (smem > arch.max_dynamic_smem_bytes)
    return field("config", "needs " + std::to_string(smem) + " bytes of shared memory, over " +
                               std::string(arch.name) + "'s limit of " +
                               std::to_string(arch.max_dynamic_smem_bytes));
  return std::nullopt;
}

std::string split_name_expression(const ProblemClass& problem, const DecodeConfig& config) {
  std::ostringstream out;
  out << "flashcore::attention_decode_split<"
      << (problem.dtype == DType::fp16 ? "flashcore::fp16_t" : "flashcore::bf16_t") << ", "
      << problem.head_dim << ", " << config.packed_rows << ", " << config.block_n << ", "
      << config.warps << ", " << config.stages << ", " << (config.fused_combine ? "true" : "false")
      << ">";
  return out.str();
}

std::string combine_name_expression(const ProblemClass& problem) {
  std::ostringstream out;
  out << "flashcore::attention_decode_combine<"
      << (problem.dtype == DType::fp16 ? "flashcore::fp16_t" : "flashcore::bf16_t") << ", "
      << problem.head_dim << ">";
  return out.str();
}

int smem_bytes(const DecodeConfig& config, const ProblemClass& problem) {
  return decode_smem_bytes(problem.head_dim, config.packed_rows, config.block_n, config.warps,
                           config.stages);
}

DecodeLaunch launch(const DecodeConfig& config, const ProblemClass& problem,
                    const RuntimeShape& shape, int sm_count) {
  const int batch = static_cast<int>(shape.batch);
  const int heads = static_cast<int>(shape.heads);
  const int kv_heads = static_cast<int>(shape.effective_kv_heads());
  const int seq_q = static_cast<int>(shape.seq_q);
  const int seq_k = static_cast<int>(shape.effective_seq_k());
  DecodeLaunch out;
  const int asked = config.splits > 0 ? config.splits
                                      : decode_num_splits(batch, heads, kv_heads, seq_q, seq_k,
                                                          problem.head_dim, config.block_n,
                                                          std::max(1, sm_count));
  out.num_splits = decode_effective_splits(seq_k, config.block_n, asked);
  out.split.grid = Dim3{static_cast<uint32_t>(out.num_splits), static_cast<uint32_t>(kv_heads),
                        static_cast<uint32_t>(batch)};
  out.split.block.x = static_cast<uint32_t>(config.warps * 32);
  out.split.dynamic_smem_bytes = static_cast<uint32_t>(smem_bytes(config, problem));
  if (out.num_splits > 1 && !config.fused_combine) {
    LaunchGeometry combine;
    const long long rows = static_cast<long long>(batch) * heads * seq_q;
    combine.grid.x = static_cast<uint32_t>(
        (rows + decode_combine_rows_per_block(problem.head_dim) - 1) /
        decode_combine_rows_per_block(problem.head_dim));
    combine.block.x = kDecodeCombineThreads;
    out.combine = combine;
  }
  out.workspace_bytes = static_cast<uint64_t>(
      decode_workspace_bytes(batch, heads, kv_heads, seq_q, problem.head_dim, out.num_splits));
  return out;
}

DecodeConfig from_tile(const TileConfig& c) {
  return DecodeConfig{c.block_m, c.block_n, c.warps, c.stages, c.fused_combine, c.splits};
}

TileConfig to_tile(const DecodeConfig& c) {
  TileConfig t{c.packed_rows, c.block_n, c.warps, c.stages};
  t.fused_combine = c.fused_combine;
  t.splits = c.splits;
  return t;
}

namespace catalog {

std::string name_expression(const ProblemClass& problem, const TileConfig& config) {
  return split_name_expression(problem, from_tile(config));
}

std::vector<std::string> extra_name_expressions(const ProblemClass& problem,
                                                const TileConfig& config) {
  if (config.fused_combine) return {};
  return {combine_name_expression(problem)};
}

std::optional<std::string> config_error(const TileConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch) {
  if (config.q_placement != QPlacement::automatic)
    return field("config.q_placement", "is a field of the sm80 family; leave it unset");
  if (config.smem_layout != SmemLayout::automatic)
    return field("config.smem_layout", "is a field of the sm80 family; leave it unset");
  if (config.pingpong || config.separate_o || config.persistent)
    return field(config.pingpong     ? "config.pingpong"
                 : config.separate_o ? "config.separate_o"
                                     : "config.persistent",
                 "is a field of the Hopper family only");
  if (auto error = decode_family::config_error(from_tile(config), problem, arch)) {
    // The decode family calls block_m its packed rows.
    if (error->rfind("config.packed_rows", 0) == 0)
      return "config.block_m (packed rows)" + error->substr(std::string("config.packed_rows").size());
    return error;
  }
  return std::nullopt;
}

int smem_bytes(const TileConfig& config, const ProblemClass& problem) {
  return decode_family::smem_bytes(from_tile(config), problem);
}

LaunchGeometry launch_geometry(const TileConfig& config, const ProblemClass& problem,
                               const RuntimeShape& shape) {
  return launch(from_tile(config), problem, shape, kHandleSmCount).split;
}

std::string grid_formula(const TileConfig& config) {
  return "x=num_splits" +
         std::string(config.splits > 0
                         ? " (decode_effective_splits(seq_k," + std::to_string(config.block_n) +
                               "," + std::to_string(config.splits) + "))"
                         : " (decode_num_splits(...) for the device, decode_params.cuh)") +
         ";y=kv_heads;z=batch";
}

TileConfig default_config(const ProblemClass& problem) {
  return to_tile(decode_family::default_config(problem, RuntimeShape{}, *find_arch("sm_80")));
}

TileConfig default_config_for(const ProblemClass& problem, const RuntimeShape& shape,
                              const ArchInfo& arch) {
  return to_tile(decode_family::default_config(problem, shape, arch));
}

std::vector<TileConfig> search_seeds(const ProblemClass& problem, const RuntimeShape& shape,
                                     const ArchInfo& arch) {
  // The winners of bench/decode/decode_lab.py's H200 sweep (RESULTS.md §0b),
  // on the packed tile of the shape: (block_n, warps, stages, fused, splits).
  struct Seed {
    int block_n, warps, stages;
    bool fused;
    int splits;
  };
  static constexpr Seed kSeeds[] = {{32, 2, 3, true, 32}, {128, 4, 3, true, 0},
                                    {128, 4, 3, false, 0}, {32, 2, 3, false, 0},
                                    {64, 4, 4, true, 16}};
  const DecodeConfig base = decode_family::default_config(problem, shape, arch);
  std::vector<TileConfig> seeds;
  for (const Seed& s : kSeeds) {
    DecodeConfig c = base;
    c.block_n = s.block_n;
    c.warps = s.warps * (base.packed_rows / 16 > 1 ? base.packed_rows / 16 : 1);
    c.stages = s.stages;
    c.fused_combine = s.fused;
    c.splits = s.splits;
    if (!config_error(c, problem, arch)) seeds.push_back(to_tile(c));
  }
  return seeds;
}

std::optional<std::string> search_skip(const TileConfig& config, const ProblemClass&,
                                       const RuntimeShape& shape) {
  const int rows = packed_rows_for(shape);
  if (rows > 0 && config.block_m > rows)
    return "the shape's " + std::to_string(rows) + " packed rows fit a " + std::to_string(rows) +
           "-row tile; " + std::to_string(config.block_m) + " rows only add idle ones";
  return std::nullopt;
}

std::optional<std::string> shape_error(const TileConfig& config, const ProblemClass& problem,
                                       const RuntimeShape& shape) {
  if (problem.causal && shape.effective_seq_k() > 1)
    return field("problem.causal", "the decode family computes unmasked attention; causal is "
                                   "top-left aligned (query row i sees keys 0..i), which is a mask "
                                   "whenever seq_k > 1; decode over a KV cache is causal=false "
                                   "(every cached key precedes the new rows), or use "
                                   "attention_fwd / attention_fwd_sm90 for a masked call");
  const int64_t group = shape.heads / std::max<int64_t>(1, shape.effective_kv_heads());
  const int64_t rows = group * shape.seq_q;
  if (rows > config.block_m)
    return field("problem.seq_q", std::to_string(shape.seq_q) + " x " + std::to_string(group) +
                                      " query heads per kv head = " + std::to_string(rows) +
                                      " rows, over the kernel's " +
                                      std::to_string(config.block_m) + " packed rows" +
                                      (rows > kMaxPackedRows ? " (and the family's 64: use a "
                                                               "prefill family)"
                                                             : ""));
  return std::nullopt;
}

}  // namespace catalog

}  // namespace flashcore::decode_family
