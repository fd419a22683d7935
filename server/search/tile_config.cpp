#include "search/tile_config.hpp"

#include <algorithm>
#include <sstream>

namespace flashcore {
namespace {

constexpr int kElementBytes = 2;  // fp16 and bf16
constexpr int kMmaRows = 16;      // mma.sync m16n8k16: a warp's row granule
constexpr int kMmaK = 16;

// Grid limits of every supported arch: y and z are 16-bit.
constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxSeq = int64_t{1} << 30;

std::string field(std::string_view name, const std::string& reason) {
  return std::string(name) + ": " + reason;
}

bool power_of_two(int v) { return v > 0 && (v & (v - 1)) == 0; }

}  // namespace

std::string_view dtype_name(DType dtype) { return dtype == DType::fp16 ? "fp16" : "bf16"; }

std::optional<DType> parse_dtype(std::string_view name) {
  if (name == "fp16" || name == "float16" || name == "half") return DType::fp16;
  if (name == "bf16" || name == "bfloat16") return DType::bf16;
  return std::nullopt;
}

const std::array<ArchInfo, 5>& supported_archs() {
  // Opt-in dynamic shared memory per block, from the CUDA programming guide's
  // compute-capability table (KB * 1024 minus the 1 KB the system reserves).
  static const std::array<ArchInfo, 5> archs = {{
      {"sm_80", 80, 163 * 1024},
      {"sm_86", 86, 99 * 1024},
      {"sm_89", 89, 99 * 1024},
      {"sm_90", 90, 227 * 1024},
      {"sm_90a", 90, 227 * 1024},
  }};
  return archs;
}

std::optional<ArchInfo> find_arch(std::string_view name) {
  for (const auto& arch : supported_archs())
    if (arch.name == name) return arch;
  return std::nullopt;
}

int smem_bytes(const TileConfig& config, const ProblemClass& problem) {
  // Mirrors SwizzledTile::kRowElements in kernel_templates/common/sm80_primitives.cuh.
  const int chunks = problem.head_dim / 8;
  const bool swizzled = (chunks & (chunks - 1)) == 0;
  const int row_bytes = (problem.head_dim + (swizzled ? 0 : 8)) * kElementBytes;
  return config.block_m * row_bytes + 2 * config.stages * config.block_n * row_bytes;
}

std::optional<std::string> problem_class_error(const ProblemClass& problem) {
  if (std::find(kSupportedHeadDims.begin(), kSupportedHeadDims.end(), problem.head_dim) ==
      kSupportedHeadDims.end()) {
    return field("problem.head_dim",
                 std::to_string(problem.head_dim) + " is not supported (32, 64, 96, 128 or 256)");
  }
  return std::nullopt;
}

std::optional<std::string> runtime_shape_error(const RuntimeShape& shape) {
  if (shape.batch < 1) return field("problem.batch", std::to_string(shape.batch) + " must be >= 1");
  if (shape.batch > kMaxGridYZ)
    return field("problem.batch", std::to_string(shape.batch) + " exceeds the grid limit 65535");
  if (shape.heads < 1) return field("problem.heads", std::to_string(shape.heads) + " must be >= 1");
  if (shape.heads > kMaxGridYZ)
    return field("problem.heads", std::to_string(shape.heads) + " exceeds the grid limit 65535");
  if (shape.kv_heads < 0)
    return field("problem.kv_heads", std::to_string(shape.kv_heads) + " must be >= 0");
  if (shape.kv_heads > 0 && shape.heads % shape.kv_heads != 0)
    return field("problem.kv_heads", std::to_string(shape.kv_heads) + " does not divide heads " +
                                         std::to_string(shape.heads));
  if (shape.seq_q < 1) return field("problem.seq_q", std::to_string(shape.seq_q) + " must be >= 1");
  if (shape.seq_q > kMaxSeq)
    return field("problem.seq_q", std::to_string(shape.seq_q) + " exceeds 2^30");
  if (shape.seq_k < 0)
    return field("problem.seq_k", std::to_string(shape.seq_k) + " must be >= 1 (or 0 for seq_q)");
  if (shape.seq_k > kMaxSeq)
    return field("problem.seq_k", std::to_string(shape.seq_k) + " exceeds 2^30");
  return std::nullopt;
}

std::optional<std::string> config_error(const TileConfig& config, const ProblemClass& problem,
                                        const ArchInfo& arch) {
  if (config.warps < 1 || config.warps > 16 || !power_of_two(config.warps))
    return field("config.warps", std::to_string(config.warps) + " must be 1, 2, 4, 8 or 16");
  if (config.block_m < kMmaRows || config.block_m > 256 || config.block_m % kMmaRows != 0)
    return field("config.block_m",
                 std::to_string(config.block_m) + " must be a multiple of 16 in [16, 256]");
  if (config.block_m % (config.warps * kMmaRows) != 0)
    return field("config.block_m", std::to_string(config.block_m) +
                                       " is not divisible into 16-row slices for " +
                                       std::to_string(config.warps) + " warps");
  if (config.block_n < kMmaK || config.block_n > 256 || config.block_n % kMmaK != 0)
    return field("config.block_n",
                 std::to_string(config.block_n) + " must be a multiple of 16 in [16, 256]");
  if (config.stages < 1 || config.stages > 4)
    return field("config.stages", std::to_string(config.stages) + " must be in [1, 4]");
  const int smem = smem_bytes(config, problem);
  if (smem > arch.max_dynamic_smem_bytes)
    return field("config", "needs " + std::to_string(smem) + " bytes of shared memory, over " +
                               std::string(arch.name) + "'s limit of " +
                               std::to_string(arch.max_dynamic_smem_bytes));
  return std::nullopt;
}

std::string name_expression(const ProblemClass& problem, const TileConfig& config) {
  std::ostringstream out;
  out << "flashcore::attention_fwd<"
      << (problem.dtype == DType::fp16 ? "flashcore::fp16_t" : "flashcore::bf16_t") << ", "
      << problem.head_dim << ", " << (problem.causal ? "true" : "false") << ", " << config.block_m
      << ", " << config.block_n << ", " << config.warps << ", " << config.stages << ">";
  return out.str();
}

std::string canonical_problem_class(const ProblemClass& problem) {
  std::ostringstream out;
  out << "dtype=" << dtype_name(problem.dtype) << ";head_dim=" << problem.head_dim
      << ";causal=" << (problem.causal ? 1 : 0) << ";";
  return out.str();
}

std::string canonical_config(const TileConfig& config) {
  std::ostringstream out;
  out << "block_m=" << config.block_m << ";block_n=" << config.block_n
      << ";warps=" << config.warps << ";stages=" << config.stages << ";";
  return out.str();
}

LaunchGeometry launch_geometry(const TileConfig& config, const ProblemClass& problem,
                               const RuntimeShape& shape) {
  LaunchGeometry geometry;
  geometry.grid.x = static_cast<uint32_t>((shape.seq_q + config.block_m - 1) / config.block_m);
  geometry.grid.y = static_cast<uint32_t>(shape.heads);
  geometry.grid.z = static_cast<uint32_t>(shape.batch);
  geometry.block.x = static_cast<uint32_t>(config.threads());
  geometry.dynamic_smem_bytes = static_cast<uint32_t>(smem_bytes(config, problem));
  return geometry;
}

std::string grid_formula(const TileConfig& config) {
  return "x=ceil_div(seq_q," + std::to_string(config.block_m) + ");y=heads;z=batch";
}

}  // namespace flashcore
