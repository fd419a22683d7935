// Test-only (test_evaluator_gpu.cpp): the real attention template's name,
// template parameters and params struct, but every thread stores 1 TiB past
// the output and then traps. The launch faults (illegal address, or the
// trap), which leaves the CUDA context unusable: the evaluation worker must
// answer with an error and exit so the daemon can start a fresh one.
#pragma once

#include "common/attention_params.cuh"

namespace flashcore {

// Stand-ins for the element tags of common/element_types.cuh (the name
// expression names them; only their size matters here).
struct fp16_t {
  unsigned short bits;
};
struct bf16_t {
  unsigned short bits;
};

template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages,
          bool QInRegisters, bool SwizzledSmem>
__global__ void __launch_bounds__(Warps * 32) attention_fwd(const __grid_constant__ AttentionParams p) {
  volatile Element* far = static_cast<Element*>(p.o) + (1ll << 40) + threadIdx.x;
  far->bits = static_cast<unsigned short>(HeadDim + BlockM + BlockN + Stages + (Causal ? 1 : 0));
  __trap();
}

}  // namespace flashcore
