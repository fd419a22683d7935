#include "rpc/translate.hpp"

#include <algorithm>
#include <cmath>

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

std::string truncated(const std::string& detail) {
  if (detail.size() <= kMaxStatusDetailBytes) return detail;
  return detail.substr(0, kMaxStatusDetailBytes) + "\n... (" +
         std::to_string(detail.size() - kMaxStatusDetailBytes) + " more bytes)";
}

}  // namespace

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
  parsed.family_named = !request.template_id().empty();

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
