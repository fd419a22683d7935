// Launching a served kernel in the caller's own process: the cubin from a
// KernelHandle is loaded into the device's primary context (the one the CUDA
// runtime and frameworks such as PyTorch use), and launched with the one
// params struct every attention template takes.
#pragma once

#include <cuda.h>

#include <memory>
#include <string>

#include "common/attention_params.cuh"
#include "common/result.hpp"
#include "flashcore/v1/flashcore.pb.h"

namespace flashcore::client {

// Strides of densely packed Q, O ([batch, seq_q, heads, D] or
// [batch, heads, seq_q, D] by problem.layout) and K, V (kv_heads, seq_k),
// softmax_scale = 1/sqrt(D) and its log2(e) multiple. kv_heads 0 means heads,
// seq_k 0 means seq_q. The shape is not validated here; launch() does.
AttentionParams make_attention_params(const v1::Problem& problem, CUdeviceptr q, CUdeviceptr k,
                                      CUdeviceptr v, CUdeviceptr o, float* lse = nullptr);

class KernelLauncher {
 public:
  // Retains device `device`'s primary context and makes it current on the
  // calling thread. failed_precondition where there is no driver or device.
  static Result<KernelLauncher> create(int device = 0);

  KernelLauncher(KernelLauncher&&) noexcept;
  KernelLauncher& operator=(KernelLauncher&&) noexcept;
  ~KernelLauncher();

  // Launches `handle`'s kernel on `stream` for the shape in `params`: grid
  // (ceil(seq_q / block_m), heads, batch), block and dynamic shared memory
  // from the handle. The handle must carry its cubin and this library's ABI
  // version. Modules are loaded once per key and kept; thread-safe.
  Status launch(const v1::KernelHandle& handle, const AttentionParams& params, CUstream stream);

  // Modules loaded so far (one per distinct key launched).
  size_t loaded_modules() const;

  struct State;

 private:
  explicit KernelLauncher(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace flashcore::client
