#include "rpc/translate.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>

#include "cache/cache_key.hpp"
#include "common/attention_params.cuh"
#include "common/attention_tma_params.cuh"
#include "decode/decode_params.cuh"
#include "common/digest.hpp"
#include "family/attention_decode.hpp"
#include "family/attention_sm90.hpp"
#include "family/template_catalog.hpp"

namespace flashcore::rpc {
namespace {

Error invalid(std::string message) {
  return make_error(ErrorCode::invalid_argument, std::move(message));
}

std::string supported_arch_list() {
  std::string list;
  for (const auto& arch : supported_archs()) {
    if (!list.empty()) list += ", ";
    list += arch.name;
  }
  return list;
}

std::string template_list() {
  std::string list;
  for (const auto& info : template_catalog()) {
    if (!list.empty()) list += ", ";
    list += info.id;
  }
  return list;
}

Result<DType> parse_proto_dtype(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FP16: return DType::fp16;
    case v1::DTYPE_BF16: return DType::bf16;
    case v1::DTYPE_UNSPECIFIED:
      return invalid("problem.dtype: must be set (DTYPE_FP16 or DTYPE_BF16)");
    default:
      return invalid("problem.dtype: unknown enum value " +
                     std::to_string(static_cast<int>(dtype)));
  }
}

RuntimeShape shape_of(const v1::Problem& problem) {
  RuntimeShape shape;
  shape.batch = problem.batch();
  shape.heads = problem.heads();
  shape.kv_heads = problem.kv_heads();
  shape.seq_q = problem.seq_q();
  shape.seq_k = problem.seq_k();
  return shape;
}

Status check_layout(v1::Layout layout) {
  if (!v1::Layout_IsValid(layout))
    return invalid("problem.layout: unknown enum value " +
                   std::to_string(static_cast<int>(layout)));
  return ok_status();
}

void fill_dim3(const Dim3& dim, v1::Dim3* out) {
  out->set_x(dim.x);
  out->set_y(dim.y);
  out->set_z(dim.z);
}

// The ABI type name of a params member, derived from its C++ type so the
// table below cannot say "i32" for a long long.
template <typename T>
constexpr const char* abi_type() {
  if constexpr (std::is_pointer_v<T>) return "ptr";
  else if constexpr (std::is_same_v<T, long long>) return "i64";
  else if constexpr (std::is_same_v<T, int>) return "i32";
  else if constexpr (std::is_same_v<T, float>) return "f32";
  else static_assert(!sizeof(T), "AttentionParams member of a type the ABI cannot name");
}

std::string truncated(const std::string& detail) {
  if (detail.size() <= kMaxStatusDetailBytes) return detail;
  return detail.substr(0, kMaxStatusDetailBytes) + "\n... (" +
         std::to_string(detail.size() - kMaxStatusDetailBytes) + " more bytes)";
}

}  // namespace

void fill_problem(const ProblemClass& problem, const RuntimeShape& shape, v1::Layout layout,
                  v1::Problem* out) {
  out->set_dtype(to_proto(problem.dtype));
  out->set_head_dim(problem.head_dim);
  out->set_causal(problem.causal);
  out->set_batch(shape.batch);
  out->set_heads(shape.heads);
  out->set_kv_heads(shape.kv_heads);
  out->set_seq_q(shape.seq_q);
  out->set_seq_k(shape.seq_k);
  out->set_layout(layout);
}

void fill_config(const TileConfig& config, v1::TileConfig* out) {
  out->set_block_m(config.block_m);
  out->set_block_n(config.block_n);
  out->set_warps(config.warps);
  out->set_stages(config.stages);
  switch (config.q_placement) {
    case QPlacement::automatic: out->set_q_placement(v1::Q_PLACEMENT_UNSPECIFIED); break;
    case QPlacement::registers: out->set_q_placement(v1::Q_PLACEMENT_REGISTERS); break;
    case QPlacement::shared: out->set_q_placement(v1::Q_PLACEMENT_SHARED); break;
  }
  switch (config.smem_layout) {
    case SmemLayout::automatic: out->set_smem_layout(v1::SMEM_LAYOUT_UNSPECIFIED); break;
    case SmemLayout::swizzled: out->set_smem_layout(v1::SMEM_LAYOUT_SWIZZLED); break;
    case SmemLayout::padded: out->set_smem_layout(v1::SMEM_LAYOUT_PADDED); break;
  }
  out->set_pingpong(config.pingpong);
  out->set_separate_o(config.separate_o);
  out->set_persistent(config.persistent);
  out->set_fused_combine(config.fused_combine);
  out->set_splits(config.splits);
}

Result<TileConfig> parse_config(const v1::TileConfig& config) {
  TileConfig out;
  out.block_m = config.block_m();
  out.block_n = config.block_n();
  out.warps = config.warps();
  out.stages = config.stages();
  switch (config.q_placement()) {
    case v1::Q_PLACEMENT_UNSPECIFIED: out.q_placement = QPlacement::automatic; break;
    case v1::Q_PLACEMENT_REGISTERS: out.q_placement = QPlacement::registers; break;
    case v1::Q_PLACEMENT_SHARED: out.q_placement = QPlacement::shared; break;
    default:
      return invalid("config.q_placement: unknown enum value " +
                     std::to_string(static_cast<int>(config.q_placement())));
  }
  switch (config.smem_layout()) {
    case v1::SMEM_LAYOUT_UNSPECIFIED: out.smem_layout = SmemLayout::automatic; break;
    case v1::SMEM_LAYOUT_SWIZZLED: out.smem_layout = SmemLayout::swizzled; break;
    case v1::SMEM_LAYOUT_PADDED: out.smem_layout = SmemLayout::padded; break;
    default:
      return invalid("config.smem_layout: unknown enum value " +
                     std::to_string(static_cast<int>(config.smem_layout())));
  }
  out.pingpong = config.pingpong();
  out.separate_o = config.separate_o();
  out.persistent = config.persistent();
  out.fused_combine = config.fused_combine();
  out.splits = config.splits();
  return out;
}

v1::DType to_proto(DType dtype) { return dtype == DType::fp16 ? v1::DTYPE_FP16 : v1::DTYPE_BF16; }

v1::CacheTier to_proto(CacheTier tier) {
  switch (tier) {
    case CacheTier::memory: return v1::CACHE_TIER_MEMORY;
    case CacheTier::disk: return v1::CACHE_TIER_DISK;
    case CacheTier::compiled: return v1::CACHE_TIER_COMPILED;
    case CacheTier::shared: return v1::CACHE_TIER_SHARED;
  }
  return v1::CACHE_TIER_UNSPECIFIED;
}

namespace {
Result<CompileRequest> parse_kernel(const v1::KernelRequest& request, std::string_view default_arch,
                                    bool with_config);
}  // namespace

Result<CompileRequest> parse_kernel_request(const v1::KernelRequest& request,
                                            std::string_view default_arch) {
  return parse_kernel(request, default_arch, /*with_config=*/true);
}

Result<CompileRequest> parse_tuning_target(const v1::KernelRequest& request,
                                           std::string_view default_arch) {
  return parse_kernel(request, default_arch, /*with_config=*/false);
}

namespace {
Result<CompileRequest> parse_kernel(const v1::KernelRequest& request, std::string_view default_arch,
                                    bool with_config) {
  // Empty: the daemon picks the family (below); a config belongs to a family.
  if (request.template_id().empty() && with_config && request.has_config())
    return invalid("template_id: must be set when a config is given (known: " + template_list() +
                   ")");
  if (!request.template_id().empty() && find_template(request.template_id()) == nullptr)
    return invalid("template_id: unknown template '" + request.template_id() +
                   "' (known: " + template_list() + ")");

  CompileRequest parsed;
  parsed.spec.template_id = request.template_id();

  const v1::Problem& problem = request.problem();
  auto dtype = parse_proto_dtype(problem.dtype());
  if (!dtype) return dtype.error();
  parsed.spec.problem.dtype = *dtype;
  parsed.spec.problem.head_dim = problem.head_dim();
  parsed.spec.problem.causal = problem.causal();
  if (auto error = problem_class_error(parsed.spec.problem)) return invalid(*error);

  parsed.shape = shape_of(problem);
  if (auto error = runtime_shape_error(parsed.shape)) return invalid(*error);
  if (auto layout = check_layout(problem.layout()); !layout) return layout.error();
  parsed.layout = problem.layout();

  parsed.spec.arch = request.arch().empty() ? std::string(default_arch) : request.arch();
  parsed.spec.line_info = request.line_info();
  parsed.cached_key = request.cached_key();
  const auto arch = find_arch(parsed.spec.arch);
  if (!arch)
    return invalid("arch: '" + parsed.spec.arch + "' is not supported (" + supported_arch_list() +
                   ")");

  // No family named: decode for a few query rows (when the client launches
  // multi-kernel handles), else the Hopper family on sm_90a where it has the
  // head dim, else the sm80 family. The handle's template_id says which.
  if (parsed.spec.template_id.empty()) {
    const int d = parsed.spec.problem.head_dim;
    if (request.accepts_multi_kernel() && decode_family::serves(parsed.spec.problem, parsed.shape))
      parsed.spec.template_id = std::string(decode_family::kTemplateId);
    else if (parsed.spec.arch == "sm_90a" &&
             std::find(sm90_family::kHeadDims.begin(), sm90_family::kHeadDims.end(), d) !=
                 sm90_family::kHeadDims.end())
      parsed.spec.template_id = std::string(sm90_family::kTemplateId);
    else
      parsed.spec.template_id = std::string(kAttentionTemplateId);
  }

  // An absent config is the default tile; a present one is taken field by
  // field, so a forgotten field shows up as an error rather than a guess.
  if (!with_config) return parsed;
  const TemplateInfo& family = template_info(parsed.spec.template_id);
  if (family.extra_name_expressions != nullptr && !request.accepts_multi_kernel())
    return make_error(ErrorCode::failed_precondition,
                      "template_id: '" + parsed.spec.template_id +
                          "' is launched as several kernels with a workspace (KernelHandle.steps, "
                          ".workspace); a client that handles them sets accepts_multi_kernel");
  if (request.has_config()) {
    auto config = parse_config(request.config());
    if (!config) return config.error();
    parsed.spec.config = *config;
  } else if (family.default_config_for != nullptr) {
    parsed.spec.config = family.default_config_for(parsed.spec.problem, parsed.shape, *arch);
  } else {
    parsed.spec.config = family.default_config(parsed.spec.problem);
  }
  if (auto error = family.config_error(parsed.spec.config, parsed.spec.problem, *arch))
    return invalid(*error);
  if (family.shape_error != nullptr)
    if (auto error = family.shape_error(parsed.spec.config, parsed.spec.problem, parsed.shape))
      return invalid(*error);
  // Keyed, compiled and answered with concrete values.
  parsed.spec.config = family.resolve(parsed.spec.config, parsed.spec.problem);
  return parsed;
}
}  // namespace

Result<CompileRequest> parse_validate_request(const v1::ValidateRequest& request,
                                              std::string_view default_arch) {
  auto parsed = parse_kernel_request(request.kernel(), default_arch);
  if (!parsed) {
    Error error = parsed.error();
    error.message = "kernel." + error.message;
    return error;
  }
  const v1::ValidationOptions& options = request.options();
  const auto repeats = [](const char* field, int value) -> Status {
    if (value < 0 || value > kMaxValidationRepeats)
      return invalid(std::string("options.") + field + ": " + std::to_string(value) +
                     " must be in [0, " + std::to_string(kMaxValidationRepeats) + "] (0 = default)");
    return ok_status();
  };
  if (Status s = repeats("determinism_runs", options.determinism_runs()); !s) return s.error();
  if (Status s = repeats("stability_trials", options.stability_trials()); !s) return s.error();
  if (options.reference_rows() < 0)
    return invalid("options.reference_rows: " + std::to_string(options.reference_rows()) +
                   " must be >= 0 (0 = every row)");
  const double tolerance = options.rel_tolerance();
  if (!std::isfinite(tolerance) || tolerance < 0.0 || tolerance >= 1.0)
    return invalid("options.rel_tolerance: " + std::to_string(tolerance) +
                   " must be in [0, 1) (0 = the dtype's default)");
  const double max_abs = options.max_abs_tolerance();
  if (!std::isfinite(max_abs) || max_abs < 0.0 || max_abs >= 1.0)
    return invalid("options.max_abs_tolerance: " + std::to_string(max_abs) +
                   " must be in [0, 1) (0 = the dtype's default)");
  return parsed;
}

void fill_eval_kernel(const v1::KernelHandle& handle, v1::EvalKernel* kernel) {
  kernel->set_key(handle.key());
  kernel->set_lowered_name(handle.lowered_name());
  kernel->set_cubin(handle.cubin());
  *kernel->mutable_config() = handle.config();
  kernel->set_block_threads(handle.launch().block().x() * handle.launch().block().y() *
                            handle.launch().block().z());
  kernel->set_dynamic_smem_bytes(handle.launch().dynamic_smem_bytes());
  kernel->set_abi_version(handle.abi().abi_version());
  *kernel->mutable_resources() = handle.resources();
  for (const auto& step : handle.steps())
    if (step.role() == "combine") kernel->set_combine_lowered_name(step.lowered_name());
}

Result<RuntimeShape> parse_shape_for(const v1::Problem& problem, const KernelSpec& spec) {
  auto dtype = parse_proto_dtype(problem.dtype());
  if (!dtype) return dtype.error();
  if (*dtype != spec.problem.dtype)
    return invalid("problem.dtype: " + std::string(dtype_name(*dtype)) + " does not match the " +
                   std::string(dtype_name(spec.problem.dtype)) + " kernel");
  if (problem.head_dim() != spec.problem.head_dim)
    return invalid("problem.head_dim: " + std::to_string(problem.head_dim()) +
                   " does not match the kernel's " + std::to_string(spec.problem.head_dim));
  if (problem.causal() != spec.problem.causal)
    return invalid(std::string("problem.causal: ") + (problem.causal() ? "true" : "false") +
                   " does not match the kernel's " + (spec.problem.causal ? "true" : "false"));
  RuntimeShape shape = shape_of(problem);
  if (auto error = runtime_shape_error(shape)) return invalid(*error);
  if (auto layout = check_layout(problem.layout()); !layout) return layout.error();
  if (const TemplateInfo* family = find_template(spec.template_id);
      family != nullptr && family->shape_error != nullptr)
    if (auto error = family->shape_error(spec.config, spec.problem, shape)) return invalid(*error);
  return shape;
}

namespace {
void add_abi_field(v1::KernelAbi* abi, const std::string& name, size_t offset, size_t size,
                   const char* type) {
  v1::AbiField* field = abi->add_fields();
  field->set_name(name);
  field->set_offset(static_cast<uint32_t>(offset));
  field->set_size(static_cast<uint32_t>(size));
  field->set_type(type);
}

// AttentionParams' fields at `base` within the params struct, named with `prefix`.
void add_attention_fields(v1::KernelAbi* abi, size_t base, const std::string& prefix) {
  auto add = [abi, base, &prefix](const char* name, size_t offset, size_t size, const char* type) {
    add_abi_field(abi, prefix + name, base + offset, size, type);
  };
#define FLASHCORE_ABI_FIELD(member)                                                \
  add(#member, offsetof(AttentionParams, member), sizeof(AttentionParams::member), \
      abi_type<decltype(AttentionParams::member)>())
  FLASHCORE_ABI_FIELD(q);
  FLASHCORE_ABI_FIELD(k);
  FLASHCORE_ABI_FIELD(v);
  FLASHCORE_ABI_FIELD(o);
  FLASHCORE_ABI_FIELD(lse);
  FLASHCORE_ABI_FIELD(q_batch_stride);
  FLASHCORE_ABI_FIELD(q_head_stride);
  FLASHCORE_ABI_FIELD(q_row_stride);
  FLASHCORE_ABI_FIELD(k_batch_stride);
  FLASHCORE_ABI_FIELD(k_head_stride);
  FLASHCORE_ABI_FIELD(k_row_stride);
  FLASHCORE_ABI_FIELD(v_batch_stride);
  FLASHCORE_ABI_FIELD(v_head_stride);
  FLASHCORE_ABI_FIELD(v_row_stride);
  FLASHCORE_ABI_FIELD(o_batch_stride);
  FLASHCORE_ABI_FIELD(o_head_stride);
  FLASHCORE_ABI_FIELD(o_row_stride);
  FLASHCORE_ABI_FIELD(batch);
  FLASHCORE_ABI_FIELD(heads);
  FLASHCORE_ABI_FIELD(kv_heads);
  FLASHCORE_ABI_FIELD(seq_q);
  FLASHCORE_ABI_FIELD(seq_k);
  FLASHCORE_ABI_FIELD(softmax_scale);
  FLASHCORE_ABI_FIELD(softmax_scale_log2);
#undef FLASHCORE_ABI_FIELD
}
}  // namespace

void fill_abi(v1::KernelAbi* abi) {
  abi->set_params_struct("flashcore::AttentionParams");
  abi->set_abi_version(FLASHCORE_ATTENTION_ABI_VERSION);
  abi->set_params_size(sizeof(AttentionParams));
  add_attention_fields(abi, 0, "");
}

void fill_tma_abi(const KernelSpec& spec, v1::KernelAbi* abi) {
  abi->set_params_struct("flashcore::AttentionTmaParams");
  abi->set_abi_version(FLASHCORE_ATTENTION_TMA_ABI_VERSION);
  abi->set_params_size(sizeof(AttentionTmaParams));
  struct Operand {
    const char* name;
    size_t offset;
    bool kv;
  };
  const Operand operands[] = {{"q", offsetof(AttentionTmaParams, q), false},
                              {"k", offsetof(AttentionTmaParams, k), true},
                              {"v", offsetof(AttentionTmaParams, v), true},
                              {"o", offsetof(AttentionTmaParams, o), false}};
  for (const Operand& op : operands) {
    add_abi_field(abi, op.name, op.offset, sizeof(TmaDescriptor), "tensormap");

    // cuTensorMapEncodeTiled's arguments; the enum values are cuda.h's.
    v1::TensorMapRecipe* map = abi->add_tensor_maps();
    const std::string name = op.name;
    map->set_operand(name);
    map->set_params_offset(static_cast<uint32_t>(op.offset));
    map->set_global_address("attn." + name);
    map->set_data_type(spec.problem.dtype == DType::fp16 ? 6u /* FLOAT16 */ : 9u /* BFLOAT16 */);
    map->set_rank(4);
    for (const char* dim : {"head_dim", op.kv ? "seq_k" : "seq_q", op.kv ? "kv_heads" : "heads",
                            "batch"})
      map->add_global_dims(dim);
    for (const char* stride : {"row_stride", "head_stride", "batch_stride"})
      map->add_global_strides_bytes("attn." + name + "_" + stride + "*2");
    map->add_box_dims(sm90_family::kTmaColumns);
    map->add_box_dims(op.kv ? static_cast<uint32_t>(spec.config.block_n) : sm90_family::kQRows);
    map->add_box_dims(1);
    map->add_box_dims(1);
    for (int i = 0; i < 4; ++i) map->add_element_strides(1);
    map->set_interleave(0);    // CU_TENSOR_MAP_INTERLEAVE_NONE
    map->set_swizzle(3);       // CU_TENSOR_MAP_SWIZZLE_128B
    map->set_l2_promotion(3);  // CU_TENSOR_MAP_L2_PROMOTION_L2_256B
    map->set_oob_fill(0);      // CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: zeros past the tensor
  }
  add_attention_fields(abi, offsetof(AttentionTmaParams, attn), "attn.");
}

void fill_decode_launch(const CachedKernel& kernel, const RuntimeShape& shape,
                        v1::KernelHandle* handle) {
  v1::KernelAbi* abi = handle->mutable_abi();
  abi->set_params_struct("flashcore::DecodeParams");
  abi->set_abi_version(decode_family::kAbiVersion);
  abi->set_params_size(sizeof(DecodeParams));
#define FLASHCORE_DECODE_FIELD(member)                                                 \
  add_abi_field(abi, #member, offsetof(DecodeParams, member), sizeof(DecodeParams::member), \
                abi_type<decltype(DecodeParams::member)>())
  FLASHCORE_DECODE_FIELD(q);
  FLASHCORE_DECODE_FIELD(k);
  FLASHCORE_DECODE_FIELD(v);
  FLASHCORE_DECODE_FIELD(o);
  FLASHCORE_DECODE_FIELD(lse);
  FLASHCORE_DECODE_FIELD(o_partial);
  FLASHCORE_DECODE_FIELD(lse_partial);
  FLASHCORE_DECODE_FIELD(split_counters);
  FLASHCORE_DECODE_FIELD(q_batch_stride);
  FLASHCORE_DECODE_FIELD(q_head_stride);
  FLASHCORE_DECODE_FIELD(q_row_stride);
  FLASHCORE_DECODE_FIELD(k_batch_stride);
  FLASHCORE_DECODE_FIELD(k_head_stride);
  FLASHCORE_DECODE_FIELD(k_row_stride);
  FLASHCORE_DECODE_FIELD(v_batch_stride);
  FLASHCORE_DECODE_FIELD(v_head_stride);
  FLASHCORE_DECODE_FIELD(v_row_stride);
  FLASHCORE_DECODE_FIELD(o_batch_stride);
  FLASHCORE_DECODE_FIELD(o_head_stride);
  FLASHCORE_DECODE_FIELD(o_row_stride);
  FLASHCORE_DECODE_FIELD(batch);
  FLASHCORE_DECODE_FIELD(heads);
  FLASHCORE_DECODE_FIELD(kv_heads);
  FLASHCORE_DECODE_FIELD(seq_q);
  FLASHCORE_DECODE_FIELD(seq_k);
  FLASHCORE_DECODE_FIELD(num_splits);
  FLASHCORE_DECODE_FIELD(softmax_scale);
  FLASHCORE_DECODE_FIELD(softmax_scale_log2);
#undef FLASHCORE_DECODE_FIELD

  const decode_family::DecodeConfig config = decode_family::from_tile(kernel.spec.config);
  const decode_family::DecodeLaunch launch = decode_family::launch(
      config, kernel.spec.problem, shape, decode_family::kHandleSmCount);
  handle->set_num_splits(launch.num_splits);
  auto add_step = [&](const char* role, const std::string& name, const std::string& lowered,
                      const LaunchGeometry& geometry, const char* when) {
    v1::KernelStep* step = handle->add_steps();
    step->set_role(role);
    step->set_name_expression(name);
    step->set_lowered_name(lowered);
    fill_dim3(geometry.grid, step->mutable_launch()->mutable_grid());
    fill_dim3(geometry.block, step->mutable_launch()->mutable_block());
    step->mutable_launch()->set_dynamic_smem_bytes(geometry.dynamic_smem_bytes);
    step->set_when(when);
  };
  const CompiledKernel& compiled = kernel.compiled;
  add_step("split", compiled.name_expression, compiled.lowered_name, launch.split, "always");
  if (!config.fused_combine && !compiled.extra_kernels.empty()) {
    LaunchGeometry combine;
    if (launch.combine) combine = *launch.combine;
    else combine.block.x = kDecodeCombineThreads;  // not needed at this shape's splits
    add_step("combine", compiled.extra_kernels.front().first,
             compiled.extra_kernels.front().second, combine, "num_splits > 1");
  }
  v1::Workspace* workspace = handle->mutable_workspace();
  workspace->set_bytes(launch.workspace_bytes);
  workspace->set_layout(
      "when num_splits > 1: split_counters (u32 [batch, kv_heads]) at offset 0, then o_partial "
      "(fp32 [batch, heads, seq_q, num_splits, head_dim]), then lse_partial (fp32 [batch, heads, "
      "seq_q, num_splits]), each at a 256-byte aligned offset (decode_workspace_bytes in "
      "decode/decode_params.cuh); the counters must be zero before a launch and the kernels "
      "leave them zero, so a workspace reused for another shape is zeroed again only when the "
      "call needs more counters than were zeroed before");
  workspace->set_zero_before_first_use(config.fused_combine);
}

void fill_handle(const CachedKernel& kernel, CacheTier tier, const RuntimeShape& shape,
                 v1::Layout layout, bool omit_cubin, v1::KernelHandle* handle) {
  const CompiledKernel& compiled = kernel.compiled;
  handle->set_key(kernel.key);
  handle->set_template_id(kernel.spec.template_id);
  handle->set_name_expression(compiled.name_expression);
  handle->set_lowered_name(compiled.lowered_name);
  if (!omit_cubin) handle->set_cubin(compiled.cubin);
  handle->set_cubin_size(compiled.cubin.empty() ? kernel.cubin_size : compiled.cubin.size());
  if (!kernel.cubin_sha256.empty()) handle->set_cubin_sha256(kernel.cubin_sha256);
  else if (!compiled.cubin.empty()) handle->set_cubin_sha256(sha256_hex(compiled.cubin));
  handle->set_arch(kernel.spec.arch);
  fill_problem(kernel.spec.problem, shape, layout, handle->mutable_problem());
  fill_config(kernel.spec.config, handle->mutable_config());

  const TemplateInfo& family = template_info(kernel.spec.template_id);
  const LaunchGeometry geometry =
      family.launch_geometry(kernel.spec.config, kernel.spec.problem, shape);
  v1::LaunchGeometry* launch = handle->mutable_launch();
  fill_dim3(geometry.grid, launch->mutable_grid());
  fill_dim3(geometry.block, launch->mutable_block());
  launch->set_dynamic_smem_bytes(geometry.dynamic_smem_bytes);
  launch->set_grid_formula(family.grid_formula(kernel.spec.config));

  const ResourceReport& r = compiled.resources;
  v1::ResourceReport* resources = handle->mutable_resources();
  resources->set_registers(r.registers);
  resources->set_static_smem_bytes(r.static_smem_bytes);
  resources->set_spill_store_bytes(r.spill_store_bytes);
  resources->set_spill_load_bytes(r.spill_load_bytes);
  resources->set_stack_frame_bytes(r.stack_frame_bytes);
  resources->set_constant_bytes(r.constant_bytes);
  resources->set_ptxas_log(r.ptxas_log);

  if (family.abi_version == FLASHCORE_ATTENTION_TMA_ABI_VERSION)
    fill_tma_abi(kernel.spec, handle->mutable_abi());
  else if (family.abi_version == decode_family::kAbiVersion)
    fill_decode_launch(kernel, shape, handle);
  else
    fill_abi(handle->mutable_abi());

  v1::Toolchain* toolchain = handle->mutable_toolchain();
  toolchain->set_nvrtc_version(compiled.toolchain.nvrtc_version);
  toolchain->set_template_source_hash(compiled.toolchain.template_source_hash);
  toolchain->set_cache_format_version(kCacheFormatVersion);
  for (const auto& option : compiled.toolchain.options) toolchain->add_options(option);

  handle->set_compile_ms(compiled.compile_ms);
  handle->set_tier(to_proto(tier));
}

void fill_summary(const CachedKernel& kernel, v1::KernelSummary* summary) {
  summary->set_key(kernel.key);
  summary->set_template_id(kernel.spec.template_id);
  summary->set_arch(kernel.spec.arch);
  fill_problem(kernel.spec.problem, kernel.first_shape, v1::LAYOUT_UNSPECIFIED,
               summary->mutable_problem());
  fill_config(kernel.spec.config, summary->mutable_config());
  summary->set_cubin_size(kernel.compiled.cubin.empty() ? kernel.cubin_size
                                                        : kernel.compiled.cubin.size());
  summary->set_registers(kernel.compiled.resources.registers);
  summary->set_spill_store_bytes(kernel.compiled.resources.spill_store_bytes);
  summary->set_compile_ms(kernel.compiled.compile_ms);
  summary->set_created_unix_ms(kernel.created_unix_ms);
}

grpc::Status bounded_status(const grpc::Status& status) {
  if (status.ok()) return status;
  std::string message;
  const std::string& in = status.error_message();
  message.reserve(std::min(in.size(), kMaxStatusMessageBytes) + 32);
  size_t i = 0;
  for (; i < in.size() && message.size() < kMaxStatusMessageBytes; ++i) {
    const auto c = static_cast<unsigned char>(in[i]);
    if (c < 0x20 && c != '\n' && c != '\t') {
      static constexpr char kHex[] = "0123456789abcdef";
      message += "\\x";
      message += kHex[c >> 4];
      message += kHex[c & 15];
    } else {
      message += static_cast<char>(c);
    }
  }
  if (i < in.size()) message += "... (" + std::to_string(in.size() - i) + " more bytes)";
  std::string details = status.error_details();
  if (details.size() > kMaxStatusDetailBytes) details.resize(kMaxStatusDetailBytes);
  return grpc::Status(status.error_code(), message, details);
}

grpc::Status to_grpc_status(const Error& error) {
  if (error.detail.empty()) return grpc::Status(to_grpc_code(error.code), error.message);
  const std::string detail = truncated(error.detail);
  return grpc::Status(to_grpc_code(error.code), error.message + "\n" + detail, detail);
}

}  // namespace flashcore::rpc
