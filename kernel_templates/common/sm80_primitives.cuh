// Warp-level data movement shared by the templates: cp.async (global ->
// shared, 16 bytes, zero-fill past the end), ldmatrix, and the swizzled
// shared-memory tile layout that keeps both of them free of bank conflicts.
#pragma once

namespace flashcore {

__device__ __forceinline__ unsigned shared_address(const void* pointer) {
  unsigned long long address;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(address) : "l"(pointer));
  return static_cast<unsigned>(address);
}

// Copies 16 bytes, or writes 16 zero bytes when `valid` is false (tail rows):
// padding rows must hold finite values, or 0 * garbage in P.V could be NaN.
__device__ __forceinline__ void cp_async_16(unsigned dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(Pending));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float negative_infinity() { return __int_as_float(0xff800000); }

// A tile of Rows x HeadDim 16-bit elements in shared memory, stored in
// 16-byte chunks. ldmatrix reads 8 consecutive rows (8-aligned) at one
// logical chunk and cp.async writes consecutive chunks of a row; both must
// spread over all 8 bank groups (16 bytes each). Two layouts do that:
// - Swizzled (no padding): the chunk index is XOR-permuted by the row. With
//   a power-of-two number of chunks per row (head_dim 32, 64, 128, 256) the
//   XOR runs over the low 3 bits. head_dim 96 (12 chunks, a 192-byte row, so
//   rows alternate between two bank-group offsets 0 and 4) permutes chunks
//   0-7 by row & 7 and chunks 8-11 by (row / 2) & 3: either way the 8 rows
//   of one ldmatrix land in 8 distinct bank groups.
// - Padded: each row is one chunk longer, so row r starts r chunks further
//   round the banks.
template <int HeadDim, bool Swizzled>
struct SmemTile {
  static constexpr int kChunks = HeadDim / 8;  // 16-byte chunks per row
  static_assert(HeadDim % 16 == 0 && kChunks >= 4, "head_dim must be a multiple of 16, at least 32");
  static constexpr bool kPowerOfTwo = (kChunks & (kChunks - 1)) == 0;
  static_assert(!Swizzled || kPowerOfTwo || kChunks == 12, "no swizzle defined for this head_dim");
  static constexpr bool kSwizzled = Swizzled;
  static constexpr int kRowElements = Swizzled ? HeadDim : HeadDim + 8;  // row stride
  // Rows that share one XOR value: 8 chunks (128 bytes) span all banks once.
  static constexpr int kRowsPerPhase = kChunks >= 8 ? 1 : 8 / kChunks;
  static constexpr int kPhaseMask = (kChunks >= 8 ? 8 : kChunks) - 1;

  // Element offset of (row, chunk) within the tile.
  static __device__ __forceinline__ int offset(int row, int chunk) {
    if constexpr (!Swizzled) {
      return row * kRowElements + chunk * 8;
    } else if constexpr (kPowerOfTwo) {
      return row * HeadDim + ((chunk ^ ((row / kRowsPerPhase) & kPhaseMask)) * 8);
    } else {
      const int physical = chunk < 8 ? chunk ^ (row & 7) : 8 + ((chunk - 8) ^ ((row >> 1) & 3));
      return row * HeadDim + physical * 8;
    }
  }
};

// Global -> shared copy of `Rows` rows of a [rows, HeadDim] slab whose rows
// are `row_stride` elements apart; rows at or past `valid_rows` become zeros.
// Each thread keeps one chunk column and steps down the rows, so every copy is
// a base pointer plus a multiple of one stride: no per-chunk index math and
// no per-chunk addresses held in registers across the main loop.
template <typename Tile, int Rows, int Threads>
__device__ __forceinline__ void load_tile_async(unsigned smem_tile, const unsigned short* global,
                                                long long row_stride, int valid_rows) {
  if constexpr (Threads % Tile::kChunks == 0) {
    constexpr int kRowStep = Threads / Tile::kChunks;
    // A step of whole swizzle periods (8 rows, for every swizzle above) keeps
    // each thread's XOR fixed.
    constexpr bool kFixedPhase = !Tile::kSwizzled || kRowStep % 8 == 0 || Rows <= kRowStep;
    const int row0 = static_cast<int>(threadIdx.x) / Tile::kChunks;
    const int chunk = static_cast<int>(threadIdx.x) % Tile::kChunks;
    const unsigned short* src = global + row0 * row_stride + chunk * 8;
    const long long src_step = kRowStep * row_stride;
    const unsigned dst = smem_tile + Tile::offset(row0, chunk) * 2;
#pragma unroll
    for (int it = 0; it < (Rows + kRowStep - 1) / kRowStep; ++it) {
      const int row = row0 + it * kRowStep;
      if (Rows % kRowStep != 0 && row >= Rows) break;
      const bool valid = row < valid_rows;
      const unsigned row_dst = kFixedPhase ? dst + it * kRowStep * Tile::kRowElements * 2
                                           : smem_tile + Tile::offset(row, chunk) * 2;
      cp_async_16(row_dst, valid ? src : global, valid);
      src += src_step;  // a chain of adds, not one live address per row
    }
  } else {
    // Rows whose chunk count does not divide the block (head_dim 96).
    constexpr int kTotal = Rows * Tile::kChunks;
#pragma unroll
    for (int it = 0; it < (kTotal + Threads - 1) / Threads; ++it) {
      const int i = it * Threads + static_cast<int>(threadIdx.x);
      if (kTotal % Threads != 0 && i >= kTotal) break;
      const int row = i / Tile::kChunks;
      const int chunk = i % Tile::kChunks;
      const bool valid = row < valid_rows;
      cp_async_16(smem_tile + Tile::offset(row, chunk) * 2,
                  valid ? global + row * row_stride + chunk * 8 : global, valid);
    }
  }
}

}  // namespace flashcore
