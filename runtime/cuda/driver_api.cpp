#include "cuda/driver_api.hpp"

#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <utility>

namespace flashcore::cuda {
namespace {

// Two levels so the argument is macro-expanded first: cuda.h turns
// cuMemAlloc into cuMemAlloc_v2, and that versioned symbol is the one to ask
// dlsym for (the unversioned one is the legacy 32-bit ABI, or absent).
#define FLASHCORE_STRINGIFY_EXPANDED(x) FLASHCORE_STRINGIFY(x)
#define FLASHCORE_STRINGIFY(x) #x

struct LoadedDriver {
  DriverApi api;
  std::optional<Error> error;  // set when the driver is unusable
};

Error no_driver(std::string message) {
  return make_error(ErrorCode::failed_precondition, std::move(message));
}

std::string result_name(const DriverApi& api, CUresult result) {
  const char* name = nullptr;
  if (api.cuGetErrorName == nullptr || api.cuGetErrorName(result, &name) != CUDA_SUCCESS ||
      name == nullptr) {
    return "CUresult " + std::to_string(static_cast<int>(result));
  }
  return name;
}

std::string result_text(const DriverApi& api, CUresult result) {
  std::string text = result_name(api, result);
  const char* description = nullptr;
  if (api.cuGetErrorString != nullptr &&
      api.cuGetErrorString(result, &description) == CUDA_SUCCESS && description != nullptr) {
    text += " (";
    text += description;
    text += ")";
  }
  return text;
}

LoadedDriver load_driver() {
  LoadedDriver loaded;
  // Only the driver's own library: the toolkit's stubs/libcuda.so has the same
  // symbols but every call fails, which would hide the real "no driver" cause.
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    loaded.error = no_driver(std::string("no CUDA driver: libcuda.so.1 not found (") +
                             (why != nullptr ? why : "unknown dlopen error") + ")");
    return loaded;
  }

  DriverApi& api = loaded.api;
  std::string missing;
#define FLASHCORE_DRIVER_FN(name)                                                      \
  api.name = reinterpret_cast<decltype(api.name)>(                                     \
      dlsym(handle, FLASHCORE_STRINGIFY_EXPANDED(name)));                              \
  if (api.name == nullptr) {                                                           \
    missing += missing.empty() ? "" : ", ";                                            \
    missing += FLASHCORE_STRINGIFY_EXPANDED(name);                                     \
  }
#include "cuda/driver_functions.inc"
#undef FLASHCORE_DRIVER_FN

  if (!missing.empty()) {
    dlclose(handle);
    loaded.api = DriverApi{};
    loaded.error = no_driver("CUDA driver too old: libcuda.so.1 lacks " + missing);
    return loaded;
  }

  if (const CUresult result = api.cuInit(0); result != CUDA_SUCCESS) {
    // The handle stays open: cuGetErrorName still works for later messages,
    // and unloading a half-initialized driver is not worth the risk.
    loaded.error = no_driver("cuInit failed: " + result_text(api, result));
    return loaded;
  }
  int count = 0;
  if (const CUresult result = api.cuDeviceGetCount(&count); result != CUDA_SUCCESS) {
    loaded.error = no_driver("cuDeviceGetCount failed: " + result_text(api, result));
    return loaded;
  }
  if (count < 1) {
    loaded.error = no_driver("no CUDA device");
    return loaded;
  }
  int version = 0;
  api.cuDriverGetVersion(&version);
  spdlog::debug("CUDA driver {}.{} loaded, {} device(s)", version / 1000, (version % 1000) / 10,
                count);
  return loaded;
}

// Loaded once per process; C++ guarantees the static's initializer runs
// exactly once even with concurrent first callers.
const LoadedDriver& loaded_driver() {
  static const LoadedDriver loaded = load_driver();
  return loaded;
}

ErrorCode code_for(CUresult result) {
  switch (result) {
    case CUDA_ERROR_OUT_OF_MEMORY:
      return ErrorCode::resource_exhausted;
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_INVALID_HANDLE:
      return ErrorCode::invalid_argument;
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_DEINITIALIZED:
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
    case CUDA_ERROR_INVALID_DEVICE:
    case CUDA_ERROR_NO_BINARY_FOR_GPU:
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
      return ErrorCode::failed_precondition;
    case CUDA_ERROR_NOT_FOUND:
      return ErrorCode::not_found;
    default:
      return ErrorCode::internal;
  }
}

}  // namespace

Result<const DriverApi*> driver() {
  const LoadedDriver& loaded = loaded_driver();
  if (loaded.error) return *loaded.error;
  return &loaded.api;
}

Status check(CUresult result, const char* api) {
  if (result == CUDA_SUCCESS) return ok_status();
  // Names come from the driver when it loaded far enough to resolve them.
  const DriverApi& functions = loaded_driver().api;
  return make_error(code_for(result), std::string(api) + ": " + result_text(functions, result));
}

Result<std::vector<DeviceInfo>> probe_devices() {
  auto api = driver();
  if (!api) return api.error();
  const DriverApi& d = **api;

  int count = 0;
  if (auto s = check(d.cuDeviceGetCount(&count), "cuDeviceGetCount"); !s) return s.error();
  std::vector<DeviceInfo> devices;
  devices.reserve(static_cast<size_t>(count));
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    CUdevice device = 0;
    if (auto s = check(d.cuDeviceGet(&device, ordinal), "cuDeviceGet"); !s) return s.error();

    DeviceInfo info;
    info.ordinal = ordinal;
    char name[256] = {};
    if (auto s = check(d.cuDeviceGetName(name, sizeof(name) - 1, device), "cuDeviceGetName"); !s)
      return s.error();
    info.name = name;

    const std::pair<CUdevice_attribute, int*> attributes[] = {
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &info.cc_major},
        {CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &info.cc_minor},
        {CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, &info.sm_count},
        {CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, &info.max_smem_optin_bytes},
        {CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, &info.l2_bytes},
    };
    for (const auto& [attribute, out] : attributes) {
      if (auto s = check(d.cuDeviceGetAttribute(out, attribute, device), "cuDeviceGetAttribute");
          !s)
        return s.error();
    }
    size_t total = 0;
    if (auto s = check(d.cuDeviceTotalMem(&total, device), "cuDeviceTotalMem"); !s)
      return s.error();
    info.total_memory_bytes = total;
    // sm_90a unlocks wgmma/setmaxnreg on Hopper; every 9.0 part supports it.
    info.arch = (info.cc_major == 9 && info.cc_minor == 0)
                    ? std::string("sm_90a")
                    : "sm_" + std::to_string(info.cc_major) + std::to_string(info.cc_minor);
    devices.push_back(std::move(info));
  }
  return devices;
}

// ---- Context ----

Result<Context> Context::retain_primary(int ordinal) {
  auto api = driver();
  if (!api) return api.error();
  const DriverApi& d = **api;
  CUdevice device = 0;
  if (auto s = check(d.cuDeviceGet(&device, ordinal), "cuDeviceGet"); !s) return s.error();
  CUcontext ctx = nullptr;
  if (auto s = check(d.cuDevicePrimaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain"); !s)
    return s.error();
  Context context(device, ctx);  // releases the retain if making it current fails
  if (auto s = context.make_current(); !s) return s.error();
  return context;
}

Context::Context(Context&& other) noexcept
    : device_(other.device_), ctx_(std::exchange(other.ctx_, nullptr)) {}

Context& Context::operator=(Context&& other) noexcept {
  if (this != &other) {
    Context old(std::move(*this));
    device_ = other.device_;
    ctx_ = std::exchange(other.ctx_, nullptr);
  }
  return *this;
}

Context::~Context() {
  if (ctx_ == nullptr) return;
  // Only a retained context exists, so the driver loaded; errors are ignored
  // because a destructor has nowhere to report them.
  if (auto api = driver()) (void)(*api)->cuDevicePrimaryCtxRelease(device_);
}

Status Context::make_current() const {
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuCtxSetCurrent(ctx_), "cuCtxSetCurrent");
}

// ---- Module ----

Result<Module> Module::load(const std::string& cubin) {
  if (cubin.empty()) return make_error(ErrorCode::invalid_argument, "cuModuleLoadData: empty image");
  auto api = driver();
  if (!api) return api.error();
  CUmodule module = nullptr;
  if (auto s = check((*api)->cuModuleLoadData(&module, cubin.data()), "cuModuleLoadData"); !s)
    return s.error();
  return Module(module);
}

Module::Module(Module&& other) noexcept : module_(std::exchange(other.module_, nullptr)) {}

Module& Module::operator=(Module&& other) noexcept {
  if (this != &other) {
    Module old(std::move(*this));
    module_ = std::exchange(other.module_, nullptr);
  }
  return *this;
}

Module::~Module() {
  if (module_ == nullptr) return;
  if (auto api = driver()) (void)(*api)->cuModuleUnload(module_);
}

Result<CUfunction> Module::function(const std::string& lowered_name) const {
  if (module_ == nullptr)
    return make_error(ErrorCode::failed_precondition, "cuModuleGetFunction: module not loaded");
  auto api = driver();
  if (!api) return api.error();
  CUfunction function = nullptr;
  if (auto s = check((*api)->cuModuleGetFunction(&function, module_, lowered_name.c_str()),
                     "cuModuleGetFunction");
      !s) {
    Error error = s.error();
    error.message += " for '" + lowered_name + "'";
    return error;
  }
  return function;
}

// ---- DeviceBuffer ----

Result<DeviceBuffer> DeviceBuffer::allocate(size_t bytes) {
  if (bytes == 0) return DeviceBuffer();  // cuMemAlloc rejects 0; an empty buffer is valid
  auto api = driver();
  if (!api) return api.error();
  CUdeviceptr ptr = 0;
  if (auto s = check((*api)->cuMemAlloc(&ptr, bytes), "cuMemAlloc"); !s) {
    Error error = s.error();
    error.message += " (" + std::to_string(bytes) + " bytes)";
    return error;
  }
  return DeviceBuffer(ptr, bytes);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, 0)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    DeviceBuffer old(std::move(*this));
    ptr_ = std::exchange(other.ptr_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ == 0) return;
  if (auto api = driver()) (void)(*api)->cuMemFree(ptr_);
}

namespace {
Status check_range(size_t offset, size_t bytes, size_t size, const char* api) {
  if (offset > size || bytes > size - offset) {
    return make_error(ErrorCode::invalid_argument,
                      std::string(api) + ": range [" + std::to_string(offset) + ", " +
                          std::to_string(offset + bytes) + ") outside a buffer of " +
                          std::to_string(size) + " bytes");
  }
  return ok_status();
}
}  // namespace

Status DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (auto s = check_range(offset, bytes, bytes_, "cuMemcpyHtoD"); !s) return s;
  if (bytes == 0) return ok_status();
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuMemcpyHtoD(ptr_ + offset, host, bytes), "cuMemcpyHtoD");
}

Status DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (auto s = check_range(offset, bytes, bytes_, "cuMemcpyDtoH"); !s) return s;
  if (bytes == 0) return ok_status();
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuMemcpyDtoH(host, ptr_ + offset, bytes), "cuMemcpyDtoH");
}

Status DeviceBuffer::fill_bytes(unsigned char value) {
  if (bytes_ == 0) return ok_status();
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuMemsetD8(ptr_, value, bytes_), "cuMemsetD8");
}

// ---- Stream ----

Result<Stream> Stream::create() {
  auto api = driver();
  if (!api) return api.error();
  CUstream stream = nullptr;
  // Non-blocking: work on it must not serialize with the legacy default
  // stream that other code in the process may be using.
  if (auto s = check((*api)->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
      !s)
    return s.error();
  return Stream(stream);
}

Stream::Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    Stream old(std::move(*this));
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

Stream::~Stream() {
  if (stream_ == nullptr) return;
  if (auto api = driver()) (void)(*api)->cuStreamDestroy(stream_);
}

Status Stream::synchronize() const {
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuStreamSynchronize(stream_), "cuStreamSynchronize");
}

// ---- Event ----

Result<Event> Event::create() {
  auto api = driver();
  if (!api) return api.error();
  CUevent event = nullptr;
  // Default flags keep timing enabled (the point of these events).
  if (auto s = check((*api)->cuEventCreate(&event, CU_EVENT_DEFAULT), "cuEventCreate"); !s)
    return s.error();
  return Event(event);
}

Event::Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    Event old(std::move(*this));
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

Event::~Event() {
  if (event_ == nullptr) return;
  if (auto api = driver()) (void)(*api)->cuEventDestroy(event_);
}

Status Event::record(CUstream stream) const {
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuEventRecord(event_, stream), "cuEventRecord");
}

Status Event::synchronize() const {
  auto api = driver();
  if (!api) return api.error();
  return check((*api)->cuEventSynchronize(event_), "cuEventSynchronize");
}

Result<float> Event::elapsed_since(const Event& start) const {
  auto api = driver();
  if (!api) return api.error();
  float ms = 0.0f;
  if (auto s = check((*api)->cuEventElapsedTime(&ms, start.event_, event_), "cuEventElapsedTime");
      !s)
    return s.error();
  return ms;
}

}  // namespace flashcore::cuda
