"""Builders for the request messages, with the CLI's names and defaults.

Every builder returns the generated protobuf message (flashcore.v1), so a
caller can also build or edit messages directly. Values are passed through as
given: the daemon validates them and names the offending field.
"""

from typing import Optional, Union

from ._stubs import pb

_DTYPES = {
    "fp16": pb.DTYPE_FP16, "float16": pb.DTYPE_FP16, "half": pb.DTYPE_FP16,
    "bf16": pb.DTYPE_BF16, "bfloat16": pb.DTYPE_BF16,
}
_LAYOUTS = {"bshd": pb.LAYOUT_BSHD, "bhsd": pb.LAYOUT_BHSD}
_Q_PLACEMENTS = {"auto": pb.Q_PLACEMENT_UNSPECIFIED, "registers": pb.Q_PLACEMENT_REGISTERS,
                 "shared": pb.Q_PLACEMENT_SHARED}
_SMEM_LAYOUTS = {"auto": pb.SMEM_LAYOUT_UNSPECIFIED, "swizzled": pb.SMEM_LAYOUT_SWIZZLED,
                 "padded": pb.SMEM_LAYOUT_PADDED}

DEFAULT_TEMPLATE = "attention_fwd"


def _enum(value, names: dict, what: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return names[str(value).lower()]
    except KeyError:
        raise ValueError("%s: %r is not one of %s" % (what, value, ", ".join(names))) from None


def problem(*, head_dim: int, seq_q: int, dtype: Union[str, int] = "fp16", causal: bool = False,
            batch: int = 1, heads: int = 1, kv_heads: int = 0, seq_k: int = 0,
            layout: Union[str, int] = "bshd") -> pb.Problem:
    """A Problem: the compile-time class (dtype, head_dim, causal) and the run-time shape.

    kv_heads 0 means heads, seq_k 0 means seq_q, as in the proto."""
    return pb.Problem(dtype=_enum(dtype, _DTYPES, "dtype"), head_dim=head_dim, causal=causal,
                      batch=batch, heads=heads, kv_heads=kv_heads, seq_q=seq_q, seq_k=seq_k,
                      layout=_enum(layout, _LAYOUTS, "layout"))


def tile_config(block_m: int = 128, block_n: int = 64, warps: int = 4, stages: int = 2,
                q_placement: Union[str, int] = "auto",
                smem_layout: Union[str, int] = "auto") -> pb.TileConfig:
    """A TileConfig; the defaults are the CLI's (128 x 64, 4 warps, 2 stages)."""
    return pb.TileConfig(block_m=block_m, block_n=block_n, warps=warps, stages=stages,
                         q_placement=_enum(q_placement, _Q_PLACEMENTS, "q_placement"),
                         smem_layout=_enum(smem_layout, _SMEM_LAYOUTS, "smem_layout"))


def kernel_request(*, config: Optional[pb.TileConfig] = None, arch: str = "",
                   template_id: str = DEFAULT_TEMPLATE, omit_cubin: bool = False,
                   use_tuned_config: bool = False, line_info: bool = False,
                   cached_key: str = "", accepts_multi_kernel: bool = False,
                   **problem_fields) -> pb.KernelRequest:
    """A KernelRequest; ``problem_fields`` are those of :func:`problem`.

    ``line_info`` compiles with -lineinfo (for profilers; another key, a
    larger cubin); ``cached_key`` names a kernel the caller holds, whose
    cubin the answer then leaves out; ``accepts_multi_kernel`` says the
    caller launches handles of several kernels with a workspace (the decode
    family; with an empty ``template_id`` the daemon then picks it for
    decode shapes).

    Without ``config`` the sm80 family gets the CLI's default tile and another
    family none (the daemon answers with that family's default); an empty
    ``arch`` is the daemon's default."""
    if config is None and template_id == DEFAULT_TEMPLATE:
        config = tile_config()
    fields = dict(template_id=template_id, problem=problem(**problem_fields), arch=arch,
                  omit_cubin=omit_cubin, use_tuned_config=use_tuned_config,
                  line_info=line_info, cached_key=cached_key,
                  accepts_multi_kernel=accepts_multi_kernel)
    if config is not None:
        fields["config"] = config
    return pb.KernelRequest(**fields)
