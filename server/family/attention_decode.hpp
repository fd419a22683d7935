// The decode family (kernel_templates/decode/attention_decode.cuh): attention
// for a few query rows per sequence (decode, speculative decode) against any
// KV length. The query heads that share a kv head are packed into the rows of
// one tile (GQA/MQA), the key sequence is split across blocks that each write
// a partial output and log-sum-exp to a workspace, and a combine merges them
// in a fixed order: a second kernel, or the last split block of each (batch,
// kv head) (fused). Its own config, validity, name expressions, geometry and
// workspace are defined here, from the ABI header decode_params.cuh that the
// kernels compile with, so the two cannot disagree. Runs on sm_80 and up.
//
// In the template catalog as "attention_decode" (ABI version 3: DecodeParams),
// its DecodeConfig carried in a TileConfig (block_m = packed rows, block_n,
// warps, stages, fused_combine, splits) by the `catalog` functions below.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "family/tile_config.hpp"

namespace flashcore::decode_family {

inline constexpr std::string_view kTemplateId = "attention_decode";
inline constexpr int kMaxPackedRows = 64;  // group * seq_q past this goes to the prefill families

struct DecodeConfig {
  int packed_rows = 16;  // query rows of one kv head per tile: heads/kv_heads * seq_q, rounded up to 16
  int block_n = 64;      // keys per K/V tile
  int warps = 4;         // a multiple of packed_rows / 16; warps of one m-tile share each key tile
  int stages = 3;        // cp.async ring depth, >= 2
  bool fused_combine = true;  // the last split block merges (one launch) or a combine kernel does
  int splits = 0;        // key splits; 0 = the family's rule (decode_num_splits) for the shape
  bool operator==(const DecodeConfig&) const = default;
};

// group * seq_q rounded up to the 16-row mma tile; 0 when the shape is not
// a decode shape (over kMaxPackedRows).
int packed_rows_for(const RuntimeShape& shape);
// Whether a request of this problem and shape is the decode family's: few
// enough packed rows, and not causal with more than one query row (top-left
// causal decode is degenerate: row 0 would see key 0 only).
bool serves(const ProblemClass& problem, const RuntimeShape& shape);

// The config measured best across the H200 decode table (bench/results/
// h200-decode-lab.json): 64-key tiles, 4 warps, 3 stages, fused combine,
// splits by the rule; fewer stages (then 32-key tiles) where `arch`'s shared
// memory is smaller, and at D 256 two warps per m-tile with 32-key tiles.
DecodeConfig default_config(const ProblemClass& problem, const RuntimeShape& shape,
                            const ArchInfo& arch);

// "<field>: <reason>" naming the offending field, before NVRTC is called.
std::optional<std::string> config_error(const DecodeConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch);

// "flashcore::attention_decode_split<flashcore::bf16_t, 128, 16, 64, 4, 3, true>"
std::string split_name_expression(const ProblemClass& problem, const DecodeConfig& config);
// "flashcore::attention_decode_combine<flashcore::bf16_t, 128>"
std::string combine_name_expression(const ProblemClass& problem);

int smem_bytes(const DecodeConfig& config, const ProblemClass& problem);

// One launch of the family for a run-time shape on a device with `sm_count`
// multiprocessors: the split kernel's geometry, the combine kernel's when it
// runs (num_splits > 1 and not fused), the splits used, and the workspace
// (fp32 partials, base-2 LSEs, arrival counters; zeroed once before the first
// launch when fused).
struct DecodeLaunch {
  int num_splits = 1;
  LaunchGeometry split;
  std::optional<LaunchGeometry> combine;
  uint64_t workspace_bytes = 0;
};
DecodeLaunch launch(const DecodeConfig& config, const ProblemClass& problem,
                    const RuntimeShape& shape, int sm_count);

// The handle's ABI version for DecodeParams (a number no other family's
// struct uses, so a client that knows only versions 1 and 2 refuses it).
inline constexpr unsigned kAbiVersion = 3;
// Multiprocessors the daemon assumes for the split rule in handles (the
// H200's and H100's); a client on another GPU recomputes num_splits with
// decode_num_splits (decode_params.cuh) or asks GetKernel for its shape.
inline constexpr int kHandleSmCount = 132;

DecodeConfig from_tile(const TileConfig& config);
TileConfig to_tile(const DecodeConfig& config);

// The catalog's entry points, over TileConfig.
namespace catalog {
std::string name_expression(const ProblemClass& problem, const TileConfig& config);
std::vector<std::string> extra_name_expressions(const ProblemClass& problem,
                                                const TileConfig& config);
std::optional<std::string> config_error(const TileConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch);
int smem_bytes(const TileConfig& config, const ProblemClass& problem);
LaunchGeometry launch_geometry(const TileConfig& config, const ProblemClass& problem,
                               const RuntimeShape& shape);
std::string grid_formula(const TileConfig& config);
TileConfig default_config(const ProblemClass& problem);
TileConfig default_config_for(const ProblemClass& problem, const RuntimeShape& shape,
                              const ArchInfo& arch);
std::optional<std::string> shape_error(const TileConfig& config, const ProblemClass& problem,
                                       const RuntimeShape& shape);
std::optional<std::string> search_skip(const TileConfig& config, const ProblemClass& problem,
                                       const RuntimeShape& shape);
std::vector<TileConfig> search_seeds(const ProblemClass& problem, const RuntimeShape& shape,
                                     const ArchInfo& arch);
}  // namespace catalog

}  // namespace flashcore::decode_family
