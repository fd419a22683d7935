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

#include "common/attention_tma_params.cuh"
#include "common/element_types.cuh"
#include "common/sm80_primitives.cuh"  // negative_infinity
#include "hopper/sm90_primitives.cuh"
#include "hopper/wgmma_ops.cuh"

namespace flashcore {

namespace sm90 {

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Shared memory, every tile 1024-byte aligned (the 128-byte swizzle atom):
// Q per consumer warpgroup (64 rows x head_dim), then optionally O per
// warpgroup (else O goes out through the Q tile), the K ring, the V ring,
// and the mbarriers.
template <int HeadDim, int BlockN, int Stages, int Consumers, bool SeparateO>
struct Sm90Layout {
  static constexpr int kChunks = HeadDim / 64;               // 128-byte column chunks
  static constexpr int kQBytesPerWarpgroup = 64 * HeadDim * 2;
  static constexpr int kKvBytes = BlockN * HeadDim * 2;      // one K or V tile
  static constexpr int kQOffset = 0;
  static constexpr int kOOffset = kQOffset + Consumers * kQBytesPerWarpgroup;
  static constexpr int kKOffset = kOOffset + (SeparateO ? Consumers * kQBytesPerWarpgroup : 0);
  static constexpr int kVOffset = kKOffset + Stages * kKvBytes;
  static constexpr int kBarOffset = kVOffset + Stages * kKvBytes;
  // q_full, q_empty [Consumers each]; k_full, k_empty, v_full, v_empty [Stages each]
  static constexpr int kBarriers = 2 * Consumers + 4 * Stages;
  static constexpr int kBytes = kBarOffset + 8 * kBarriers + 1024;  // + alignment slack
};

// Tile t of the grid-stride loop: causal grids go heaviest row block first;
// otherwise the row blocks of one (batch, head) are neighbours, so the CTAs
// running at once share K and V in L2.
struct TileCoord {
  int m_block, head, batch;
};
template <bool Causal>
__device__ __forceinline__ TileCoord tile_coord(int tile, int m_blocks, int heads, int batch) {
  const int bh_count = heads * batch;
  int m_block, bh;
  if (Causal) {
    m_block = m_blocks - 1 - tile / bh_count;
    bh = tile % bh_count;
  } else {
    m_block = tile % m_blocks;
    bh = tile / m_blocks;
  }
  return TileCoord{m_block, bh % heads, bh / heads};
}

}  // namespace sm90

// Grid: (tiles) or, persistent, (min(tiles, CTAs resident at once)), where
// tiles = ceil(seq_q / (64 * Consumers)) * heads * batch; block 128 *
// (Consumers + 1) threads; each CTA walks tiles blockIdx.x, + gridDim.x, ...
template <typename Element, int HeadDim, bool Causal, int BlockN, int Stages, int Consumers,
          bool Pingpong, bool SeparateO, int ConsumerRegs, int ProducerRegs>
__global__ void __launch_bounds__(128 * (Consumers + 1), 1)
    attention_fwd_sm90(const __grid_constant__ AttentionTmaParams p) {
  using namespace sm90;
  using L = Sm90Layout<HeadDim, BlockN, Stages, Consumers, SeparateO>;
  static_assert(HeadDim % 64 == 0 && HeadDim <= 256, "head_dim must be 64, 128, 192 or 256");
  static_assert(BlockN % 16 == 0 && BlockN <= 256, "block_n must be a multiple of 16, <= 256");
  static_assert(!Pingpong || Consumers == 2, "ping-pong takes two consumer warpgroups");
  constexpr int BlockM = 64 * Consumers;
  constexpr int SRegs = BlockN / 2;
  constexpr int ORegs = HeadDim / 2;
  // The softmax of block n runs under the P V wgmma of block n-1 (see the
  // loop): measured faster from head_dim 128 on (H100, bench/RESULTS.md).
  constexpr bool kPvUnderSoftmax = HeadDim >= 128;

  extern __shared__ unsigned char smem_raw[];
  const unsigned base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const unsigned q_smem = base + L::kQOffset;
  const unsigned k_smem = base + L::kKOffset;
  const unsigned v_smem = base + L::kVOffset;
  const unsigned bars = base + L::kBarOffset;
  auto q_full = [&](int w) { return bars + 8u * w; };
  auto q_empty = [&](int w) { return bars + 8u * (Consumers + w); };
  auto k_full = [&](int s) { return bars + 8u * (2 * Consumers + s); };
  auto k_empty = [&](int s) { return bars + 8u * (2 * Consumers + Stages + s); };
  auto v_full = [&](int s) { return bars + 8u * (2 * Consumers + 2 * Stages + s); };
  auto v_empty = [&](int s) { return bars + 8u * (2 * Consumers + 3 * Stages + s); };

  const AttentionParams& a = p.attn;
  const int m_blocks = (a.seq_q + BlockM - 1) / BlockM;
  const int tiles = m_blocks * a.heads * a.batch;
  const int group = a.heads / a.kv_heads;
  auto key_blocks = [&](int m_block) {
    const int kv_rows = Causal ? min(a.seq_k, (m_block + 1) * BlockM) : a.seq_k;
    return (kv_rows + BlockN - 1) / BlockN;
  };

  const int warpgroup = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    for (int w = 0; w < Consumers; ++w) {
      mbar_init(q_full(w), 1);
      mbar_init(q_empty(w), 4);  // lane 0 of each of the warpgroup's warps
    }
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
      int it = 0;  // K/V ring position, continued across tiles
      int local = 0;
      for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
        const TileCoord tc = tile_coord<Causal>(tile, m_blocks, a.heads, a.batch);
        const int kv_head = tc.head / group;
        for (int w = 0; w < Consumers; ++w) {
          mbar_wait(q_empty(w), (local & 1) ^ 1);
          mbar_expect_tx(q_full(w), L::kQBytesPerWarpgroup);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            tma_load_4d(q_smem + w * L::kQBytesPerWarpgroup + c * 64 * 128, &p.q, q_full(w),
                        c * 64, tc.m_block * BlockM + w * 64, tc.head, tc.batch);
        }
        const int n_blocks = key_blocks(tc.m_block);
        for (int n = 0; n < n_blocks; ++n, ++it) {
          const int s = it % Stages;
          const unsigned phase = (it / Stages) & 1;
          mbar_wait(k_empty(s), phase ^ 1);
          mbar_expect_tx(k_full(s), L::kKvBytes);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            tma_load_4d(k_smem + s * L::kKvBytes + c * BlockN * 128, &p.k, k_full(s), c * 64,
                        n * BlockN, kv_head, tc.batch);
          mbar_wait(v_empty(s), phase ^ 1);
          mbar_expect_tx(v_full(s), L::kKvBytes);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            tma_load_4d(v_smem + s * L::kKvBytes + c * BlockN * 128, &p.v, v_full(s), c * 64,
                        n * BlockN, kv_head, tc.batch);
        }
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
  const unsigned q_wg = q_smem + wg * L::kQBytesPerWarpgroup;
  const unsigned o_wg = SeparateO ? base + L::kOOffset + wg * L::kQBytesPerWarpgroup : q_wg;
  unsigned char* o_generic = smem_raw + (o_wg - smem_u32(smem_raw));
  const float sl2 = a.softmax_scale_log2;

  float o[ORegs];
  float s[SRegs];
  unsigned pf[BlockN / 16][4];  // P, the A operand of the P V wgmma
  float m_lo, m_hi, l_lo, l_hi;
  int row_lo = 0, row_hi = 0, wg_first_row = 0, n_blocks = 0;

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
  // scaled scores in s and the rescale factors for O in corr_*; returns a
  // value that is always true but read after the last exponential.
  auto softmax = [&](int n, float& corr_lo, float& corr_hi) -> bool {
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
    // Always true (row sums are never negative; NaN only from NaN inputs),
    // but ptxas cannot know: a branch on it after every exponential keeps
    // the wait for the P V wgmma below the softmax (see the loop).
    if constexpr (kPvUnderSoftmax) return __any_sync(0xffffffffu, l_lo + l_hi >= 0.f);
    return true;
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
  // Ping-pong: warpgroup w waits on barrier 3 + w before issuing its GEMMs
  // and then lets the other one go; on every tile warpgroup 1 lets
  // warpgroup 0 go first and skips its last hand-over, which nobody awaits.
  auto turn_begin = [&]() {
    if constexpr (Pingpong) named_barrier_sync(3 + wg, 256);
  };
  auto turn_end = [&](int n) {
    if constexpr (Pingpong) {
      if (!(wg == 1 && n == n_blocks - 1)) named_barrier_arrive(3 + (1 - wg), 256);
    }
  };

  int it = 0;  // K/V ring position, as the producer counts it
  int local = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
    const TileCoord tc = tile_coord<Causal>(tile, m_blocks, a.heads, a.batch);
    wg_first_row = tc.m_block * BlockM + wg * 64;
    row_lo = wg_first_row + local_row;
    row_hi = row_lo + 8;
    n_blocks = key_blocks(tc.m_block);
#pragma unroll
    for (int i = 0; i < ORegs; ++i) o[i] = 0.f;
    m_lo = m_hi = negative_infinity();
    l_lo = l_hi = 0.f;
    if constexpr (Pingpong) {
      if (wg == 1) named_barrier_arrive(3, 256);
    }

    // Block 0 on its own, so that the loop below has one wgmma pattern and
    // ptxas keeps every wgmma asynchronous.
    {
      const int stage = it % Stages;
      mbar_wait(q_full(wg), local & 1);
      mbar_wait(k_full(stage), (it / Stages) & 1);
      turn_begin();
      issue_s(stage);
      turn_end(0);
      wgmma_wait<0>();
      fence_regs(s);
      release(k_empty(stage));
      if (SeparateO && n_blocks == 1) release(q_empty(wg));
      float corr_lo, corr_hi;  // O is still zero: nothing to rescale
      softmax(0, corr_lo, corr_hi);
      pack_p();
    }
    for (int n = 1; n < n_blocks; ++n) {
      const int stage = (it + n) % Stages;
      const unsigned phase = ((it + n) / Stages) & 1;
      const int prev = (it + n - 1) % Stages;
      const unsigned prev_phase = ((it + n - 1) / Stages) & 1;
      mbar_wait(k_full(stage), phase);
      mbar_wait(v_full(prev), prev_phase);
      turn_begin();
      issue_s(stage);
      issue_pv(prev);  // P V of block n-1 runs under the softmax of block n
      turn_end(n);
      wgmma_wait<1>();
      fence_regs(s);
      release(k_empty(stage));
      if (SeparateO && n == n_blocks - 1) release(q_empty(wg));  // the last read of Q is done
      float corr_lo, corr_hi;
      // ptxas schedules a plain wait for the P V wgmma of block n-1 as early
      // as it can, above the softmax meant to run under that product; in the
      // arms of a branch on the softmax's last value it stays below it. At
      // head_dim 64 that product is short and the branch costs more than it
      // hides (H100: 4% slower at 4x16x2048, 1% faster at 16384), so there
      // the branch folds away and the wait moves up as before.
      if (softmax(n, corr_lo, corr_hi)) {
        wgmma_wait<0>();
        fence_regs(o);
#pragma unroll
        for (int i = 0; i < ORegs; ++i) o[i] *= (i & 2) ? corr_hi : corr_lo;
      } else {
        wgmma_wait<0>();
        fence_regs(o);
      }
      release(v_empty(prev));
      pack_p();
    }
    {
      const int last = (it + n_blocks - 1) % Stages;
      mbar_wait(v_full(last), ((it + n_blocks - 1) / Stages) & 1);
      issue_pv(last);
      wgmma_wait<0>();
      fence_regs(o);
      release(v_empty(last));
    }
    it += n_blocks;

    // ----------------------------------------------------------- epilogue
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      l_lo += __shfl_xor_sync(0xffffffffu, l_lo, x);
      l_hi += __shfl_xor_sync(0xffffffffu, l_hi, x);
    }
    const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f;
    const float inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
    // The O tile must be free: its previous store has read it.
    if constexpr (SeparateO) {
      if (threadIdx.x % 128 == 0) tma_store_wait_read();
      named_barrier_sync(1 + wg, 128);
    }
    // O is written in the 128-byte-swizzled layout the O descriptor stores from.
#pragma unroll
    for (int i = 0; i < ORegs; i += 2) {
      const int col = (i / 4) * 8 + 2 * t;
      const int row = (i & 2) ? local_row + 8 : local_row;
      const float inv = (i & 2) ? inv_hi : inv_lo;
      const int chunk = col / 64, cc = col % 64;
      const int offset =
          chunk * 64 * 128 + row * 128 + (((cc >> 3) ^ (row & 7)) << 4) + (cc & 7) * 2;
      *reinterpret_cast<unsigned*>(o_generic + offset) =
          ElementOps<Element>::pack(o[i] * inv, o[i + 1] * inv);
    }
    fence_async_shared();
    named_barrier_sync(1 + wg, 128);
    if (threadIdx.x % 128 == 0) {
#pragma unroll
      for (int c = 0; c < L::kChunks; ++c)
        tma_store_4d(&p.o, o_wg + c * 64 * 128, c * 64, wg_first_row, tc.head, tc.batch);
      tma_store_commit();
    }
    if (a.lse != nullptr && t == 0) {
      const long long lse_base = (static_cast<long long>(tc.batch) * a.heads + tc.head) * a.seq_q;
      constexpr float kLn2 = 0.69314718055994531f;
      if (row_lo < a.seq_q)
        a.lse[lse_base + row_lo] = l_lo > 0.f ? (m_lo * sl2 + __log2f(l_lo)) * kLn2 : negative_infinity();
      if (row_hi < a.seq_q)
        a.lse[lse_base + row_hi] = l_hi > 0.f ? (m_hi * sl2 + __log2f(l_hi)) * kLn2 : negative_infinity();
    }
    if constexpr (!SeparateO) {
      // Q's tile carried O: free it for the next tile once the store has read it.
      if (threadIdx.x % 128 == 0) tma_store_wait_read();
      named_barrier_sync(1 + wg, 128);
      release(q_empty(wg));
    }
  }
  if (threadIdx.x % 128 == 0) tma_store_wait_read();
}

}  // namespace flashcore
