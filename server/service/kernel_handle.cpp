#include "service/kernel_handle.hpp"

#include <cstddef>
#include <type_traits>

#include "common/attention_params.cuh"
#include "cache/cache_key.hpp"
#include "common/digest.hpp"
#include "common/attention_tma_params.cuh"
#include "decode/decode_params.cuh"
#include "family/attention_decode.hpp"
#include "family/attention_sm90.hpp"
#include "family/template_catalog.hpp"

namespace flashcore::service {
namespace {

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

}  // namespace flashcore::service
