// Forward attention, FlashAttention-2 style, for NVRTC.
//
// One block computes `BlockM` query rows of one (batch, head); each of its
// `Warps` warps owns BlockM / Warps of those rows, so softmax statistics never
// leave a warp. K and V stream through shared memory in `BlockN`-row tiles
// on a `Stages`-deep cp.async ring. S = Q K^T and O += P V run on tensor
// cores (mma.sync m16n8k16, fp32 accumulate); P goes from the S accumulators
// straight into A fragments without touching shared memory. The softmax is
// online, in base 2 with the scale folded in (one FMUL per score).
//
// Masking: key columns past seq_k (tail tile) and, when Causal, columns past
// the query row (top-left aligned, as PyTorch SDPA's is_causal). Tiles wholly
// above the diagonal are never loaded; tiles that need no mask skip it.
#pragma once

#include "common/attention_params.cuh"
#include "common/element_types.cuh"
#include "common/sm80_primitives.cuh"

namespace flashcore {

template <typename Element, int HeadDim, bool Causal, int BlockM, int BlockN, int Warps, int Stages,
          bool QInRegisters, bool SwizzledSmem>
__global__ void __launch_bounds__(Warps * 32)
    attention_fwd(const __grid_constant__ AttentionParams p) {
  constexpr int kThreads = Warps * 32;
  constexpr int kRowsPerWarp = BlockM / Warps;
  constexpr int kMTiles = kRowsPerWarp / 16;  // 16-row mma tiles per warp
  constexpr int kNTiles = BlockN / 8;         // 8-column S tiles per K tile
  constexpr int kDTiles = HeadDim / 8;        // 8-column O tiles
  static_assert(kRowsPerWarp % 16 == 0, "each warp needs whole 16-row mma tiles");
  static_assert(BlockN % 16 == 0 && HeadDim % 16 == 0, "mma k-steps are 16 wide");
  static_assert(Stages >= 1, "at least one K/V buffer");
  using Ops = ElementOps<Element>;
  using Tile = SmemTile<HeadDim, SwizzledSmem>;

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  const unsigned smem_q = shared_address(shared_bytes);
  const unsigned smem_k = smem_q + BlockM * Tile::kRowElements * 2;
  const unsigned smem_v = smem_k + Stages * BlockN * Tile::kRowElements * 2;
  constexpr unsigned kKvTileBytes = BlockN * Tile::kRowElements * 2;

  // Causal blocks with more query rows see more key tiles: launch the
  // heaviest first so the short ones fill the tail of the grid.
  const int m_block = Causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int kv_head = head / (p.heads / p.kv_heads);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int m_start = m_block * BlockM;

  const unsigned short* q = static_cast<const unsigned short*>(p.q) + batch * p.q_batch_stride +
                            head * p.q_head_stride + m_start * p.q_row_stride;
  const unsigned short* k =
      static_cast<const unsigned short*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const unsigned short* v =
      static_cast<const unsigned short*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;

  // Key tiles this block visits: causal rows m_start..m_start+BlockM-1 see
  // keys up to their own index, so later tiles are skipped entirely.
  const int key_end = Causal ? min(p.seq_k, m_start + BlockM) : p.seq_k;
  const int n_tiles = (key_end + BlockN - 1) / BlockN;

  load_tile_async<Tile, BlockM, kThreads>(smem_q, q, p.q_row_stride, p.seq_q - m_start);
  cp_async_commit();

  auto load_kv = [&](int tile) {
    const int buffer = tile % Stages;
    const int n_start = tile * BlockN;
    load_tile_async<Tile, BlockN, kThreads>(smem_k + buffer * kKvTileBytes,
                                               k + n_start * p.k_row_stride, p.k_row_stride,
                                               p.seq_k - n_start);
    load_tile_async<Tile, BlockN, kThreads>(smem_v + buffer * kKvTileBytes,
                                               v + n_start * p.v_row_stride, p.v_row_stride,
                                               p.seq_k - n_start);
  };
#pragma unroll
  for (int s = 0; s < Stages - 1; ++s) {
    if (s < n_tiles) load_kv(s);
    cp_async_commit();
  }

  float o_acc[kMTiles][kDTiles][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[mt][dt][e] = 0.f;
  // Per thread: rows (lane/4) and (lane/4 + 8) of each m-tile. row_max is
  // quad-uniform; row_sum holds this thread's columns only, reduced at the end.
  float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_max[mt][h] = negative_infinity();
      row_sum[mt][h] = 0.f;
    }

  const int warp_row0 = warp * kRowsPerWarp;  // within the block
  // QInRegisters: Q's A fragments are loaded once and held across key tiles
  // (kMTiles * HeadDim / 4 registers), saving one ldmatrix per k-step per
  // tile; otherwise they are re-read from shared memory, which is what keeps
  // 128-row tiles at D 128 unspilled. The tile config chooses.
  constexpr bool kQInRegisters = QInRegisters;
  unsigned q_frag[kQInRegisters ? kMTiles : 1][kQInRegisters ? HeadDim / 16 : 1][4];
  const int group = lane / 4;                 // mma accumulator row
  const int quad_lane = lane % 4;             // mma accumulator column pair
  const float scale_log2 = p.softmax_scale_log2;

  for (int tile = 0; tile < n_tiles; ++tile) {
    if (tile + Stages - 1 < n_tiles) load_kv(tile + Stages - 1);
    cp_async_commit();
    cp_async_wait<Stages - 1>();
    __syncthreads();

    const unsigned k_tile = smem_k + (tile % Stages) * kKvTileBytes;
    const unsigned v_tile = smem_v + (tile % Stages) * kKvTileBytes;
    const int n_start = tile * BlockN;

    // S = Q K^T for this warp's rows.
    float s_acc[kMTiles][kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s_acc[mt][nt][e] = 0.f;

#pragma unroll
    for (int kk = 0; kk < HeadDim / 16; ++kk) {
      unsigned a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if (!kQInRegisters || tile == 0) {
          const int row = warp_row0 + mt * 16 + (lane % 16);
          const int chunk = kk * 2 + lane / 16;
          ldmatrix_x4(a[mt], smem_q + Tile::offset(row, chunk) * 2);
          if constexpr (kQInRegisters)
#pragma unroll
            for (int e = 0; e < 4; ++e) q_frag[mt][kk][e] = a[mt][e];
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mt][e] = q_frag[kQInRegisters ? mt : 0][kQInRegisters ? kk : 0][e];
        }
      }
#pragma unroll
      for (int np = 0; np < kNTiles / 2; ++np) {
        unsigned b[4];  // {b0, b1} of n-tile 2np, then of 2np+1
        const int row = np * 16 + (lane % 8) + (lane / 16) * 8;
        const int chunk = kk * 2 + (lane / 8) % 2;
        ldmatrix_x4(b, k_tile + Tile::offset(row, chunk) * 2);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Ops::mma(s_acc[mt][2 * np], a[mt], b[0], b[1]);
          Ops::mma(s_acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }

    // Mask only where a column can be invalid: the tail tile, and for
    // causal the tiles that reach past the block's first row.
    const bool tail = n_start + BlockN > p.seq_k;
    const bool diagonal = Causal && n_start + BlockN - 1 > m_start + warp_row0;
    if (tail || diagonal) {
      // Column c of this thread's pair is valid while c <= limit, with c
      // counted from the pair's first column: one compare per score against
      // a compile-time offset, and one limit per accumulator row.
      const int pair_col0 = n_start + quad_lane * 2;
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          int limit = p.seq_k - 1 - pair_col0;
          if constexpr (Causal)
            limit = min(limit, m_start + warp_row0 + mt * 16 + group + h * 8 - pair_col0);
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int e = 2 * h; e < 2 * h + 2; ++e)
              if (nt * 8 + (e % 2) > limit) s_acc[mt][nt][e] = negative_infinity();
        }
    }

    // Online softmax in base 2: x = s * scale * log2(e).
    float correction[kMTiles][2];
    bool max_moved = false;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float tile_max = negative_infinity();
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
          tile_max = fmaxf(tile_max, fmaxf(s_acc[mt][nt][2 * h], s_acc[mt][nt][2 * h + 1]));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float new_max = fmaxf(row_max[mt][h], tile_max * scale_log2);
        max_moved |= new_max != row_max[mt][h];
        // A row with no valid column yet keeps max -inf; subtract 0 then so
        // exp2 sees -inf - 0 = -inf (-> 0), never -inf - -inf (NaN).
        const float safe_max = new_max == negative_infinity() ? 0.f : new_max;
        correction[mt][h] = exp2_approx(row_max[mt][h] - safe_max);
        row_max[mt][h] = new_max;
        float partial = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 2 * h; e < 2 * h + 2; ++e) {
            const float pe = exp2_approx(s_acc[mt][nt][e] * scale_log2 - safe_max);
            s_acc[mt][nt][e] = pe;
            partial += pe;
          }
        row_sum[mt][h] = row_sum[mt][h] * correction[mt][h] + partial;
      }
    }
    // Rescaling O costs one FMUL per accumulator; once the running maxima
    // settle most tiles move none of a warp's rows, and a vote can skip it.
    // Measured on the H100 (bench/RESULTS.md): with 128+ accumulators per
    // thread (D 128, 32 rows a warp) skipping gains 7-9%; with 64 the vote
    // costs more than it saves (2-7% slower at D 64), so it is not used there.
    constexpr bool kVoteRescale = kMTiles * kDTiles * 4 >= 128;
    if (!kVoteRescale || __any_sync(0xffffffffu, max_moved)) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
          for (int e = 0; e < 4; ++e) o_acc[mt][dt][e] *= correction[mt][e / 2];
    }

    // O += P V. The S accumulator layout of two adjacent n-tiles is exactly
    // the A-fragment layout of one 16-wide k-step.
#pragma unroll
    for (int kk = 0; kk < BlockN / 16; ++kk) {
      unsigned a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        a[mt][0] = Ops::pack(s_acc[mt][2 * kk][0], s_acc[mt][2 * kk][1]);
        a[mt][1] = Ops::pack(s_acc[mt][2 * kk][2], s_acc[mt][2 * kk][3]);
        a[mt][2] = Ops::pack(s_acc[mt][2 * kk + 1][0], s_acc[mt][2 * kk + 1][1]);
        a[mt][3] = Ops::pack(s_acc[mt][2 * kk + 1][2], s_acc[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        unsigned b[4];  // {b0, b1} of d-tile 2dp, then of 2dp+1
        const int row = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int chunk = dp * 2 + lane / 16;
        ldmatrix_x4_trans(b, v_tile + Tile::offset(row, chunk) * 2);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Ops::mma(o_acc[mt][2 * dp], a[mt], b[0], b[1]);
          Ops::mma(o_acc[mt][2 * dp + 1], a[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();  // this buffer is refilled by the next iteration's load
  }
  cp_async_wait<0>();

  // Normalize, stage the warp's rows in its own slice of the Q buffer, then
  // write O with 16-byte coalesced stores.
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = row_sum[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inverse = sum > 0.f ? 1.f / sum : 0.f;
      const int row = warp_row0 + mt * 16 + group + h * 8;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        const unsigned packed =
            Ops::pack(o_acc[mt][dt][2 * h] * inverse, o_acc[mt][dt][2 * h + 1] * inverse);
        const unsigned address = smem_q + (Tile::offset(row, dt) + quad_lane * 2) * 2;
        asm volatile("st.shared.b32 [%0], %1;" ::"r"(address), "r"(packed));
      }
      if (p.lse != nullptr && quad_lane == 0 && m_start + row < p.seq_q) {
        // ln(sum_j e^{s_j * scale}) = ln2 * (max_log2 + log2(sum)).
        const float lse = sum > 0.f ? (row_max[mt][h] + __log2f(sum)) * 0.69314718055994530942f
                                    : negative_infinity();
        p.lse[(static_cast<long long>(batch) * p.heads + head) * p.seq_q + m_start + row] = lse;
      }
    }
  }
  __syncthreads();

  unsigned short* o = static_cast<unsigned short*>(p.o) + batch * p.o_batch_stride +
                      head * p.o_head_stride + m_start * p.o_row_stride;
  constexpr int kOutChunks = BlockM * Tile::kChunks;
#pragma unroll
  for (int it = 0; it < (kOutChunks + kThreads - 1) / kThreads; ++it) {
    const int i = it * kThreads + static_cast<int>(threadIdx.x);
    if (kOutChunks % kThreads != 0 && i >= kOutChunks) break;
    const int row = i / Tile::kChunks;
    const int chunk = i % Tile::kChunks;
    if (m_start + row >= p.seq_q) continue;
    uint4 value;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(value.x), "=r"(value.y), "=r"(value.z), "=r"(value.w)
                 : "r"(smem_q + Tile::offset(row, chunk) * 2));
    *reinterpret_cast<uint4*>(o + row * p.o_row_stride + chunk * 8) = value;
  }
}

}  // namespace flashcore
