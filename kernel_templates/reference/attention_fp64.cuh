// fp64 attention on the GPU: the evaluation worker's reference for shapes whose
// every row would take the CPU minutes (S = 16384: about 1e12 multiply-adds a
// trial). Plain loops on the fp64 pipe, no tensor cores and nothing shared
// with the kernels it checks: one warp per query row, K/V tiles of 32 keys in
// shared memory (converted exactly to fp32), scores and the online softmax in
// fp64. The worker checks it against the CPU reference on sampled rows every
// time it is used (eval/gpu_reference.cpp), so it is never the only truth.
//
// Compiled by the worker with NVRTC for the device it runs on; not a served
// template (no catalog entry, no cache key).
#pragma once

#include "reference/reference_params.cuh"

namespace flashcore {

// A 16-bit element to fp32, exactly (every fp16 and bf16 value is an fp32).
__device__ inline float reference_element(const unsigned short* base, long long index, int bf16) {
  const unsigned bits = base[index];
  if (bf16) return __uint_as_float(bits << 16);
  const unsigned sign = (bits & 0x8000u) << 16, exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24, exact in fp32
    const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
  return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// grid (ceil(seq_q / kReferenceRows), heads, batch), block kReferenceRows x 32.
extern "C" __global__ void __launch_bounds__(kReferenceRows * 32)
    flashcore_attention_fp64_reference(const ReferenceParams p) {
  extern __shared__ double reference_smem[];
  const int D = p.head_dim;
  double* q_rows = reference_smem;                                         // [rows][D]
  float* k_tile = reinterpret_cast<float*>(q_rows + kReferenceRows * D);    // [keys][D + 1]
  float* v_tile = k_tile + kReferenceKeys * (D + 1);                        // [keys][D]

  const AttentionParams& a = p.in;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y, kvh = h / (a.heads / a.kv_heads);
  const int first_row = blockIdx.x * kReferenceRows;
  const int i = first_row + warp;
  const bool live = i < a.seq_q;
  const auto* q = static_cast<const unsigned short*>(a.q) + b * a.q_batch_stride + h * a.q_head_stride;
  const auto* k = static_cast<const unsigned short*>(a.k) + b * a.k_batch_stride + kvh * a.k_head_stride;
  const auto* v = static_cast<const unsigned short*>(a.v) + b * a.v_batch_stride + kvh * a.v_head_stride;

  for (int d = lane; d < D; d += 32)
    q_rows[warp * D + d] = live ? double(reference_element(q, i * a.q_row_stride + d, p.bf16)) : 0.0;

  const int last_row = min(first_row + kReferenceRows, a.seq_q) - 1;
  const int keys = p.causal ? min(last_row + 1, a.seq_k) : a.seq_k;
  const double minus_infinity = -__longlong_as_double(0x7ff0000000000000ll);
  double m = minus_infinity, l = 0.0;
  double acc[kReferenceMaxDim / 32];
#pragma unroll
  for (int t = 0; t < kReferenceMaxDim / 32; ++t) acc[t] = 0.0;

  for (int tile = 0; tile < keys; tile += kReferenceKeys) {
    __syncthreads();  // the previous tile is consumed (and q_rows written)
    for (int e = threadIdx.x; e < kReferenceKeys * D; e += kReferenceRows * 32) {
      const int j = e / D, d = e % D, key = tile + j;
      const bool in = key < a.seq_k;
      k_tile[j * (D + 1) + d] = in ? reference_element(k, key * a.k_row_stride + d, p.bf16) : 0.f;
      v_tile[j * D + d] = in ? reference_element(v, key * a.v_row_stride + d, p.bf16) : 0.f;
    }
    __syncthreads();
    if (!live) continue;
    const int key = tile + lane;
    const bool visible = key < a.seq_k && (!p.causal || key <= i);
    double score = minus_infinity;
    if (visible) {
      double dot = 0.0;
      for (int d = 0; d < D; ++d) dot += q_rows[warp * D + d] * double(k_tile[lane * (D + 1) + d]);
      score = dot * p.scale;
    }
    double tile_max = score;
    for (int offset = 16; offset > 0; offset /= 2)
      tile_max = fmax(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
    if (tile_max == minus_infinity) continue;  // every key of this tile masked for this row
    const double m_new = fmax(m, tile_max);
    const double correction = m == minus_infinity ? 0.0 : exp(m - m_new);
    const double weight = visible ? exp(score - m_new) : 0.0;
    double tile_sum = weight;
    for (int offset = 16; offset > 0; offset /= 2)
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, offset);
    l = l * correction + tile_sum;
#pragma unroll
    for (int t = 0; t < kReferenceMaxDim / 32; ++t) acc[t] *= correction;
    for (int j = 0; j < kReferenceKeys; ++j) {
      const double w = __shfl_sync(0xffffffffu, weight, j);
#pragma unroll
      for (int t = 0; t < kReferenceMaxDim / 32; ++t) {
        const int d = lane + 32 * t;
        if (d < D) acc[t] += w * double(v_tile[j * D + d]);
      }
    }
    m = m_new;
  }
  if (!live) return;
  const long long row = (static_cast<long long>(b) * a.heads + h) * a.seq_q + i;
#pragma unroll
  for (int t = 0; t < kReferenceMaxDim / 32; ++t) {
    const int d = lane + 32 * t;
    if (d < D) p.out[row * D + d] = acc[t] / l;
  }
  if (lane == 0) p.lse[row] = m + log(l);
}

}  // namespace flashcore
