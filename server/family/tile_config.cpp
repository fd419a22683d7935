#include "family/tile_config.hpp"

#include <algorithm>
#include <charconv>
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

std::string_view q_placement_name(QPlacement placement) {
  switch (placement) {
    case QPlacement::automatic: return "auto";
    case QPlacement::registers: return "registers";
    case QPlacement::shared: return "shared";
  }
  return "?";
}

std::optional<QPlacement> parse_q_placement(std::string_view name) {
  for (auto p : {QPlacement::automatic, QPlacement::registers, QPlacement::shared})
    if (name == q_placement_name(p)) return p;
  return std::nullopt;
}

std::string_view smem_layout_name(SmemLayout layout) {
  switch (layout) {
    case SmemLayout::automatic: return "auto";
    case SmemLayout::swizzled: return "swizzled";
    case SmemLayout::padded: return "padded";
  }
  return "?";
}

std::optional<SmemLayout> parse_smem_layout(std::string_view name) {
  for (auto l : {SmemLayout::automatic, SmemLayout::swizzled, SmemLayout::padded})
    if (name == smem_layout_name(l)) return l;
  return std::nullopt;
}

TileConfig resolved(const TileConfig& config, const ProblemClass& problem) {
  TileConfig out = config;
  if (out.q_placement == QPlacement::automatic) {
    // Q's fragments cost (rows per warp / 16) * (head_dim / 16) * 4 registers
    // per thread; above 32 they push 128-row D 128 tiles into spills.
    const int rows_per_warp = out.warps > 0 ? out.block_m / out.warps : 0;
    const int q_registers = (rows_per_warp / kMmaRows) * (problem.head_dim / 16) * 4;
    out.q_placement = q_registers <= 32 ? QPlacement::registers : QPlacement::shared;
  }
  if (out.smem_layout == SmemLayout::automatic)
    out.smem_layout = power_of_two(problem.head_dim / 8) ? SmemLayout::swizzled : SmemLayout::padded;
  return out;
}

std::string config_label(const TileConfig& config) {
  std::string label = std::to_string(config.block_m) + "x" + std::to_string(config.block_n) + "w" +
                      std::to_string(config.warps) + "s" + std::to_string(config.stages);
  if (config.q_placement == QPlacement::registers) label += "-qreg";
  if (config.q_placement == QPlacement::shared) label += "-qsmem";
  if (config.smem_layout == SmemLayout::swizzled) label += "-swz";
  if (config.smem_layout == SmemLayout::padded) label += "-pad";
  if (config.pingpong) label += "-pp";
  if (config.separate_o) label += "-so";
  if (config.persistent) label += "-pers";
  if (config.fused_combine) label += "-fused";
  if (config.splits != 0) label += "-k" + std::to_string(config.splits);
  return label;
}

std::optional<TileConfig> parse_config_label(std::string_view label) {
  // Digits only (from_chars takes no sign or space and reports overflow),
  // each suffix at most once per field.
  TileConfig c;
  size_t pos = 0;
  const auto number = [&](int* out) {
    const char* begin = label.data() + pos;
    const auto [end, ec] = std::from_chars(begin, label.data() + label.size(), *out);
    if (ec != std::errc() || end == begin) return false;
    pos += static_cast<size_t>(end - begin);
    return true;
  };
  const auto separator = [&](char named) {
    if (pos >= label.size() || (label[pos] != named && label[pos] != 'x')) return false;
    ++pos;
    return true;
  };
  if (!number(&c.block_m) || !separator('x') || !number(&c.block_n) || !separator('w') ||
      !number(&c.warps) || !separator('s') || !number(&c.stages))
    return std::nullopt;
  bool q_given = false, layout_given = false, pp_given = false, so_given = false,
       pers_given = false, fused_given = false, splits_given = false;
  while (pos < label.size()) {
    if (label[pos] != '-') return std::nullopt;
    const size_t next = label.find('-', pos + 1);
    const std::string_view suffix =
        label.substr(pos + 1, next == std::string_view::npos ? std::string_view::npos : next - pos - 1);
    bool* given = nullptr;
    if (suffix == "qreg" || suffix == "qsmem") {
      c.q_placement = suffix == "qreg" ? QPlacement::registers : QPlacement::shared;
      given = &q_given;
    } else if (suffix == "swz" || suffix == "pad") {
      c.smem_layout = suffix == "swz" ? SmemLayout::swizzled : SmemLayout::padded;
      given = &layout_given;
    } else if (suffix == "pp") {
      c.pingpong = true;
      given = &pp_given;
    } else if (suffix == "so") {
      c.separate_o = true;
      given = &so_given;
    } else if (suffix == "pers") {
      c.persistent = true;
      given = &pers_given;
    } else if (suffix == "fused") {
      c.fused_combine = true;
      given = &fused_given;
    } else if (suffix.size() > 1 && suffix[0] == 'k' &&
               std::all_of(suffix.begin() + 1, suffix.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) &&
               suffix.size() <= 6) {
      c.splits = std::stoi(std::string(suffix.substr(1)));
      given = &splits_given;
    } else {
      return std::nullopt;
    }
    if (*given) return std::nullopt;
    *given = true;
    pos = next == std::string_view::npos ? label.size() : next;
  }
  return c;
}

int smem_bytes(const TileConfig& config, const ProblemClass& problem) {
  // Mirrors SmemTile::kRowElements in kernel_templates/common/sm80_primitives.cuh.
  const bool padded = resolved(config, problem).smem_layout == SmemLayout::padded;
  const int row_bytes = (problem.head_dim + (padded ? 8 : 0)) * kElementBytes;
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
  if (config.pingpong) return field("config.pingpong", "is a field of the Hopper family only");
  if (config.separate_o) return field("config.separate_o", "is a field of the Hopper family only");
  if (config.persistent) return field("config.persistent", "is a field of the Hopper family only");
  if (config.fused_combine)
    return field("config.fused_combine", "is a field of the decode family only");
  if (config.splits != 0) return field("config.splits", "is a field of the decode family only");
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
  if (config.q_placement != QPlacement::automatic && config.q_placement != QPlacement::registers &&
      config.q_placement != QPlacement::shared)
    return field("config.q_placement", "unknown value");
  if (config.smem_layout != SmemLayout::automatic && config.smem_layout != SmemLayout::swizzled &&
      config.smem_layout != SmemLayout::padded)
    return field("config.smem_layout", "unknown value");
  const int chunks = problem.head_dim / 8;
  if (resolved(config, problem).smem_layout == SmemLayout::swizzled && !power_of_two(chunks) &&
      chunks != 12)
    return field("config.smem_layout", "no swizzle is defined for head_dim " +
                                           std::to_string(problem.head_dim) + "; use padded");
  const int smem = smem_bytes(config, problem);
  if (smem > arch.max_dynamic_smem_bytes)
    return field("config", "needs " + std::to_string(smem) + " bytes of shared memory, over " +
                               std::string(arch.name) + "'s limit of " +
                               std::to_string(arch.max_dynamic_smem_bytes));
  return std::nullopt;
}

std::string name_expression(const ProblemClass& problem, const TileConfig& config) {
  const TileConfig c = resolved(config, problem);
  std::ostringstream out;
  out << "flashcore::attention_fwd<"
      << (problem.dtype == DType::fp16 ? "flashcore::fp16_t" : "flashcore::bf16_t") << ", "
      << problem.head_dim << ", " << (problem.causal ? "true" : "false") << ", " << c.block_m
      << ", " << c.block_n << ", " << c.warps << ", " << c.stages << ", "
      << (c.q_placement == QPlacement::registers ? "true" : "false") << ", "
      << (c.smem_layout == SmemLayout::swizzled ? "true" : "false") << ">";
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
      << ";warps=" << config.warps << ";stages=" << config.stages
      << ";q_placement=" << q_placement_name(config.q_placement)
      << ";smem_layout=" << smem_layout_name(config.smem_layout) << ";";
  // Hopper fields only when set, so every sm80 key stays what it was.
  if (config.pingpong) out << "pingpong=1;";
  if (config.separate_o) out << "separate_o=1;";
  if (config.persistent) out << "persistent=1;";
  if (config.fused_combine) out << "fused_combine=1;";
  if (config.splits != 0) out << "splits=" << config.splits << ";";
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
