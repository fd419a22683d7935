// The attention problem and the sm80 family's tile configuration (the
// FlashAttention-2 template, attention_fwd). The NVRTC template arguments,
// the launch geometry, the shared-memory budget and the tuning search space
// are derived from here, so a config that passes config_error() is one the
// template can compile. The Hopper family (attention_sm90.hpp) shares
// TileConfig and adds the fields marked below; template_catalog.hpp maps a
// template id to its family's functions.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace flashcore {

enum class DType { fp16, bf16 };

std::string_view dtype_name(DType dtype);                     // "fp16" / "bf16"
std::optional<DType> parse_dtype(std::string_view name);

// Compile-time part of a problem: it selects the cubin.
struct ProblemClass {
  DType dtype = DType::fp16;
  int head_dim = 64;
  bool causal = false;
};

// Run-time part of a problem: kernel arguments, never in the cache key.
struct RuntimeShape {
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t kv_heads = 0;  // 0 = heads
  int64_t seq_q = 1;
  int64_t seq_k = 0;     // 0 = seq_q

  int64_t effective_kv_heads() const { return kv_heads == 0 ? heads : kv_heads; }
  int64_t effective_seq_k() const { return seq_k == 0 ? seq_q : seq_k; }
};

// Where each warp keeps its Q operand between key tiles. `automatic` is the
// family's rule (registers when they cost at most 32 per thread); it is
// resolved before anything is keyed or compiled.
enum class QPlacement { automatic, registers, shared };
// Shared-memory layout of the Q/K/V tiles; `automatic` = swizzled where
// head_dim / 8 is a power of two, else padded.
enum class SmemLayout { automatic, swizzled, padded };

std::string_view q_placement_name(QPlacement placement);  // "auto", "registers", "shared"
std::optional<QPlacement> parse_q_placement(std::string_view name);
std::string_view smem_layout_name(SmemLayout layout);     // "auto", "swizzled", "padded"
std::optional<SmemLayout> parse_smem_layout(std::string_view name);

struct TileConfig {
  int block_m = 128;
  int block_n = 64;
  int warps = 4;
  int stages = 2;
  QPlacement q_placement = QPlacement::automatic;
  SmemLayout smem_layout = SmemLayout::automatic;
  // Hopper family only (the sm80 family rejects them set):
  bool pingpong = false;    // the two consumer warpgroups take turns on the tensor cores
  bool separate_o = false;  // O leaves through its own tile, so the next Q loads under the epilogue
  bool persistent = false;  // grid = min(tiles, multiprocessors); each CTA walks tiles
  // Decode family only (the others reject them set):
  bool fused_combine = false;  // the last split block merges the partials
  int splits = 0;              // key splits; 0 = the family's rule

  int threads() const { return warps * 32; }
  int rows_per_warp() const { return block_m / warps; }
  bool operator==(const TileConfig&) const = default;
};

// `config` with its automatic fields replaced by the family's rule for
// `problem`; every other function below resolves first, so an automatic
// config and its resolved twin are the same kernel with the same key.
TileConfig resolved(const TileConfig& config, const ProblemClass& problem);

// "128x64w4s2" plus "-qreg"/"-qsmem" and "-swz"/"-pad" where given: the
// short label the CLI, logs and benchmarks print.
std::string config_label(const TileConfig& config);
// The inverse of config_label; missing suffixes are automatic. Also accepts
// "BMxBNxWxS" with x separators throughout.
std::optional<TileConfig> parse_config_label(std::string_view label);

struct ArchInfo {
  std::string_view name;      // as NVRTC spells it: "sm_90a"
  int compute_capability;     // 90 for sm_90 and sm_90a
  int max_dynamic_smem_bytes; // opt-in limit per block
};

// Archs the templates target (mma.sync m16n8k16 and cp.async need sm_80+).
const std::array<ArchInfo, 5>& supported_archs();
std::optional<ArchInfo> find_arch(std::string_view name);

inline constexpr std::string_view kAttentionTemplateId = "attention_fwd";
inline constexpr std::array<int, 5> kSupportedHeadDims = {32, 64, 96, 128, 256};

// Dynamic shared memory the template needs: Q tile plus `stages` K and V tiles,
// rows 16 bytes longer in the padded layout.
int smem_bytes(const TileConfig& config, const ProblemClass& problem);

// Each returns nullopt when valid, else "<field>: <reason>" naming the field
// as the RPC spells it, so the reason can go straight into INVALID_ARGUMENT.
std::optional<std::string> problem_class_error(const ProblemClass& problem);
std::optional<std::string> runtime_shape_error(const RuntimeShape& shape);
std::optional<std::string> config_error(const TileConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch);

// "flashcore::attention_fwd<flashcore::fp16_t, 64, false, 128, 64, 4, 2, true, true>"
std::string name_expression(const ProblemClass& problem, const TileConfig& config);

// Canonical "field=value;" text of the compile-time inputs, fixed field order.
std::string canonical_problem_class(const ProblemClass& problem);
std::string canonical_config(const TileConfig& config);

struct Dim3 {
  uint32_t x = 1, y = 1, z = 1;
};

struct LaunchGeometry {
  Dim3 grid;
  Dim3 block;
  uint32_t dynamic_smem_bytes = 0;
};

// One block per (query tile, head, batch); grid.x = ceil(seq_q / block_m).
LaunchGeometry launch_geometry(const TileConfig& config, const ProblemClass& problem,
                               const RuntimeShape& shape);
std::string grid_formula(const TileConfig& config);

}  // namespace flashcore
