// The fp64 attention reference on the GPU (kernel_templates/reference/
// attention_fp64.cuh), for validations whose every row would take the CPU
// reference minutes. Compiled once per worker with NVRTC for the worker's
// device; every use is checked against the CPU reference on sampled rows
// (check_against_cpu), so a wrong GPU reference fails the validation rather
// than passing a wrong kernel.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/attention_params.cuh"
#include "common/result.hpp"
#include "cuda/driver_api.hpp"
#include "eval/attention_reference.hpp"

namespace flashcore::eval {

// Multiply-adds of an every-row fp64 reference for `shape` (QK^T and PV, causal
// rows counted by the keys they see): the measure that picks CPU or GPU.
double reference_cost(const AttentionShape& shape);

// The reference kernel's cubin for `arch`, with NVRTC's log (its ptxas
// report); no GPU needed.
struct ReferenceCubin {
  std::string cubin, log;
};
Result<ReferenceCubin> compile_reference_cubin(const std::string& arch);

class GpuReference {
 public:
  // NVRTC compile (the embedded kernel_templates/) and module load for the
  // current context's device `arch` ("sm_90a"). failed_precondition with the
  // NVRTC log when it cannot be built here.
  static Result<std::unique_ptr<GpuReference>> create(const std::string& arch);
  ~GpuReference();

  // Every row of `shape` from the inputs `inputs` points at (its q, k, v and
  // strides, as the kernel under test reads them; `dtype` their elements). A
  // context must be current; runs on the legacy default stream and waits.
  Result<AttentionReference> run(const AttentionShape& shape, DType dtype,
                                 const AttentionParams& inputs, double softmax_scale) const;

 private:
  GpuReference() = default;
  std::optional<cuda::Module> module_;
  CUfunction function_ = nullptr;
};

// The GPU reference against the CPU's on `rows` (the inputs the CPU sees as
// dequantized values): a message naming the first row that differs by more
// than rounding, or an empty string.
std::string check_against_cpu(const AttentionShape& shape, const AttentionReference& gpu,
                              const std::vector<float>& q, const std::vector<float>& k,
                              const std::vector<float>& v, double softmax_scale,
                              const std::vector<QueryRow>& rows, unsigned threads);

}  // namespace flashcore::eval
