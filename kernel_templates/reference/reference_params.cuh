// The fp64 reference kernel's parameters (reference/attention_fp64.cuh),
// shared with the worker that launches it (eval/gpu_reference.cpp). No host
// headers: NVRTC compiles this as it is.
#pragma once

#include "common/attention_params.cuh"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FLASHCORE_REFERENCE_HOST_DEVICE __host__ __device__
#else
#define FLASHCORE_REFERENCE_HOST_DEVICE
#endif

namespace flashcore {

struct ReferenceParams {
  AttentionParams in;  // q, k, v and their strides; in.o and in.lse unused
  double* out;         // [batch, heads, seq_q, head_dim], logical order
  double* lse;         // [batch, heads, seq_q], natural log
  double scale;        // softmax scale, in fp64
  int head_dim;        // <= kReferenceMaxDim, a multiple of 32
  int bf16;            // element type of q, k, v: 1 bf16, 0 fp16
  int causal;          // top-left: row i sees keys 0..i
};

constexpr int kReferenceRows = 8;     // warps a block, one query row each
constexpr int kReferenceKeys = 32;    // keys a shared tile: one a lane
constexpr int kReferenceMaxDim = 256;

// Dynamic shared memory for head_dim d: the block's q rows (fp64), a K tile
// padded by one column (lane j reads row j: no bank conflicts) and a V tile.
FLASHCORE_REFERENCE_HOST_DEVICE constexpr unsigned reference_smem_bytes(int d) {
  return unsigned(kReferenceRows * d * 8 + kReferenceKeys * (d + 1) * 4 + kReferenceKeys * d * 4);
}

}  // namespace flashcore
