// The CUDA Driver API, loaded with dlopen("libcuda.so.1") on first use and
// never linked, so binaries start on machines with no driver and GPU-only
// requests get a clear FAILED_PRECONDITION instead of a loader error.
// RAII wrappers for every driver object; one check() per result type.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace flashcore::cuda {

// Function pointers resolved from libcuda (versioned symbols, e.g. cuMemAlloc_v2).
struct DriverApi {
#define FLASHCORE_DRIVER_FN(name) decltype(&::name) name = nullptr;
#include "cuda/driver_functions.inc"
#undef FLASHCORE_DRIVER_FN
};

// The process-wide API, loaded and cuInit'ed once. failed_precondition with
// the reason (no libcuda.so.1, cuInit failed, no device) when unavailable.
Result<const DriverApi*> driver();

// "cuModuleLoadData: CUDA_ERROR_INVALID_IMAGE (device kernel image is invalid)"
Status check(CUresult result, const char* api);

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_memory_bytes = 0;
  int max_smem_optin_bytes = 0;
  int l2_bytes = 0;
  std::string arch;  // NVRTC target: "sm_90a" for 9.0, else "sm_<major><minor>"
};

// Device properties without creating a context (the daemon never holds one).
Result<std::vector<DeviceInfo>> probe_devices();

class Context {  // a retained primary context, made current on construction
 public:
  static Result<Context> retain_primary(int ordinal);
  Context(Context&&) noexcept;
  Context& operator=(Context&&) noexcept;
  ~Context();
  Status make_current() const;
  CUcontext get() const { return ctx_; }

 private:
  Context(CUdevice device, CUcontext ctx) : device_(device), ctx_(ctx) {}
  CUdevice device_ = 0;
  CUcontext ctx_ = nullptr;
};

class Module {
 public:
  static Result<Module> load(const std::string& cubin);
  Module(Module&&) noexcept;
  Module& operator=(Module&&) noexcept;
  ~Module();
  Result<CUfunction> function(const std::string& lowered_name) const;

 private:
  explicit Module(CUmodule module) : module_(module) {}
  CUmodule module_ = nullptr;
};

class DeviceBuffer {
 public:
  static Result<DeviceBuffer> allocate(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&&) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&&) noexcept;
  ~DeviceBuffer();
  CUdeviceptr get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Status upload(const void* host, size_t bytes, size_t offset = 0);
  Status download(void* host, size_t bytes, size_t offset = 0) const;
  Status fill_bytes(unsigned char value);

 private:
  DeviceBuffer(CUdeviceptr ptr, size_t bytes) : ptr_(ptr), bytes_(bytes) {}
  CUdeviceptr ptr_ = 0;
  size_t bytes_ = 0;
};

class Stream {
 public:
  static Result<Stream> create();
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  ~Stream();
  CUstream get() const { return stream_; }
  Status synchronize() const;

 private:
  explicit Stream(CUstream stream) : stream_(stream) {}
  CUstream stream_ = nullptr;
};

class Event {
 public:
  static Result<Event> create();
  Event(Event&&) noexcept;
  Event& operator=(Event&&) noexcept;
  ~Event();
  CUevent get() const { return event_; }
  Status record(CUstream stream) const;
  Status synchronize() const;
  // Milliseconds from `start` to this event (both recorded and complete).
  Result<float> elapsed_since(const Event& start) const;

 private:
  explicit Event(CUevent event) : event_(event) {}
  CUevent event_ = nullptr;
};

}  // namespace flashcore::cuda
