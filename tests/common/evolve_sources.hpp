// Candidate sources for the EvaluateSource tests (CPU and GPU): small
// kernels of the AttentionParams ABI, fp16, launched with 32 query rows and
// 32 threads per block (one row per thread), plus sources that misbehave.
#pragma once

#include <string>

namespace flashcore::test_support {

// One thread per query row: a straight online softmax over every key in
// fp32, for any head_dim up to 256, causal top-left aligned, GQA, LSE.
// `rows` query rows (threads) per block; `prologue` runs first in the kernel.
inline std::string naive_attention_source(const std::string& name = "naive_attention",
                                          const std::string& scale_factor = "1.0f",
                                          const std::string& key_limit = "seq_k", int rows = 32,
                                          const std::string& prologue = "") {
  const std::string r = std::to_string(rows);
  return R"(#include "common/attention_params.cuh"

namespace {
__device__ __forceinline__ float to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short to_half(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
}  // namespace

template <int HeadDim, bool Causal>
__global__ void __launch_bounds__()" + r + R"() )" + name + R"((const flashcore::AttentionParams __grid_constant__ p) {
)" + prologue + R"(
  const int row = blockIdx.x * )" + r + R"( + threadIdx.x;
  const int head = blockIdx.y, batch = blockIdx.z;
  if (row >= p.seq_q) return;
  const int kv_head = head / (p.heads / p.kv_heads);
  const unsigned short* q = static_cast<const unsigned short*>(p.q) + batch * p.q_batch_stride +
                            head * p.q_head_stride + row * p.q_row_stride;
  const unsigned short* k = static_cast<const unsigned short*>(p.k) + batch * p.k_batch_stride +
                            kv_head * p.k_head_stride;
  const unsigned short* v = static_cast<const unsigned short*>(p.v) + batch * p.v_batch_stride +
                            kv_head * p.v_head_stride;
  unsigned short* o = static_cast<unsigned short*>(p.o) + batch * p.o_batch_stride +
                      head * p.o_head_stride + row * p.o_row_stride;
  float acc[HeadDim];
#pragma unroll
  for (int d = 0; d < HeadDim; ++d) acc[d] = 0.0f;
  float running_max = -1e30f, running_sum = 0.0f;
  const int seq_k = p.seq_k;
  int keys = )" + key_limit + R"(;
  if (Causal && row + 1 < keys) keys = row + 1;
  for (int j = 0; j < keys; ++j) {
    float s = 0.0f;
#pragma unroll
    for (int d = 0; d < HeadDim; ++d) s += to_float(q[d]) * to_float(k[j * p.k_row_stride + d]);
    s *= p.softmax_scale * )" + scale_factor + R"(;
    const float m = fmaxf(running_max, s);
    const float correction = __expf(running_max - m);
    const float e = __expf(s - m);
    running_sum = running_sum * correction + e;
#pragma unroll
    for (int d = 0; d < HeadDim; ++d)
      acc[d] = acc[d] * correction + e * to_float(v[j * p.v_row_stride + d]);
    running_max = m;
  }
#pragma unroll
  for (int d = 0; d < HeadDim; ++d) o[d] = to_half(acc[d] / running_sum);
  if (p.lse != nullptr)
    p.lse[(static_cast<long long>(batch) * p.heads + head) * p.seq_q + row] =
        running_max + __logf(running_sum);
}
)";
}

inline std::string naive_name_expression(const std::string& name = "naive_attention",
                                         int head_dim = 64, bool causal = false) {
  return name + "<" + std::to_string(head_dim) + ", " + (causal ? "true" : "false") + ">";
}

// For naive_attention_source(..., 64, kSharedMemoryRace): a read of another
// warp's shared-memory write with no barrier between (racecheck reports the
// hazard); the value read is never used, so the output stays correct.
inline const char* kSharedMemoryRace = R"(
  __shared__ volatile int scratch[64];
  __shared__ volatile int sink[64];
  scratch[threadIdx.x] = threadIdx.x;
  sink[threadIdx.x] = scratch[(threadIdx.x + 32) % 64];
)";

// Reads far outside every buffer: an illegal address on the GPU.
inline const char* kFaultingSource = R"(#include "common/attention_params.cuh"
__global__ void faulting(const flashcore::AttentionParams __grid_constant__ p) {
  unsigned short* o = static_cast<unsigned short*>(p.o);
  o[(1ll << 40) + threadIdx.x] = 1;
}
)";

// Never returns (the evaluation worker's timeout kills it).
inline const char* kHangingSource = R"(#include "common/attention_params.cuh"
__global__ void hanging(const flashcore::AttentionParams __grid_constant__ p) {
  // clock64() is a volatile read of the SM clock: the loop cannot be
  // optimized away (an empty infinite loop could be), and never ends.
  while (clock64() >= 0) {
  }
  static_cast<unsigned short*>(p.o)[0] = 0;
}
)";

// A syntax error on line 3.
inline const char* kBrokenSource = R"(#include "common/attention_params.cuh"
__global__ void broken(const flashcore::AttentionParams __grid_constant__ p) {
  int x = ;
}
)";

// Keeps NVRTC's front end busy for as long as it is let: every level of the
// macros doubles the initializers the preprocessor must produce (2^40).
// Measured: killed by RLIMIT_CPU after 60 s, under 1 GiB of memory.
inline const char* kNvrtcHangSource = R"(#define A0 1,
#define A1 A0 A0
#define A2 A1 A1
#define A3 A2 A2
#define A4 A3 A3
#define A5 A4 A4
#define A6 A5 A5
#define A7 A6 A6
#define A8 A7 A7
#define A9 A8 A8
#define A10 A9 A9
#define A11 A10 A10
#define A12 A11 A11
#define A13 A12 A12
#define A14 A13 A13
#define A15 A14 A14
#define A16 A15 A15
#define A17 A16 A16
#define A18 A17 A17
#define A19 A18 A18
#define A20 A19 A19
#define A21 A20 A20
#define A22 A21 A21
#define A23 A22 A22
#define A24 A23 A23
#define A25 A24 A24
#define A26 A25 A25
#define A27 A26 A26
#define A28 A27 A27
#define A29 A28 A28
#define A30 A29 A29
#define A31 A30 A30
#define A32 A31 A31
#define A33 A32 A32
#define A34 A33 A33
#define A35 A34 A34
#define A36 A35 A35
#define A37 A36 A36
#define A38 A37 A37
#define A39 A38 A38
#define A40 A39 A39
__device__ int values[] = { A40 0 };
__global__ void never(int* out) { out[0] = values[0]; }
)";

// A 1 GiB initialized device array: NVVM (LLVM) runs out of memory and
// aborts ("LLVM ERROR: out of memory") within seconds under a 1.5 GiB limit.
inline const char* kNvrtcMemorySource = R"(__device__ char big[1ull << 30] = {1};
__global__ void never(char* out) { out[0] = big[threadIdx.x]; }
)";

// A 1 GiB string literal from 2^18 adjacent copies: the front end reports
// "catastrophic error: out of memory".
inline const std::string kNvrtcStringSource = R"(#define S0 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define S1 S0 S0
#define S2 S1 S1
#define S3 S2 S2
#define S4 S3 S3
#define S5 S4 S4
#define S6 S5 S5
#define S7 S6 S6
#define S8 S7 S7
#define S9 S8 S8
#define S10 S9 S9
#define S11 S10 S10
#define S12 S11 S11
#define S13 S12 S12
#define S14 S13 S13
#define S15 S14 S14
#define S16 S15 S15
#define S17 S16 S16
#define S18 S17 S17
__device__ const char text[] = S18;
__global__ void never(char* out) { out[0] = text[threadIdx.x]; }
)";

// 2^40 steps of constexpr evaluation: NVRTC refuses it at once ("excessive
// constexpr function call complexity").
inline const char* kConstexprLoopSource = R"(__host__ __device__ constexpr unsigned long long spin() {
  unsigned long long s = 0;
  for (unsigned long long i = 0; i < (1ull << 40); ++i) s += i ^ (s >> 3);
  return s;
}
__device__ constexpr unsigned long long value = spin();
__global__ void never(unsigned long long* out) { out[0] = value; }
)";

}  // namespace flashcore::test_support
