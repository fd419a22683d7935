"""The shapes test_torch_gpu.py runs, in one place so that prepare_gpu_handles.py can
resolve their kernels ahead (for a GPU machine that cannot run the daemon).

Plain data: no torch here.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    dtype: str          # "fp16" or "bf16"
    batch: int
    heads: int
    kv_heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    causal: bool
    layout: str = "bhsd"
    view: str = "dense"  # "dense", "packed_qkv" (q/k/v views into one tensor), "transposed"
    input_scale: float = 1.0

    @property
    def id(self) -> str:
        return self.name


# Ones the C++ GPU tests do not use: odd S, S=1 decode against a long KV, GQA
# 32/8 and MQA, D 256, non-contiguous views, x8-scaled inputs (softmax
# overflow), bf16, seq_q > seq_k causal, odd batch and head counts.
CASES = [
    Case("fp16_d64_s512", "fp16", 2, 8, 8, 512, 512, 64, False),
    Case("fp16_d64_s1000_causal", "fp16", 1, 8, 8, 1000, 1000, 64, True),
    Case("fp16_d128_odd_s77_causal", "fp16", 2, 4, 4, 77, 77, 128, True),
    Case("bf16_d64_odd_sq129_sk257", "bf16", 2, 6, 6, 129, 257, 64, False),
    Case("fp16_d128_decode_s1_kv4096_gqa32_8", "fp16", 2, 32, 8, 1, 4096, 128, False),
    Case("bf16_d128_decode_s1_kv3001_causal", "bf16", 1, 16, 16, 1, 3001, 128, True),
    Case("fp16_d128_gqa32_8_s1024_causal", "fp16", 1, 32, 8, 1024, 1024, 128, True),
    Case("fp16_d256_s384_causal", "fp16", 1, 4, 4, 384, 384, 256, True),
    Case("bf16_d256_sq200_sk333", "bf16", 2, 2, 2, 200, 333, 256, False),
    Case("fp16_d96_s500_causal", "fp16", 1, 6, 6, 500, 500, 96, True),
    Case("bf16_d32_s1024", "bf16", 2, 4, 4, 1024, 1024, 32, False),
    Case("fp16_d64_packed_qkv_view_bshd", "fp16", 2, 8, 8, 300, 300, 64, True, "bshd",
         "packed_qkv"),
    Case("bf16_d128_transposed_view_bhsd", "bf16", 2, 8, 8, 257, 257, 128, False, "bhsd",
         "transposed"),
    Case("fp16_d64_x8_inputs_causal", "fp16", 1, 8, 8, 512, 512, 64, True, input_scale=8.0),
    Case("bf16_d128_x8_inputs", "bf16", 1, 4, 4, 256, 640, 128, False, input_scale=8.0),
    Case("fp16_d128_bshd_gqa16_4_s777_causal", "fp16", 1, 16, 4, 777, 777, 128, True, "bshd"),
    Case("bf16_d64_mqa16_1_s300_causal", "bf16", 2, 16, 1, 300, 300, 64, True),
    Case("fp16_d64_sq300_sk100_causal_top_left", "fp16", 1, 4, 4, 300, 100, 64, True),
    Case("fp16_d32_b3_h5_s65", "fp16", 3, 5, 5, 65, 65, 32, False),
]

# Decode calls, served by the decode family (split keys, packed GQA rows): one
# kv head's query rows packed into 16..64 rows, splits > 1 with the fused
# combine (B1 with 8192 keys), D 64/128/256, MQA, bshd, x8 inputs, one key.
DECODE_CASES = [
    Case("decode_fp16_d128_s1_kv8192_gqa32_8_b1", "fp16", 1, 32, 8, 1, 8192, 128, False),
    Case("decode_bf16_d128_sq4_kv4096_gqa32_8", "bf16", 2, 32, 8, 4, 4096, 128, False),
    Case("decode_fp16_d64_s1_kv777_mqa8_1_bshd", "fp16", 3, 8, 1, 1, 777, 64, False, "bshd"),
    Case("decode_bf16_d256_s1_kv2000", "bf16", 2, 8, 8, 1, 2000, 256, False),
    Case("decode_fp16_d128_sq3_kv1000_gqa16_4_x8", "fp16", 1, 16, 4, 3, 1000, 128, False,
         input_scale=8.0),
    Case("decode_bf16_d128_sq16_kv3000_gqa32_8", "bf16", 1, 32, 8, 16, 3000, 128, False),
    Case("decode_fp16_d128_s1_kv1_causal", "fp16", 2, 16, 16, 1, 1, 128, True),
]
DECODE_LSE_CASE = Case("decode_lse_bf16_d128_s1_kv5000_gqa32_8", "bf16", 1, 32, 8, 1, 5000, 128,
                       False)
DECODE_GRAPH_CASE = Case("decode_graph_fp16_d128_s1_kv8192", "fp16", 1, 32, 8, 1, 8192, 128,
                         False)
# The decode family's two-kernel variant (unfused combine), compiled with
# this config by name (prepare_gpu_handles.py stores it under its name).
DECODE_TWO_KERNEL_CASE = Case("decode_two_kernel_bf16_d128_s1_kv8192", "bf16", 1, 32, 8, 1, 8192,
                              128, False)
DECODE_TWO_KERNEL_CONFIG = dict(block_m=16, block_n=64, warps=4, stages=3, fused_combine=False)
# A decode loop's overhead: the KV cache grows by one key a call, from 4096
# (bucket 4096) past 4097 (bucket 8192).
DECODE_OVERHEAD_CASES = [
    Case("decode_overhead_fp16_d128_s1_kv4096", "fp16", 1, 32, 8, 1, 4096, 128, False),
    Case("decode_overhead_fp16_d128_s1_kv6000", "fp16", 1, 32, 8, 1, 6000, 128, False),
]

# A prefill whose keys grow between calls (chunked prefill): seq_k 500 (bucket
# 512) and 700 (bucket 1024) resolved ahead; the calls in between take the
# short path with their own seq_k.
GROWING_PREFILL_CASES = [
    Case("growing_fp16_d64_sq256_sk500", "fp16", 1, 8, 8, 256, 500, 64, False),
    Case("growing_fp16_d64_sq256_sk700", "fp16", 1, 8, 8, 256, 700, 64, False),
]

# The extra tests' shapes: LSE, CUDA graph, torch.compile module, call overhead.
LSE_CASES = [
    Case("lse_fp16_d64_causal", "fp16", 2, 4, 4, 333, 333, 64, True),
    Case("lse_bf16_d128_gqa", "bf16", 1, 8, 2, 100, 700, 128, False),
]
GRAPH_CASE = Case("graph_fp16_d64", "fp16", 2, 8, 8, 256, 256, 64, True)
COMPILE_CASE = Case("compile_module_fp16_d64", "fp16", 2, 4, 4, 128, 128, 64, True, "bshd")
OVERHEAD_CASE = Case("overhead_fp16_d64_small", "fp16", 1, 8, 8, 128, 128, 64, False)

ALL = (CASES + LSE_CASES + [GRAPH_CASE, COMPILE_CASE, OVERHEAD_CASE] + DECODE_CASES
       + [DECODE_LSE_CASE, DECODE_GRAPH_CASE] + DECODE_OVERHEAD_CASES + GROWING_PREFILL_CASES)
