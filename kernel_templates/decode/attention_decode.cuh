// Decode attention (few query rows, long KV cache), split-KV, for NVRTC.
//
// Decode is a stream of the KV cache: every key and value is read once and
// used by the few query rows that share its kv head. So:
// - GQA packing: one block takes all `group = heads / kv_heads` query heads
//   of one kv head, times seq_q rows, as the rows of one tile (packed row m is
//   query row m % seq_q of head kv_head * group + m / seq_q). The cache is read
//   once per kv head, not once per query head.
// - Split KV: the key tiles of one (batch, kv head) are divided among
//   num_splits blocks (grid: num_splits x kv_heads x batch), so that a short
//   batch still fills the GPU. Each split writes its output, normalised by
//   its own sum, and its base-2 log-sum-exp to the workspace; a combine merges
//   them in split order (fixed: the result is deterministic). The combine is
//   the second kernel below, or, with FusedCombine, the last split block of a
//   (batch, kv head) to arrive (an atomic counter per pair, reset by that
//   block). With num_splits == 1 the split kernel writes O and LSE itself.
// - Inside a block, warp w takes 16 packed rows (m-tile w % MTiles) and a
//   BlockN / (Warps / MTiles)-key slice of every K/V tile, with its own online
//   softmax state; the warps' states merge through shared memory at the end.
//   K/V tiles stream through a Stages-deep cp.async ring (16-byte copies,
//   zero-filled past seq_k), one barrier per tile. S = Q K^T and O += P V run
//   on mma.sync m16n8k16 with fp32 accumulation (rows past group * seq_q are
//   zeros and are never written). The softmax is online, in base 2 with the
//   scale folded in.
//
// No mask but seq_k: decode is non-causal (a causal request with seq_q > 1 is
// prefill's; the project's causal convention is top-left).
#pragma once

#include "common/element_types.cuh"
#include "common/sm80_primitives.cuh"
#include "decode/decode_params.cuh"

namespace flashcore {
namespace decode_detail {

// Loads of data that other blocks of the same launch wrote (fused combine):
// L2 only, never a stale L1 line.
__device__ __forceinline__ float load_cg(const float* address) {
  float value;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(value) : "l"(address));
  return value;
}

__device__ __forceinline__ float4 load_cg4(const float* address) {
  float4 value;
  asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(value.x), "=f"(value.y), "=f"(value.z), "=f"(value.w)
               : "l"(address));
  return value;
}

template <typename Element>
__device__ __forceinline__ uint4 pack8(const float (&x)[8]) {
  using Ops = ElementOps<Element>;
  uint4 packed;
  packed.x = Ops::pack(x[0], x[1]);
  packed.y = Ops::pack(x[2], x[3]);
  packed.z = Ops::pack(x[4], x[5]);
  packed.w = Ops::pack(x[6], x[7]);
  return packed;
}

// Output row `row` = (batch * heads + head) * seq_q + query_row, columns
// [col, col + 8): merge the num_splits partials in split order, write O (and
// LSE from the thread of column 0).
template <typename Element, int HeadDim>
__device__ __forceinline__ void combine_chunk(const DecodeParams& p, long long row, int col) {
  const int splits = p.num_splits;
  const float* lse_row = p.lse_partial + row * splits;
  float row_max = negative_infinity();
  for (int s = 0; s < splits; ++s) row_max = fmaxf(row_max, load_cg(lse_row + s));
  float acc[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] = 0.f;
  float sum = 0.f;
  if (row_max != negative_infinity()) {
    const float* o_row = p.o_partial + row * splits * HeadDim + col;
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {
      const float weight = exp2_approx(load_cg(lse_row + s) - row_max);  // -inf -> 0
      const float4 lo = load_cg4(o_row + s * HeadDim);
      const float4 hi = load_cg4(o_row + s * HeadDim + 4);
      sum += weight;
      acc[0] += weight * lo.x;
      acc[1] += weight * lo.y;
      acc[2] += weight * lo.z;
      acc[3] += weight * lo.w;
      acc[4] += weight * hi.x;
      acc[5] += weight * hi.y;
      acc[6] += weight * hi.z;
      acc[7] += weight * hi.w;
    }
  }
  const float inverse = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] *= inverse;
  const int query_row = static_cast<int>(row % p.seq_q);
  const long long batch_head = row / p.seq_q;
  const int head = static_cast<int>(batch_head % p.heads);
  const int batch = static_cast<int>(batch_head / p.heads);
  unsigned short* o = static_cast<unsigned short*>(p.o) + batch * p.o_batch_stride +
                      head * p.o_head_stride + query_row * p.o_row_stride + col;
  *reinterpret_cast<uint4*>(o) = pack8<Element>(acc);
  if (p.lse != nullptr && col == 0)
    p.lse[row] = sum > 0.f ? (row_max + __log2f(sum)) * 0.69314718055994530942f : negative_infinity();
}

}  // namespace decode_detail

template <typename Element, int HeadDim, int PackedRows, int BlockN, int Warps, int Stages,
          bool FusedCombine>
__global__ void __launch_bounds__(Warps * 32)
    attention_decode_split(const __grid_constant__ DecodeParams p) {
  constexpr int kThreads = Warps * 32;
  constexpr int kMTiles = PackedRows / 16;     // 16-row m-tiles of packed rows
  static_assert(PackedRows % 16 == 0 && PackedRows >= 16, "packed rows come in 16-row mma tiles");
  static_assert(Warps % kMTiles == 0, "every warp takes one whole m-tile");
  constexpr int kWarpsN = Warps / kMTiles;     // warps sharing an m-tile split each key tile
  constexpr int kKeysPerWarp = BlockN / kWarpsN;
  static_assert(BlockN % (16 * kWarpsN) == 0, "each warp's key slice is whole 16-key mma steps");
  constexpr int kNTiles = kKeysPerWarp / 8;    // 8-column S tiles per warp and K tile
  constexpr int kDTiles = HeadDim / 8;         // 8-column O tiles
  static_assert(HeadDim % 16 == 0, "mma k-steps are 16 wide");
  static_assert(Stages >= 2, "the ring needs a tile in flight while one is read");
  // Q's A fragments held across tiles cost HeadDim / 4 registers; at 256
  // that with 128 O accumulators is past the budget, so Q is re-read from
  // shared memory there (one ldmatrix per k-step per tile, off the critical
  // memory stream).
  constexpr bool kQInRegisters = HeadDim <= 128;
  constexpr int kOStride = HeadDim + 4;        // epilogue rows, floats (bank spread)
  using Ops = ElementOps<Element>;
  using Tile = SmemTile<HeadDim, true>;
  static_assert(kThreads % Tile::kChunks == 0, "tile loader: threads cover whole rows");

  extern __shared__ __align__(128) unsigned char shared_bytes[];
  const unsigned smem_q = shared_address(shared_bytes);
  const unsigned smem_ring = smem_q + PackedRows * HeadDim * 2;
  constexpr unsigned kTileBytes = BlockN * HeadDim * 2;  // one K or one V tile
  float* scratch = reinterpret_cast<float*>(shared_bytes + PackedRows * HeadDim * 2);

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int batch = blockIdx.z;
  const int group = p.heads / p.kv_heads;
  const int rows = group * p.seq_q;  // packed rows in use, <= PackedRows (the host checks)
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  const int tiles = decode_key_tiles(p.seq_k, BlockN);
  const int tiles_per_split = decode_ceil_div(tiles, p.num_splits);
  const int tile_begin = min(split * tiles_per_split, tiles);
  const int n_tiles = min(tile_begin + tiles_per_split, tiles) - tile_begin;

  const unsigned short* k =
      static_cast<const unsigned short*>(p.k) + batch * p.k_batch_stride + kv_head * p.k_head_stride;
  const unsigned short* v =
      static_cast<const unsigned short*>(p.v) + batch * p.v_batch_stride + kv_head * p.v_head_stride;

  {
    const unsigned short* q = static_cast<const unsigned short*>(p.q) + batch * p.q_batch_stride +
                              static_cast<long long>(kv_head) * group * p.q_head_stride;
    constexpr int kQChunks = PackedRows * Tile::kChunks;
#pragma unroll
    for (int it = 0; it < (kQChunks + kThreads - 1) / kThreads; ++it) {
      const int i = it * kThreads + static_cast<int>(threadIdx.x);
      if (kQChunks % kThreads != 0 && i >= kQChunks) break;
      const int m = i / Tile::kChunks;
      const int chunk = i % Tile::kChunks;
      const bool valid = m < rows;
      const unsigned short* src =
          valid ? q + (m / p.seq_q) * p.q_head_stride + (m % p.seq_q) * p.q_row_stride + chunk * 8 : q;
      cp_async_16(smem_q + Tile::offset(m, chunk) * 2, src, valid);
    }
  }
  cp_async_commit();

  auto load_kv = [&](int j) {  // local tile j of this split -> ring slot j % Stages
    const unsigned dst = smem_ring + (j % Stages) * 2 * kTileBytes;
    const int n_start = (tile_begin + j) * BlockN;
    load_tile_async<Tile, BlockN, kThreads>(dst, k + n_start * p.k_row_stride, p.k_row_stride,
                                            p.seq_k - n_start);
    load_tile_async<Tile, BlockN, kThreads>(dst + kTileBytes, v + n_start * p.v_row_stride,
                                            p.v_row_stride, p.seq_k - n_start);
  };
#pragma unroll
  for (int s = 0; s < Stages - 1; ++s) {
    if (s < n_tiles) load_kv(s);
    cp_async_commit();
  }

  const int m_tile = warp % kMTiles;
  const int key0 = (warp / kMTiles) * kKeysPerWarp;  // this warp's slice within each tile
  const int group_row = lane / 4;                     // mma accumulator row (and +8)
  const int quad_lane = lane % 4;                     // mma accumulator column pair
  const float scale_log2 = p.softmax_scale_log2;

  float o_acc[kDTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[dt][e] = 0.f;
  float row_max[2] = {negative_infinity(), negative_infinity()};
  float row_sum[2] = {0.f, 0.f};  // this thread's columns; quad-reduced at the end

  // Q landed (the oldest group) once all but the Stages - 1 tile groups are done.
  cp_async_wait<Stages - 1>();
  __syncthreads();
  unsigned q_frag[kQInRegisters ? HeadDim / 16 : 1][4];
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int kk = 0; kk < HeadDim / 16; ++kk)
      ldmatrix_x4(q_frag[kk], smem_q + Tile::offset(m_tile * 16 + lane % 16, kk * 2 + lane / 16) * 2);
  }

  for (int j = 0; j < n_tiles; ++j) {
    // Tile j landed for this thread; the barrier makes it everyone's and
    // says every warp is done with tile j - 1, whose slot the next load takes.
    cp_async_wait<Stages - 2>();
    __syncthreads();
    if (j + Stages - 1 < n_tiles) load_kv(j + Stages - 1);
    cp_async_commit();

    const unsigned k_tile = smem_ring + (j % Stages) * 2 * kTileBytes;
    const unsigned v_tile = k_tile + kTileBytes;
    const int n_start = (tile_begin + j) * BlockN;

    float s_acc[kNTiles][4];
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s_acc[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HeadDim / 16; ++kk) {
      unsigned a[4];
      if constexpr (kQInRegisters) {
#pragma unroll
        for (int e = 0; e < 4; ++e) a[e] = q_frag[kQInRegisters ? kk : 0][e];
      } else {
        ldmatrix_x4(a, smem_q + Tile::offset(m_tile * 16 + lane % 16, kk * 2 + lane / 16) * 2);
      }
#pragma unroll
      for (int np = 0; np < kNTiles / 2; ++np) {
        unsigned b[4];  // {b0, b1} of n-tile 2np, then of 2np+1
        const int row = key0 + np * 16 + (lane % 8) + (lane / 16) * 8;
        ldmatrix_x4(b, k_tile + Tile::offset(row, kk * 2 + (lane / 8) % 2) * 2);
        Ops::mma(s_acc[2 * np], a, b[0], b[1]);
        Ops::mma(s_acc[2 * np + 1], a, b[2], b[3]);
      }
    }

    if (n_start + BlockN > p.seq_k) {  // the last tile of the cache: mask keys past seq_k
      const int limit = p.seq_k - 1 - (n_start + key0 + quad_lane * 2);
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (nt * 8 + (e % 2) > limit) s_acc[nt][e] = negative_infinity();
    }

    // Online softmax in base 2 on rows group_row (h 0) and group_row + 8 (h 1).
    float correction[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = negative_infinity();
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
        tile_max = fmaxf(tile_max, fmaxf(s_acc[nt][2 * h], s_acc[nt][2 * h + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[h], tile_max * scale_log2);
      // No valid column yet (a warp slice wholly past seq_k): subtract 0, so
      // exp2 sees -inf - 0 (-> 0), never -inf - -inf (NaN).
      const float safe_max = new_max == negative_infinity() ? 0.f : new_max;
      correction[h] = exp2_approx(row_max[h] - safe_max);
      row_max[h] = new_max;
      float partial = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 2 * h; e < 2 * h + 2; ++e) {
          const float pe = exp2_approx(s_acc[nt][e] * scale_log2 - safe_max);
          s_acc[nt][e] = pe;
          partial += pe;
        }
      row_sum[h] = row_sum[h] * correction[h] + partial;
    }
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o_acc[dt][e] *= correction[e / 2];

    // O += P V: two adjacent S n-tiles are one 16-key A fragment.
#pragma unroll
    for (int kk = 0; kk < kNTiles / 2; ++kk) {
      unsigned a[4];
      a[0] = Ops::pack(s_acc[2 * kk][0], s_acc[2 * kk][1]);
      a[1] = Ops::pack(s_acc[2 * kk][2], s_acc[2 * kk][3]);
      a[2] = Ops::pack(s_acc[2 * kk + 1][0], s_acc[2 * kk + 1][1]);
      a[3] = Ops::pack(s_acc[2 * kk + 1][2], s_acc[2 * kk + 1][3]);
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        unsigned b[4];  // {b0, b1} of d-tile 2dp, then of 2dp+1
        const int row = key0 + kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        ldmatrix_x4_trans(b, v_tile + Tile::offset(row, dp * 2 + lane / 16) * 2);
        Ops::mma(o_acc[2 * dp], a, b[0], b[1]);
        Ops::mma(o_acc[2 * dp + 1], a, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the ring: the epilogue reuses it

  // Each warp's unnormalised O and (max, sum) per row go to shared memory.
  float* o_scratch = scratch;                             // [Warps][16][kOStride]
  float* stats = scratch + Warps * 16 * kOStride;         // [Warps][16][max, sum]
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = row_sum[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = group_row + h * 8;
    float* dst = o_scratch + (warp * 16 + row) * kOStride + quad_lane * 2;
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt)
      *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(o_acc[dt][2 * h], o_acc[dt][2 * h + 1]);
    if (quad_lane == 0) {
      stats[(warp * 16 + row) * 2] = row_max[h];
      stats[(warp * 16 + row) * 2 + 1] = sum;
    }
  }
  __syncthreads();

  // Merge the warps of each m-tile, 8 columns per thread, and write O (one
  // split) or this split's partial.
  constexpr int kColChunks = HeadDim / 8;
  constexpr int kOutChunks = PackedRows * kColChunks;
  const bool direct = p.num_splits == 1;
#pragma unroll
  for (int it = 0; it < (kOutChunks + kThreads - 1) / kThreads; ++it) {
    const int i = it * kThreads + static_cast<int>(threadIdx.x);
    const int m = i / kColChunks;
    if (m >= rows) break;  // i grows with it: every later chunk is past the rows too
    const int c = i % kColChunks;
    const int r = m % 16;
    float merged_max = negative_infinity();
#pragma unroll
    for (int wn = 0; wn < kWarpsN; ++wn)
      merged_max = fmaxf(merged_max, stats[((m / 16 + wn * kMTiles) * 16 + r) * 2]);
    float acc[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = 0.f;
    float sum = 0.f;
#pragma unroll
    for (int wn = 0; wn < kWarpsN; ++wn) {
      const int w = m / 16 + wn * kMTiles;
      const float w_max = stats[(w * 16 + r) * 2];
      if (w_max == negative_infinity()) continue;  // a slice with no valid key
      const float f = exp2_approx(w_max - merged_max);
      sum += f * stats[(w * 16 + r) * 2 + 1];
      const float* src = o_scratch + (w * 16 + r) * kOStride + c * 8;
      const float4 lo = *reinterpret_cast<const float4*>(src);
      const float4 hi = *reinterpret_cast<const float4*>(src + 4);
      acc[0] += f * lo.x;
      acc[1] += f * lo.y;
      acc[2] += f * lo.z;
      acc[3] += f * lo.w;
      acc[4] += f * hi.x;
      acc[5] += f * hi.y;
      acc[6] += f * hi.z;
      acc[7] += f * hi.w;
    }
    const float inverse = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] *= inverse;
    const float lse2 = sum > 0.f ? merged_max + __log2f(sum) : negative_infinity();
    const int head = kv_head * group + m / p.seq_q;
    const int query_row = m % p.seq_q;
    const long long out_row = (static_cast<long long>(batch) * p.heads + head) * p.seq_q + query_row;
    if (direct) {
      unsigned short* o = static_cast<unsigned short*>(p.o) + batch * p.o_batch_stride +
                          head * p.o_head_stride + query_row * p.o_row_stride + c * 8;
      *reinterpret_cast<uint4*>(o) = decode_detail::pack8<Element>(acc);
      if (p.lse != nullptr && c == 0) p.lse[out_row] = lse2 * 0.69314718055994530942f;
    } else {
      float* dst = p.o_partial + (out_row * p.num_splits + split) * HeadDim + c * 8;
      *reinterpret_cast<float4*>(dst) = make_float4(acc[0], acc[1], acc[2], acc[3]);
      *reinterpret_cast<float4*>(dst + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
      if (c == 0) p.lse_partial[out_row * p.num_splits + split] = lse2;
    }
  }

  if constexpr (FusedCombine) {
    if (direct) return;
    // The threadfence-reduction pattern: publish the partials, then count
    // arrivals; the block that arrives last merges every split of the pair.
    __shared__ int last_block;
    __threadfence();
    __syncthreads();
    unsigned* counter = p.split_counters + batch * p.kv_heads + kv_head;
    if (threadIdx.x == 0) last_block = atomicAdd(counter, 1u) == static_cast<unsigned>(p.num_splits - 1);
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    for (int i = threadIdx.x; i < rows * kColChunks; i += kThreads) {
      const int m = i / kColChunks;
      const int head = kv_head * group + m / p.seq_q;
      const long long out_row =
          (static_cast<long long>(batch) * p.heads + head) * p.seq_q + m % p.seq_q;
      decode_detail::combine_chunk<Element, HeadDim>(p, out_row, (i % kColChunks) * 8);
    }
    if (threadIdx.x == 0) *counter = 0u;  // every split has arrived: ready for the next launch
  }
}

// Merges the splits' partials: one thread per 8 columns of an output row.
template <typename Element, int HeadDim>
__global__ void __launch_bounds__(kDecodeCombineThreads)
    attention_decode_combine(const __grid_constant__ DecodeParams p) {
  constexpr int kColChunks = HeadDim / 8;
  static_assert(kDecodeCombineThreads % kColChunks == 0, "whole rows per block");
  const long long row = static_cast<long long>(blockIdx.x) * decode_combine_rows_per_block(HeadDim) +
                        threadIdx.x / kColChunks;
  if (row >= static_cast<long long>(p.batch) * p.heads * p.seq_q) return;
  decode_detail::combine_chunk<Element, HeadDim>(p, row, (threadIdx.x % kColChunks) * 8);
}

}  // namespace flashcore
