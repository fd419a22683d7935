#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "cuda/attention_launch.hpp"
#include "cuda/driver_api.hpp"
#include "flashcore/launcher.hpp"

namespace flashcore::client {

AttentionParams make_attention_params(const v1::Problem& problem, CUdeviceptr q, CUdeviceptr k,
                                      CUdeviceptr v, CUdeviceptr o, float* lse) {
  cuda::AttentionShape shape;
  shape.batch = problem.batch();
  shape.heads = problem.heads();
  shape.kv_heads = problem.kv_heads();
  shape.seq_q = problem.seq_q();
  shape.seq_k = problem.seq_k();
  shape.head_dim = problem.head_dim();
  shape.layout = problem.layout() == v1::LAYOUT_BHSD ? cuda::TensorLayout::bhsd
                                                     : cuda::TensorLayout::bshd;
  return cuda::make_attention_params(shape, q, k, v, o, lse);
}

namespace {
struct LoadedKernel {
  cuda::Module module;
  CUfunction function = nullptr;
  CUfunction combine = nullptr;  // the decode family's second step, when the handle has one
};

constexpr unsigned kDecodeAbiVersion = 3;  // DecodeParams (family/attention_decode.hpp)
}  // namespace

struct KernelLauncher::State {
  // Declared first so it is destroyed last: modules unload into a live context.
  cuda::Context context;
  std::mutex mutex;
  std::unordered_map<std::string, LoadedKernel> kernels;  // by handle key
  // The decode family's workspace (its split counters kept zero). One per
  // launcher: decode launches through one launcher must not run
  // concurrently on different streams.
  cuda::DecodeWorkspace workspace;
  int sm_count = 0;

  explicit State(cuda::Context ctx) : context(std::move(ctx)) {}

  // The function for `handle`, loading its module on first use.
  Result<CUfunction> function_for(const v1::KernelHandle& handle) {
    std::lock_guard lock(mutex);
    if (auto it = kernels.find(handle.key()); it != kernels.end()) return it->second.function;

    auto module = cuda::Module::load(handle.cubin());
    if (!module) return module.error();
    auto function = module->function(handle.lowered_name());
    if (!function) return function.error();
    // The default limit is 48 KB; the tile configs mostly need more.
    if (auto s = cuda::set_max_dynamic_smem(*function, handle.launch().dynamic_smem_bytes()); !s)
      return s.error();
    CUfunction combine = nullptr;
    for (const auto& step : handle.steps())
      if (step.role() == "combine") {
        auto second = module->function(step.lowered_name());
        if (!second) return second.error();
        combine = *second;
      }
    kernels.emplace(handle.key(), LoadedKernel{std::move(module).value(), *function, combine});
    return *function;
  }

  CUfunction combine_for(const std::string& key) {
    std::lock_guard lock(mutex);
    auto it = kernels.find(key);
    return it == kernels.end() ? nullptr : it->second.combine;
  }

  Result<CUdeviceptr> workspace_for(const cuda::DecodeLaunchConfig& decode,
                                    const AttentionParams& params, int splits, CUstream stream) {
    std::lock_guard lock(mutex);
    return workspace.prepare(decode, params, splits, stream);
  }

  // Asked once: the launcher's context is one device's.
  Result<int> multiprocessors() {
    std::lock_guard lock(mutex);
    if (sm_count > 0) return sm_count;
    auto queried = cuda::current_device_multiprocessors();
    if (!queried) return queried.error();
    sm_count = *queried;
    return sm_count;
  }
};

Result<KernelLauncher> KernelLauncher::create(int device) {
  auto context = cuda::Context::retain_primary(device);
  if (!context) return context.error();
  return KernelLauncher(std::make_unique<State>(std::move(context).value()));
}

KernelLauncher::KernelLauncher(std::unique_ptr<State> state) : state_(std::move(state)) {}
KernelLauncher::KernelLauncher(KernelLauncher&&) noexcept = default;
KernelLauncher& KernelLauncher::operator=(KernelLauncher&&) noexcept = default;
KernelLauncher::~KernelLauncher() = default;

size_t KernelLauncher::loaded_modules() const {
  if (!state_) return 0;
  std::lock_guard lock(state_->mutex);
  return state_->kernels.size();
}

Status KernelLauncher::launch(const v1::KernelHandle& handle, const AttentionParams& params,
                              CUstream stream) {
  if (!state_)
    return make_error(ErrorCode::failed_precondition, "launch: launcher was moved from");
  if (auto s = cuda::attention_params_error(params); !s) return s;
  if (handle.cubin().empty())
    return make_error(ErrorCode::failed_precondition,
                      "launch: handle " + handle.key() + " carries no cubin (fetched with "
                      "omit_cubin?)");
  const unsigned abi = handle.abi().abi_version();
  if (abi != FLASHCORE_ATTENTION_ABI_VERSION && abi != FLASHCORE_ATTENTION_TMA_ABI_VERSION &&
      abi != kDecodeAbiVersion)
    return make_error(ErrorCode::failed_precondition,
                      "launch: kernel ABI version " + std::to_string(abi) +
                          " is not one this client knows (" +
                          std::to_string(FLASHCORE_ATTENTION_ABI_VERSION) + ", " +
                          std::to_string(FLASHCORE_ATTENTION_TMA_ABI_VERSION) + ", " +
                          std::to_string(kDecodeAbiVersion) + ")");
  const size_t params_size = abi == FLASHCORE_ATTENTION_ABI_VERSION ? sizeof(AttentionParams)
                             : abi == kDecodeAbiVersion             ? sizeof(DecodeParams)
                                                                    : sizeof(AttentionTmaParams);
  if (handle.abi().params_size() != 0 && handle.abi().params_size() != params_size)
    return make_error(ErrorCode::failed_precondition,
                      "launch: kernel params struct is " +
                          std::to_string(handle.abi().params_size()) + " bytes, this client's " +
                          std::to_string(params_size));
  if (handle.config().block_m() <= 0 || handle.launch().block().x() == 0)
    return make_error(ErrorCode::failed_precondition,
                      "launch: handle " + handle.key() + " has no tile config or block size");

  // The calling thread may not be the one that created the launcher.
  if (auto s = state_->context.make_current(); !s) return s;
  auto function = state_->function_for(handle);
  if (!function) return function.error();

  if (abi == kDecodeAbiVersion) {
    cuda::DecodeLaunchConfig decode;
    decode.head_dim = handle.problem().head_dim();
    decode.packed_rows = static_cast<unsigned>(handle.config().block_m());
    decode.block_n = static_cast<unsigned>(handle.config().block_n());
    decode.split_threads = handle.launch().block().x();
    decode.split_smem_bytes = handle.launch().dynamic_smem_bytes();
    decode.fused_combine = handle.config().fused_combine();
    decode.splits = handle.config().splits();
    if (auto s = cuda::decode_launch_error(decode); !s) return s;
    auto sms = state_->multiprocessors();
    if (!sms) return sms.error();
    const int splits = cuda::decode_splits_for(decode, params, *sms);
    auto workspace = state_->workspace_for(decode, params, splits, stream);
    if (!workspace) return workspace.error();
    const DecodeParams d =
        cuda::make_decode_params(params, *workspace, decode.head_dim, splits);
    return cuda::launch_decode(*function, state_->combine_for(handle.key()), decode, d, stream);
  }

  cuda::AttentionLaunchConfig config;
  config.block_m = static_cast<unsigned>(handle.config().block_m());
  config.block_x = handle.launch().block().x();
  config.block_y = handle.launch().block().y();
  config.block_z = handle.launch().block().z();
  config.dynamic_smem_bytes = handle.launch().dynamic_smem_bytes();
  config.abi_version = abi;
  config.bf16 = handle.problem().dtype() == v1::DTYPE_BF16;
  config.head_dim = handle.problem().head_dim();
  config.block_n = static_cast<unsigned>(handle.config().block_n());
  config.persistent = handle.config().persistent();
  if (config.persistent) {
    auto sms = state_->multiprocessors();
    if (!sms) return sms.error();
    config.multiprocessors = *sms;
  }
  return cuda::launch_attention(*function, config, params, stream);
}

}  // namespace flashcore::client
