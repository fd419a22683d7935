// The Hopper family's ABI (kernel_templates/hopper/attention_fwd_sm90.cuh):
// four TMA descriptors the launcher encodes from the caller's tensors, then
// the ordinary AttentionParams for the shape, the optional LSE and the
// scales. Host code (daemon, client library) includes this same file, so
// sizes and offsets cannot disagree. The handle's KernelAbi.tensor_maps says
// how to encode each descriptor.
#pragma once

#include "common/attention_params.cuh"

#define FLASHCORE_ATTENTION_TMA_ABI_VERSION 2

namespace flashcore {

// The driver's CUtensorMap: 128 opaque bytes, 64-byte aligned, written by
// cuTensorMapEncodeTiled.
struct alignas(64) TmaDescriptor {
  unsigned long long opaque[16];
};

struct AttentionTmaParams {
  TmaDescriptor q;  // box (64, 64, 1, 1) over (head_dim, seq_q, heads, batch)
  TmaDescriptor k;  // box (64, block_n, 1, 1) over (head_dim, seq_k, kv_heads, batch)
  TmaDescriptor v;  // as k
  TmaDescriptor o;  // as q
  AttentionParams attn;
};

}  // namespace flashcore
