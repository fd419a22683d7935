// The attention kernels' one ABI. NVRTC compiles this header into every
// kernel, and the host (daemon and client library) includes the same file to
// fill the struct, so the two can never disagree. No host headers here: it
// must compile under NVRTC as it is.
//
// Bump FLASHCORE_ATTENTION_ABI_VERSION whenever a field moves, and the cache
// key changes with it (the key hashes the template sources).
#pragma once

#define FLASHCORE_ATTENTION_ABI_VERSION 1

namespace flashcore {

// Passed by value as a __grid_constant__ kernel parameter. Strides are in
// elements; head_dim is always contiguous (stride 1) and every other stride
// must be a multiple of 8 elements so that 16-byte vector loads stay aligned.
struct AttentionParams {
  const void* q;  // [batch, heads,    seq_q, head_dim] through the strides below
  const void* k;  // [batch, kv_heads, seq_k, head_dim]
  const void* v;  // [batch, kv_heads, seq_k, head_dim]
  void* o;        // [batch, heads,    seq_q, head_dim]
  float* lse;     // optional [batch, heads, seq_q] natural-log sum-exp; null to skip

  long long q_batch_stride, q_head_stride, q_row_stride;
  long long k_batch_stride, k_head_stride, k_row_stride;
  long long v_batch_stride, v_head_stride, v_row_stride;
  long long o_batch_stride, o_head_stride, o_row_stride;

  int batch;
  int heads;
  int kv_heads;  // divides heads; query head h reads kv head h / (heads / kv_heads)
  int seq_q;
  int seq_k;
  // Causal masking is top-left aligned, as PyTorch SDPA's is_causal: query
  // row i sees key columns 0..i.

  float softmax_scale;       // usually 1/sqrt(head_dim)
  float softmax_scale_log2;  // softmax_scale * log2(e): the kernel works in exp2
};

}  // namespace flashcore
