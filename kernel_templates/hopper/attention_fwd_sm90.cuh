// FlashAttention forward for Hopper (sm_90a): TMA loads into a K/V ring
// completed on mbarriers, a producer warpgroup that only issues copies, and
// consumer warpgroups of 64 query rows each that compute S = Q K^T and
// O += P V on wgmma (P from registers), with the online softmax of block n
// overlapping the P V product of block n-1 and, optionally, the two consumer
// warpgroups taking turns on the tensor cores (ping-pong).
//
// The tensors reach the kernel as four TMA descriptors encoded by the
// launcher (the handle says how) plus the ordinary AttentionParams for the
// shape, the optional LSE and the scales. Each descriptor is rank 4, innermost
// first (head_dim, seq, head, batch), boxes of 64 head_dim elements (128
// bytes, 128-byte swizzle) by a row count: Q and O 64 rows, K and V block_n.
// Rows past seq_q / seq_k read as zeros and are masked; stores past seq_q are
// dropped by the copy engine, so ragged lengths need no padding.
#pragma once

#include "common/attention_params.cuh"
#include "common/element_types.cuh"
#include "common/sm80_primitives.cuh"  // negative_infinity
#include "hopper/sm90_primitives.cuh"
#include "hopper/wgmma_ops.cuh"

#define FLASHCORE_ATTENTION_TMA_ABI_VERSION 2

namespace flashcore {

struct AttentionTmaParams {
  sm90::TmaDescriptor q;  // box (64, 64, 1, 1)
  sm90::TmaDescriptor k;  // box (64, block_n, 1, 1)
  sm90::TmaDescriptor v;  // box (64, block_n, 1, 1)
  sm90::TmaDescriptor o;  // box (64, 64, 1, 1)
  AttentionParams attn;
};

namespace sm90 {

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <int HeadDim, int BlockN, int Stages, int Consumers>
struct Sm90Layout {
  static constexpr int kChunks = HeadDim / 64;               // 128-byte column chunks
  static constexpr int kQBytesPerWarpgroup = 64 * HeadDim * 2;
  static constexpr int kKvBytes = BlockN * HeadDim * 2;      // one K or V tile
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + Consumers * kQBytesPerWarpgroup;
  static constexpr int kVOffset = kKOffset + Stages * kKvBytes;
  static constexpr int kBarOffset = kVOffset + Stages * kKvBytes;
  // q_full[Consumers], k_full, k_empty, v_full, v_empty [Stages each]
  static constexpr int kBarriers = Consumers + 4 * Stages;
  static constexpr int kBytes = kBarOffset + 8 * kBarriers + 1024;  // + alignment slack
};

}  // namespace sm90

// Grid (ceil(seq_q / (64 * Consumers)), heads, batch); block 128 * (Consumers + 1).
template <typename Element, int HeadDim, bool Causal, int BlockN, int Stages, int Consumers,
          bool Pingpong, int ConsumerRegs, int ProducerRegs>
__global__ void __launch_bounds__(128 * (Consumers + 1), 1)
    attention_fwd_sm90(const __grid_constant__ AttentionTmaParams p) {
  using namespace sm90;
  using L = Sm90Layout<HeadDim, BlockN, Stages, Consumers>;
  static_assert(HeadDim % 64 == 0 && HeadDim <= 256, "head_dim must be 64, 128, 192 or 256");
  static_assert(BlockN % 16 == 0 && BlockN <= 256, "block_n must be a multiple of 16, <= 256");
  static_assert(!Pingpong || Consumers == 2, "ping-pong takes two consumer warpgroups");
  constexpr int BlockM = 64 * Consumers;
  constexpr int SRegs = BlockN / 2;
  constexpr int ORegs = HeadDim / 2;

  extern __shared__ unsigned char smem_raw[];
  const unsigned base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const unsigned q_smem = base + L::kQOffset;
  const unsigned k_smem = base + L::kKOffset;
  const unsigned v_smem = base + L::kVOffset;
  const unsigned bars = base + L::kBarOffset;
  auto q_full = [&](int w) { return bars + 8u * w; };
  auto k_full = [&](int s) { return bars + 8u * (Consumers + s); };
  auto k_empty = [&](int s) { return bars + 8u * (Consumers + Stages + s); };
  auto v_full = [&](int s) { return bars + 8u * (Consumers + 2 * Stages + s); };
  auto v_empty = [&](int s) { return bars + 8u * (Consumers + 3 * Stages + s); };

  const AttentionParams& a = p.attn;
  const int m_block = Causal ? (gridDim.x - 1 - blockIdx.x) : blockIdx.x;  // heavy tiles first
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int kv_head = head / (a.heads / a.kv_heads);
  const int kv_rows = Causal ? min(a.seq_k, (m_block + 1) * BlockM) : a.seq_k;
  const int n_blocks = (kv_rows + BlockN - 1) / BlockN;

  const int warpgroup = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    for (int w = 0; w < Consumers; ++w) mbar_init(q_full(w), 1);
    for (int s = 0; s < Stages; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(k_empty(s), 4 * Consumers);  // lane 0 of every consumer warp
      mbar_init(v_empty(s), 4 * Consumers);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ---------------------------------------------------------- producer
    if constexpr (Consumers > 1) regs_dealloc<ProducerRegs>();
    if (threadIdx.x == 0) {
      tma_prefetch_descriptor(&p.q);
      tma_prefetch_descriptor(&p.k);
      tma_prefetch_descriptor(&p.v);
      for (int w = 0; w < Consumers; ++w) {
        mbar_expect_tx(q_full(w), L::kQBytesPerWarpgroup);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c)
          tma_load_4d(q_smem + w * L::kQBytesPerWarpgroup + c * 64 * 128, &p.q, q_full(w), c * 64,
                      m_block * BlockM + w * 64, head, batch);
      }
      for (int n = 0; n < n_blocks; ++n) {
        const int s = n % Stages;
        const unsigned phase = (n / Stages) & 1;
        mbar_wait(k_empty(s), phase ^ 1);
        mbar_expect_tx(k_full(s), L::kKvBytes);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c)
          tma_load_4d(k_smem + s * L::kKvBytes + c * BlockN * 128, &p.k, k_full(s), c * 64,
                      n * BlockN, kv_head, batch);
        mbar_wait(v_empty(s), phase ^ 1);
        mbar_expect_tx(v_full(s), L::kKvBytes);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c)
          tma_load_4d(v_smem + s * L::kKvBytes + c * BlockN * 128, &p.v, v_full(s), c * 64,
                      n * BlockN, kv_head, batch);
      }
    }
    return;
  }

  // ------------------------------------------------------------ consumers
  if constexpr (Consumers > 1) regs_alloc<ConsumerRegs>();
  const int wg = warpgroup - 1;
  const int warp_in_wg = (threadIdx.x / 32) % 4;
  const int g = lane / 4;
  const int t = lane % 4;
  const int local_row = warp_in_wg * 16 + g;  // and local_row + 8
  const int row_lo = m_block * BlockM + wg * 64 + local_row;
  const int row_hi = row_lo + 8;
  const int wg_first_row = m_block * BlockM + wg * 64;
  const unsigned q_wg = q_smem + wg * L::kQBytesPerWarpgroup;
  const float sl2 = a.softmax_scale_log2;

  float o[ORegs];
#pragma unroll
  for (int i = 0; i < ORegs; ++i) o[i] = 0.f;
  float s[SRegs];
  unsigned pf[BlockN / 16][4];
  float m_lo = negative_infinity(), m_hi = negative_infinity(), l_lo = 0.f, l_hi = 0.f;

  // Ping-pong: warpgroup w waits on barrier 3 + w before issuing its GEMMs
  // and then lets the other one go; warpgroup 1 lets warpgroup 0 go first.
  if constexpr (Pingpong) {
    if (wg == 1) named_barrier_arrive(3, 256);
  }

  auto issue_s = [&](int stage) {
    fence_regs(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < HeadDim / 16; ++kk) {
      const unsigned off = (kk % 4) * 32;  // k16 step inside a 128-byte row
      const unsigned long long da = wgmma_desc_sw128(q_wg + (kk / 4) * 64 * 128 + off, 16, 1024);
      const unsigned long long db =
          wgmma_desc_sw128(k_smem + stage * L::kKvBytes + (kk / 4) * BlockN * 128 + off, 16, 1024);
      WgmmaSS<BlockN, Element>::run(s, da, db, kk > 0 ? 1 : 0);
    }
    wgmma_commit();
  };
  auto issue_pv = [&](int stage) {
    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BlockN / 16; ++kk) {
      const unsigned long long db =
          wgmma_desc_sw128(v_smem + stage * L::kKvBytes + kk * 16 * 128, BlockN * 128, 1024);
      WgmmaRS<HeadDim, Element>::run(o, pf[kk], db, 1);
    }
    wgmma_commit();
  };
  // Masks block n, folds it into the running max and sum, leaves exp2 of the
  // scaled scores in s and returns the rescale factors for O.
  auto softmax = [&](int n, float& corr_lo, float& corr_hi) {
    const bool edge = (n + 1) * BlockN > a.seq_k;
    const bool diag = Causal && (n * BlockN + BlockN - 1 > wg_first_row);
    if (edge || diag) {
#pragma unroll
      for (int i = 0; i < SRegs; ++i) {
        const int col = n * BlockN + (i / 4) * 8 + 2 * t + (i & 1);
        const int row = (i & 2) ? row_hi : row_lo;
        if (col >= a.seq_k || (Causal && col > row)) s[i] = negative_infinity();
      }
    }
    float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
    for (int i = 0; i < SRegs; ++i) {
      if (i & 2) mx_hi = fmaxf(mx_hi, s[i]);
      else mx_lo = fmaxf(mx_lo, s[i]);
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, x));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, x));
    }
    const float ms_lo = mx_lo == negative_infinity() ? 0.f : mx_lo * sl2;
    const float ms_hi = mx_hi == negative_infinity() ? 0.f : mx_hi * sl2;
    corr_lo = ex2(m_lo * sl2 - ms_lo);  // m == -inf on the first block: 0
    corr_hi = ex2(m_hi * sl2 - ms_hi);
    m_lo = mx_lo;
    m_hi = mx_hi;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int i = 0; i < SRegs; ++i) {
      s[i] = ex2(fmaf(s[i], sl2, (i & 2) ? -ms_hi : -ms_lo));
      if (i & 2) sum_hi += s[i];
      else sum_lo += s[i];
    }
    l_lo = l_lo * corr_lo + sum_lo;
    l_hi = l_hi * corr_hi + sum_hi;
  };
  auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < BlockN / 16; ++kk) {
      pf[kk][0] = ElementOps<Element>::pack(s[8 * kk + 0], s[8 * kk + 1]);
      pf[kk][1] = ElementOps<Element>::pack(s[8 * kk + 2], s[8 * kk + 3]);
      pf[kk][2] = ElementOps<Element>::pack(s[8 * kk + 4], s[8 * kk + 5]);
      pf[kk][3] = ElementOps<Element>::pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  auto release = [&](unsigned bar) {
    if (lane == 0) mbar_arrive(bar);
  };

  // Ping-pong turns: warpgroup 1 skips its last hand-over, which nobody waits for.
  auto turn_begin = [&]() {
    if constexpr (Pingpong) named_barrier_sync(3 + wg, 256);
  };
  auto turn_end = [&](int n) {
    if constexpr (Pingpong) {
      if (!(wg == 1 && n == n_blocks - 1)) named_barrier_arrive(3 + (1 - wg), 256);
    }
  };

  // Block 0 on its own, so that the loop below has one wgmma pattern and
  // ptxas can keep every wgmma asynchronous.
  mbar_wait(q_full(wg), 0);
  mbar_wait(k_full(0), 0);
  turn_begin();
  issue_s(0);
  turn_end(0);
  wgmma_wait<0>();
  fence_regs(s);
  release(k_empty(0));
  {
    float corr_lo, corr_hi;  // O is still zero: nothing to rescale
    softmax(0, corr_lo, corr_hi);
  }
  pack_p();
  for (int n = 1; n < n_blocks; ++n) {
    const int stage = n % Stages;
    const unsigned phase = (n / Stages) & 1;
    const int prev = (n - 1) % Stages;
    const unsigned prev_phase = ((n - 1) / Stages) & 1;
    mbar_wait(k_full(stage), phase);
    mbar_wait(v_full(prev), prev_phase);
    turn_begin();
    issue_s(stage);
    issue_pv(prev);  // P V of block n-1 runs under the softmax of block n
    turn_end(n);
    wgmma_wait<1>();
    fence_regs(s);
    release(k_empty(stage));
    float corr_lo, corr_hi;
    softmax(n, corr_lo, corr_hi);
    wgmma_wait<0>();
    fence_regs(o);
    release(v_empty(prev));
#pragma unroll
    for (int i = 0; i < ORegs; ++i) o[i] *= (i & 2) ? corr_hi : corr_lo;
    pack_p();
  }
  {
    const int last = (n_blocks - 1) % Stages;
    mbar_wait(v_full(last), ((n_blocks - 1) / Stages) & 1);
    issue_pv(last);
    wgmma_wait<0>();
    fence_regs(o);
    release(v_empty(last));
  }

  // ------------------------------------------------------------- epilogue
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, x);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, x);
  }
  const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f;
  const float inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
  // O goes through this warpgroup's Q tile (every wgmma reading it is done),
  // in the 128-byte-swizzled layout the O descriptor stores from.
  unsigned char* q_generic = smem_raw + (q_wg - smem_u32(smem_raw));
#pragma unroll
  for (int i = 0; i < ORegs; i += 2) {
    const int col = (i / 4) * 8 + 2 * t;
    const int row = (i & 2) ? local_row + 8 : local_row;
    const float inv = (i & 2) ? inv_hi : inv_lo;
    const int chunk = col / 64, cc = col % 64;
    const int offset = chunk * 64 * 128 + row * 128 + (((cc >> 3) ^ (row & 7)) << 4) + (cc & 7) * 2;
    *reinterpret_cast<unsigned*>(q_generic + offset) =
        ElementOps<Element>::pack(o[i] * inv, o[i + 1] * inv);
  }
  fence_async_shared();
  named_barrier_sync(1 + wg, 128);
  if (threadIdx.x % 128 == 0) {
#pragma unroll
    for (int c = 0; c < L::kChunks; ++c)
      tma_store_4d(&p.o, q_wg + c * 64 * 128, c * 64, wg_first_row, head, batch);
    tma_store_commit();
  }
  if (a.lse != nullptr && t == 0) {
    const long long lse_base = (static_cast<long long>(batch) * a.heads + head) * a.seq_q;
    constexpr float kLn2 = 0.69314718055994531f;
    if (row_lo < a.seq_q)
      a.lse[lse_base + row_lo] = l_lo > 0.f ? (m_lo * sl2 + __log2f(l_lo)) * kLn2 : negative_infinity();
    if (row_hi < a.seq_q)
      a.lse[lse_base + row_hi] = l_hi > 0.f ? (m_hi * sl2 + __log2f(l_hi)) * kLn2 : negative_infinity();
  }
  if (threadIdx.x % 128 == 0) tma_store_wait_read();
}

}  // namespace flashcore
