// Test-only (test_evaluator_gpu.cpp): the real attention template's name,
// template parameters and params struct, but wrong on purpose, and
// deterministically so: it writes zeros for every query row except the last
// of each BlockM tile, which it leaves unwritten, and never writes the LSE.
// The evaluation worker must report validation.passed = false with the
// unwritten outputs and the error in its detail, and stay up.
#pragma once

#include "common/attention_params.cuh"

namespace flashcore {

struct fp16_t {
  unsigned short bits;
};
struct bf16_t {
  unsigned short bits;
};

template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages,
          bool QInRegisters, bool SwizzledSmem>
__global__ void __launch_bounds__(Warps * 32) attention_fwd(const __grid_constant__ AttentionParams p) {
  for (int r = threadIdx.x; r < BlockM - 1; r += Warps * 32) {
    const int row = blockIdx.x * BlockM + r;
    if (row >= p.seq_q) return;
    Element* o = static_cast<Element*>(p.o) + blockIdx.z * p.o_batch_stride +
                 blockIdx.y * p.o_head_stride + row * p.o_row_stride;
    for (int d = 0; d < HeadDim; ++d) o[d].bits = 0;
  }
}

}  // namespace flashcore
