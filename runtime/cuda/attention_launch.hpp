// Filling and launching the attention kernels' one params struct
// (kernel_templates/common/attention_params.cuh). Shared by the client
// library (KernelLauncher) and the daemon's evaluation worker, so both
// compute strides, scales and the grid the same way.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "common/attention_params.cuh"
#include "common/attention_tma_params.cuh"
#include "decode/decode_params.cuh"
#include "common/result.hpp"
#include "cuda/driver_api.hpp"

namespace flashcore::cuda {

enum class TensorLayout { bshd, bhsd };

// The run-time shape of one attention call, as a client describes it.
struct AttentionShape {
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t kv_heads = 0;  // 0 = heads
  int64_t seq_q = 1;
  int64_t seq_k = 0;     // 0 = seq_q
  int head_dim = 64;
  TensorLayout layout = TensorLayout::bshd;
};

// Strides for densely packed tensors in `shape.layout` (K and V with kv_heads
// and seq_k), softmax_scale = 1/sqrt(head_dim), softmax_scale_log2 =
// softmax_scale * log2(e). Does not validate; see attention_params_error().
AttentionParams make_attention_params(const AttentionShape& shape, CUdeviceptr q, CUdeviceptr k,
                                      CUdeviceptr v, CUdeviceptr o, float* lse = nullptr);

// invalid_argument naming the first bad field: null q/k/v/o, a count below 1,
// kv_heads not dividing heads, a stride that is not a multiple of 8 elements
// (the kernel's 16-byte vector loads), or a grid dimension over its limit.
Status attention_params_error(const AttentionParams& params);

// How a compiled attention kernel is launched; comes from its handle.
struct AttentionLaunchConfig {
  unsigned block_m = 0;  // query rows per block: grid.x = ceil(seq_q / block_m)
  unsigned block_x = 0, block_y = 1, block_z = 1;
  unsigned dynamic_smem_bytes = 0;
  // ABI 2 (the Hopper family, AttentionTmaParams): the launcher encodes the
  // four tensor maps as the handle's KernelAbi.tensor_maps describe, and the
  // grid is 1-D over tiles, clamped to the multiprocessor count if persistent.
  unsigned abi_version = FLASHCORE_ATTENTION_ABI_VERSION;
  bool bf16 = false;
  int head_dim = 0;
  unsigned block_n = 0;  // K/V box rows
  bool persistent = false;
  int multiprocessors = 0;  // the device's, for a persistent grid; 0 = ask the driver each launch
};

// The multiprocessor count of the current context's device.
Result<int> current_device_multiprocessors();

// Raises the function's dynamic shared memory limit to `bytes` (the default
// limit is 48 KB; most tile configs need more). Once per loaded function.
Status set_max_dynamic_smem(CUfunction function, unsigned bytes);

// grid = (ceil(seq_q / block_m), heads, batch); validates params first, then
// calls cuLaunchKernel with the struct as the single kernel argument. The
// function's dynamic shared memory limit must already be raised
// (set_max_dynamic_smem) and a context must be current. With abi_version 2
// it builds AttentionTmaParams (encode_attention_tma_params) and launches
// grid.x = tiles, or min(tiles, multiprocessors) when persistent.
Status launch_attention(CUfunction function, const AttentionLaunchConfig& config,
                        const AttentionParams& params, CUstream stream);

// The Hopper family's struct: `params` plus its q, k, v, o tensor maps
// encoded with cuTensorMapEncodeTiled (rank 4 over head_dim, seq, heads,
// batch; boxes of 64 head_dim elements by 64 rows for Q/O and block_n rows
// for K/V; 128-byte swizzle; zeros past the tensor). invalid_argument when a
// base pointer is not 16-byte aligned or head_dim is not a multiple of 64.
Result<AttentionTmaParams> encode_attention_tma_params(const AttentionLaunchConfig& config,
                                                       const AttentionParams& params);

// The decode family's launch (ABI 3), from its handle.
struct DecodeLaunchConfig {
  int head_dim = 0;
  unsigned packed_rows = 0;     // config.block_m
  unsigned block_n = 0;
  unsigned split_threads = 0;   // the split kernel's block
  unsigned split_smem_bytes = 0;
  bool fused_combine = true;
  int splits = 0;               // config.splits; 0 = decode_num_splits for this device
};

// invalid_argument naming the field when a decode handle's launch config
// cannot be used: packed rows, block_n or split block not in [1, 1024] (the
// split rule divides by block_n, as an int), a head_dim outside (0, 256],
// negative splits. The
// launcher and the worker check it before anything below.
Status decode_launch_error(const DecodeLaunchConfig& config);

// Workspace bytes a call of this shape needs (0 with one split), and the
// split count it uses on a device with `sm_count` multiprocessors.
int decode_splits_for(const DecodeLaunchConfig& config, const AttentionParams& params, int sm_count);
uint64_t decode_workspace_for(const DecodeLaunchConfig& config, const AttentionParams& params,
                              int num_splits);

// DecodeParams from the call's AttentionParams, the workspace (laid out as
// decode_workspace_bytes counts it) and the split count.
DecodeParams make_decode_params(const AttentionParams& params, CUdeviceptr workspace,
                                int head_dim, int num_splits);

// One decode caller's workspace (one call at a time): grown as calls need,
// its split counters (at offset 0, decode_params.cuh) kept zero. The kernels
// leave the counters they use at zero, so it zeroes again only when a call
// needs more counters than any call before it; partials behind them may hold
// an earlier call's data, which no kernel reads before writing.
class DecodeWorkspace {
 public:
  // The workspace for `params` with `num_splits` (0 when it needs none),
  // after any work queued on `stream` that may still use it.
  Result<CUdeviceptr> prepare(const DecodeLaunchConfig& config, const AttentionParams& params,
                              int num_splits, CUstream stream);
  size_t bytes() const { return buffer_.bytes(); }

 private:
  DeviceBuffer buffer_;
  uint64_t zero_counter_bytes_ = 0;  // the prefix known to be zero
};

// The split kernel on grid (num_splits, kv_heads, batch), then, unfused with
// more than one split, the combine kernel. invalid_argument when the call's
// query heads per kv head x seq_q exceed the kernel's packed rows, or its
// workspace is missing; the counters in it must start at zero (the kernels
// leave them so).
Status launch_decode(CUfunction split, CUfunction combine, const DecodeLaunchConfig& config,
                     const DecodeParams& params, CUstream stream);

}  // namespace flashcore::cuda
