#include "eval/gpu_reference.hpp"

#include <nvrtc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "cuda/attention_launch.hpp"
#include "jit/template_registry.hpp"
#include "reference/reference_params.cuh"

namespace flashcore::eval {
namespace {

constexpr const char* kHeader = "reference/attention_fp64.cuh";
constexpr const char* kKernel = "flashcore_attention_fp64_reference";
// Two fp64 sums of the same terms in another order: ~1e-15 apart. Far above
// that is a wrong reference, far below any kernel's tolerance (>= 2e-3).
constexpr double kAgreement = 1e-9;

Error unavailable(std::string message, std::string detail = {}) {
  return make_error(ErrorCode::failed_precondition, "GPU fp64 reference: " + std::move(message),
                    std::move(detail));
}

// "sm_90a" -> "sm_90": the reference uses nothing arch-specific.
std::string plain_arch(std::string arch) {
  if (!arch.empty() && arch.back() == 'a') arch.pop_back();
  return arch;
}

}  // namespace

Result<ReferenceCubin> compile_reference_cubin(const std::string& arch) {
  auto registry = TemplateRegistry::embedded();
  std::vector<const char*> names, sources;
  for (const auto& [path, contents] : registry->sources()) {
    names.push_back(path.c_str());
    sources.push_back(contents.c_str());
  }
  const std::string source = std::string("#include \"") + kHeader + "\"\n";
  nvrtcProgram program = nullptr;
  if (nvrtcCreateProgram(&program, source.c_str(), "attention_fp64_reference.cu",
                         static_cast<int>(sources.size()), sources.data(), names.data()) !=
      NVRTC_SUCCESS)
    return unavailable("nvrtcCreateProgram failed");
  const std::string gpu = "--gpu-architecture=" + plain_arch(arch);
  const char* options[] = {gpu.c_str(), "--std=c++17", "-default-device", "-Xptxas=-v"};
  const nvrtcResult compiled = nvrtcCompileProgram(program, 4, options);
  size_t log_size = 0;
  std::string log;
  if (nvrtcGetProgramLogSize(program, &log_size) == NVRTC_SUCCESS && log_size > 1) {
    log.resize(log_size);
    nvrtcGetProgramLog(program, log.data());
  }
  std::string cubin;
  size_t cubin_size = 0;
  if (compiled == NVRTC_SUCCESS && nvrtcGetCUBINSize(program, &cubin_size) == NVRTC_SUCCESS) {
    cubin.resize(cubin_size);
    if (nvrtcGetCUBIN(program, cubin.data()) != NVRTC_SUCCESS) cubin.clear();
  }
  nvrtcDestroyProgram(&program);
  if (compiled != NVRTC_SUCCESS || cubin.empty())
    return unavailable("NVRTC could not compile it for " + arch, log);
  return ReferenceCubin{std::move(cubin), std::move(log)};
}

double reference_cost(const AttentionShape& shape) {
  // Keys seen per query row, summed: causal row i sees min(i + 1, seq_k).
  double keys = static_cast<double>(shape.seq_q) * shape.seq_k;
  if (shape.causal) {
    const double full = std::min(shape.seq_q, shape.seq_k);
    keys = full * (full + 1) / 2 + std::max(0.0, double(shape.seq_q) - full) * shape.seq_k;
  }
  return 2.0 * keys * shape.head_dim * shape.batch * shape.heads;
}

GpuReference::~GpuReference() = default;

Result<std::unique_ptr<GpuReference>> GpuReference::create(const std::string& arch) {
  auto cubin = compile_reference_cubin(arch);
  if (!cubin) return cubin.error();
  auto module = cuda::Module::load(cubin->cubin);
  if (!module) return unavailable("module load: " + module.error().message);
  auto function = module->function(kKernel);
  if (!function) return unavailable(function.error().message);
  if (auto s = cuda::set_max_dynamic_smem(*function, reference_smem_bytes(kReferenceMaxDim)); !s)
    return unavailable(s.error().message);
  std::unique_ptr<GpuReference> reference(new GpuReference());
  reference->module_ = std::move(module.value());
  reference->function_ = *function;
  return reference;
}

Result<AttentionReference> GpuReference::run(const AttentionShape& shape, DType dtype,
                                             const AttentionParams& inputs,
                                             double softmax_scale) const {
  if (shape.head_dim > kReferenceMaxDim || shape.head_dim % 32 != 0)
    return unavailable("head_dim " + std::to_string(shape.head_dim) +
                       " (it takes multiples of 32 up to 256)");
  auto api = cuda::driver();
  if (!api) return api.error();
  const size_t rows = static_cast<size_t>(shape.batch) * shape.heads * shape.seq_q;
  const size_t values = rows * static_cast<size_t>(shape.head_dim);
  auto out = cuda::DeviceBuffer::allocate(values * sizeof(double));
  if (!out) return out.error();
  auto lse = cuda::DeviceBuffer::allocate(rows * sizeof(double));
  if (!lse) return lse.error();

  ReferenceParams p{};
  p.in = inputs;
  p.out = reinterpret_cast<double*>(static_cast<uintptr_t>(out->get()));
  p.lse = reinterpret_cast<double*>(static_cast<uintptr_t>(lse->get()));
  p.scale = softmax_scale;
  p.head_dim = shape.head_dim;
  p.bf16 = dtype == DType::bf16 ? 1 : 0;
  p.causal = shape.causal ? 1 : 0;
  void* args[] = {&p};
  const unsigned grid_x = static_cast<unsigned>((shape.seq_q + kReferenceRows - 1) / kReferenceRows);
  if (auto s = cuda::check((*api)->cuLaunchKernel(function_, grid_x, static_cast<unsigned>(shape.heads),
                                                  static_cast<unsigned>(shape.batch),
                                                  kReferenceRows * 32, 1, 1,
                                                  reference_smem_bytes(shape.head_dim), nullptr,
                                                  args, nullptr),
                           "cuLaunchKernel(fp64 reference)");
      !s)
    return s.error();
  if (auto s = cuda::check((*api)->cuCtxSynchronize(), "cuCtxSynchronize(fp64 reference)"); !s)
    return s.error();
  AttentionReference ref;
  ref.out.resize(values);
  ref.lse.resize(rows);
  if (auto s = out->download(ref.out.data(), values * sizeof(double)); !s) return s.error();
  if (auto s = lse->download(ref.lse.data(), rows * sizeof(double)); !s) return s.error();
  return ref;
}

std::string check_against_cpu(const AttentionShape& shape, const AttentionReference& gpu,
                              const std::vector<float>& q, const std::vector<float>& k,
                              const std::vector<float>& v, double softmax_scale,
                              const std::vector<QueryRow>& rows, unsigned threads) {
  const AttentionReference cpu = reference_attention_rows(shape, q, k, v, softmax_scale, rows, threads);
  const int D = shape.head_dim;
  for (size_t n = 0; n < rows.size(); ++n) {
    const QueryRow& r = rows[n];
    const size_t row = (static_cast<size_t>(r.batch) * shape.heads + r.head) * shape.seq_q + r.row;
    double scale = std::abs(cpu.lse[n]);
    for (int d = 0; d < D; ++d) scale = std::max(scale, std::abs(cpu.out[n * D + d]));
    double worst = std::abs(gpu.lse[row] - cpu.lse[n]);
    for (int d = 0; d < D; ++d)
      worst = std::max(worst, std::abs(gpu.out[row * D + d] - cpu.out[n * D + d]));
    if (!(worst <= kAgreement * std::max(1.0, scale))) {
      char text[160];
      std::snprintf(text, sizeof(text), "%.3e", worst);
      return "the GPU fp64 reference differs from the CPU's by " + std::string(text) +
             " at batch " + std::to_string(r.batch) + " head " + std::to_string(r.head) + " row " +
             std::to_string(r.row);
    }
  }
  return {};
}

}  // namespace flashcore::eval
