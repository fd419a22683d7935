// Filling and launching the attention kernels' one params struct
// (kernel_templates/common/attention_params.cuh). Shared by the client
// library (KernelLauncher) and the daemon's evaluation worker, so both
// compute strides, scales and the grid the same way.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "common/attention_params.cuh"
#include "common/attention_tma_params.cuh"
#include "common/result.hpp"

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
};

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

}  // namespace flashcore::cuda
