// The decode family's one ABI: the params struct of its split kernel and its
// combine kernel, plus the geometry both sides derive from the shape (tiles
// per split, workspace sizes, the default number of splits). NVRTC compiles
// this header into the kernels and host code includes the same file, so the
// two cannot disagree. No host headers: it must compile under NVRTC as it is
// and as plain C++17.
//
// Bump FLASHCORE_DECODE_ABI_VERSION whenever a field moves or the workspace
// layout changes.
#pragma once

#define FLASHCORE_DECODE_ABI_VERSION 2

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FLASHCORE_HOST_DEVICE __host__ __device__
#else
#define FLASHCORE_HOST_DEVICE
#endif

namespace flashcore {

// Passed by value as a __grid_constant__ parameter to both kernels of a
// decode launch. Strides are in elements, as in AttentionParams: head_dim is
// contiguous and every other stride is a multiple of 8 elements (16-byte
// loads). Both layouts, (B, H, S, D) and (B, S, H, D), are a choice of
// strides.
struct DecodeParams {
  const void* q;  // [batch, heads,    seq_q, head_dim] through the strides below
  const void* k;  // [batch, kv_heads, seq_k, head_dim]
  const void* v;  // [batch, kv_heads, seq_k, head_dim]
  void* o;        // [batch, heads,    seq_q, head_dim]
  float* lse;     // optional [batch, heads, seq_q] natural-log sum-exp; null to skip

  // Workspace, used only when num_splits > 1 (see decode_workspace_bytes):
  // each split's output normalised by its own sum, and its log-sum-exp in
  // base 2 (of the scaled scores), row-major in the order of the brackets.
  float* o_partial;    // [batch, heads, seq_q, num_splits, head_dim]
  float* lse_partial;  // [batch, heads, seq_q, num_splits]
  // Only for the fused combine (the last split block of a (batch, kv head)
  // merges): arrival counters, zero before the first launch; the merging
  // block sets its counter back to zero, so they stay zero between launches.
  unsigned* split_counters;  // [batch, kv_heads]

  long long q_batch_stride, q_head_stride, q_row_stride;
  long long k_batch_stride, k_head_stride, k_row_stride;
  long long v_batch_stride, v_head_stride, v_row_stride;
  long long o_batch_stride, o_head_stride, o_row_stride;

  int batch;
  int heads;
  int kv_heads;    // divides heads; query head h reads kv head h / (heads / kv_heads)
  int seq_q;       // rows per head; group * seq_q must fit the kernel's PackedRows
  int seq_k;       // >= 1
  int num_splits;  // 1..kDecodeMaxSplits; splits past the last key tile write an empty partial

  float softmax_scale;       // usually 1/sqrt(head_dim)
  float softmax_scale_log2;  // softmax_scale * log2(e): the kernels work in exp2
};

// ------------------------------------------------------------------ geometry
// Split kernel: grid (num_splits, kv_heads, batch), Warps * 32 threads,
// decode_smem_bytes(...) of dynamic shared memory. Split s takes key tiles
// [s * tps, min((s + 1) * tps, tiles)) with tps = decode_tiles_per_split.
// Combine kernel (num_splits > 1, unfused): grid
// (ceil(batch * heads * seq_q / decode_combine_rows_per_block(head_dim))),
// kDecodeCombineThreads threads, no dynamic shared memory.

constexpr int kDecodeCombineThreads = 128;
// The most splits a launch may use (the fused combine of branch
// decode-combine-v2 stages a row's weights in shared memory; today's kernels
// take any number).
constexpr int kDecodeMaxSplits = 1024;

FLASHCORE_HOST_DEVICE constexpr int decode_ceil_div(long long a, long long b) {
  return static_cast<int>((a + b - 1) / b);
}

FLASHCORE_HOST_DEVICE constexpr int decode_key_tiles(int seq_k, int block_n) {
  return decode_ceil_div(seq_k, block_n);
}

FLASHCORE_HOST_DEVICE constexpr int decode_tiles_per_split(int seq_k, int block_n, int num_splits) {
  return decode_ceil_div(decode_key_tiles(seq_k, block_n), num_splits);
}

// Splits that own at least one tile; a host should launch this many (larger
// values work, their extra blocks only write empty partials).
FLASHCORE_HOST_DEVICE constexpr int decode_effective_splits(int seq_k, int block_n, int num_splits) {
  return decode_ceil_div(decode_key_tiles(seq_k, block_n),
                         decode_tiles_per_split(seq_k, block_n, num_splits));
}

FLASHCORE_HOST_DEVICE constexpr int decode_combine_rows_per_block(int head_dim) {
  return kDecodeCombineThreads / (head_dim / 8);  // one thread per 8 output columns
}

// Bytes of dynamic shared memory of the split kernel: the packed Q tile, then
// a Stages-deep ring of K and V tiles, which the epilogue reuses for each
// warp's fp32 accumulators (rows padded by 4 floats) and row statistics.
FLASHCORE_HOST_DEVICE constexpr int decode_smem_bytes(int head_dim, int packed_rows, int block_n,
                                                     int warps, int stages) {
  return packed_rows * head_dim * 2 +
         (stages * 2 * block_n * head_dim * 2 > warps * 16 * (head_dim + 4 + 2) * 4
              ? stages * 2 * block_n * head_dim * 2
              : warps * 16 * (head_dim + 4 + 2) * 4);
}

// Workspace bytes for a launch with num_splits > 1 (0 otherwise):
// split_counters first, at offset 0, then o_partial, then lse_partial, each
// 256-byte aligned. The counters lead so that they stay where they are when
// one workspace serves calls of other shapes: a caller keeps the first
// decode_counter_bytes() zero (the kernels leave them so) and zeroes again
// only when a call needs more counters than it zeroed before; the partials
// behind them may hold anything.
FLASHCORE_HOST_DEVICE constexpr long long decode_align256(long long bytes) {
  return (bytes + 255) / 256 * 256;
}
FLASHCORE_HOST_DEVICE constexpr long long decode_counter_bytes(int batch, int kv_heads) {
  return decode_align256(4LL * batch * kv_heads);
}
FLASHCORE_HOST_DEVICE constexpr long long decode_workspace_bytes(int batch, int heads, int kv_heads,
                                                                int seq_q, int head_dim,
                                                                int num_splits) {
  return num_splits <= 1
             ? 0
             : decode_counter_bytes(batch, kv_heads) +
                   decode_align256(4LL * batch * heads * seq_q * num_splits * head_dim) +
                   decode_align256(4LL * batch * heads * seq_q * num_splits);
}

// The default number of splits (a tuner may override it). Decode is a stream
// of the KV cache, so the model is in key tiles per multiprocessor slot:
// blocks = batch * kv_heads * s run in ceil(blocks / slots) waves of
// ceil(tiles / s) tiles each, plus kFixed tiles' worth of fixed cost per block
// (pipeline fill, epilogue) and, when s > 1, the combine's cost (writing and
// reading the fp32 partials, as tiles of K+V bytes, plus one tile for its
// launch). The smallest cost wins; ties go to fewer splits.
// blocks_per_sm: split blocks counted per multiprocessor. 1 is measured best
// on the H200 (bench/decode/decode_lab.py, first run): configs with room for
// 2 to 4 resident blocks still ran fastest at about one block per SM (B 1,
// 8192 keys: 16 splits 11.75 us, 32 splits 12.18 us at 64-key tiles), since
// fewer, longer streams pay the per-block fixed cost less often.
FLASHCORE_HOST_DEVICE inline int decode_num_splits(int batch, int heads, int kv_heads, int seq_q,
                                                   int seq_k, int head_dim, int block_n,
                                                   int sm_count, int blocks_per_sm = 1,
                                                   int max_splits = 128) {
  const int tiles = decode_key_tiles(seq_k, block_n);
  const long long slots = static_cast<long long>(sm_count) * (blocks_per_sm > 0 ? blocks_per_sm : 1);
  const long long pairs = static_cast<long long>(batch) * kv_heads;
  const double tile_bytes = 4.0 * block_n * head_dim;  // K + V, 16-bit
  const double kFixed = 2.0;
  int best = 1;
  double best_cost = 0.0;
  int last_tps = 0;
  const int limit = tiles < max_splits ? tiles : max_splits;
  for (int s = 1; s <= limit; ++s) {
    const int tps = decode_ceil_div(tiles, s);
    if (tps == last_tps) continue;  // same partition as a smaller s
    last_tps = tps;
    const int used = decode_ceil_div(tiles, tps);
    const long long blocks = pairs * used;
    const long long waves = (blocks + slots - 1) / slots;
    double cost = static_cast<double>(waves) * (tps + kFixed);
    if (used > 1) {
      const double partial_bytes = 8.0 * batch * heads * seq_q * used * head_dim;
      cost += 1.0 + partial_bytes / (tile_bytes * static_cast<double>(slots));
    }
    if (s == 1 || cost < best_cost) {
      best = used;
      best_cost = cost;
    }
  }
  return best;
}

}  // namespace flashcore
