"""flashcore.torch.attention: a drop-in for F.scaled_dot_product_attention.

    import torch, flashcore.torch
    q = torch.randn(2, 16, 1024, 64, device="cuda", dtype=torch.float16)
    out = flashcore.torch.attention(q, q, q, causal=True)     # as SDPA(q, q, q, is_causal=True)

What it covers today (sm_80, sm_86, sm_89 and sm_90a GPUs; which family
serves a call is the daemon's choice, as it serves the CLI: the decode family
for a few query rows per kv head (packed rows <= 64, head_dim 64/128/256, no
causal mask to apply), on sm_90a the Hopper family or the sm80 one as their
tuned bests decide (Hopper while neither is tuned, head_dim 64/128/256), else
the sm80 family; FLASHCORE_TORCH_HOPPER=1 or 0 names the Hopper or the sm80
family for prefill calls, FLASHCORE_TORCH_DECODE=0 sends decode calls to them
too): fp16 and bf16; head_dim 32, 64, 96, 128 and 256 (the same for
q, k and v); GQA/MQA by a smaller kv-head count dividing the query heads; the
layouts "bhsd" (SDPA's (batch, heads, seq, dim)) and "bshd"; any sequence
lengths, seq_k != seq_q included; causal masking top-left aligned as SDPA's
is_causal; any strides whose last dimension is contiguous, other strides a
multiple of 8 elements and data 16-byte aligned. The output has q's layout,
densely packed; with return_lse=True also the natural-log sum-exp of the
scaled scores, float32 (batch, heads, seq_q).

Everything else (another dtype or head dim, a CPU tensor, an unaligned view,
a GPU outside the family, inputs that need autograd, a daemon that cannot be
reached and no cached kernel) goes to SDPA with one FlashCoreFallbackWarning
per reason and process; strict=True raises NotCoveredError instead. Invalid
inputs (wrong ranks, mismatched shapes or devices) raise ValueError either way.

Which kernel: see flashcore._resolve (the tuned config of the call's bucket
for this GPU when the daemon has one, else the family's default; handles on
local disk by key; modules loaded once per device per process). The daemon's
address is $FLASHCORE_ADDRESS (else 127.0.0.1:50051), or configure().

The kernel is launched with the Driver API through ctypes (flashcore._cuda)
on PyTorch's current stream of the input's device, so it is ordered with the
surrounding work and is captured by CUDA graphs (resolve once before capture:
a first call may compile). It is registered as the custom op
torch.ops.flashcore.attention with a fake implementation, so torch.compile
(fullgraph=True) traces it; in eager mode attention() calls the same
implementation directly, skipping the dispatcher's per-call cost.
"""

import contextlib
import math
from collections import OrderedDict
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import _abi, _cuda, _decode, _resolve
from ._store import HandleStore
from .client import Client
from .errors import FlashCoreError
from .plan import Shape, save_plan

__all__ = ["attention", "explain", "configure", "FlashCoreFallbackWarning", "NotCoveredError",
           "Plan", "arch_for_capability", "record_shapes", "RecordedShapes"]

# SDPA as PyTorch defines it: the fallback calls this one, so that a call
# record_shapes() sees through attention() is not recorded twice.
_original_sdpa = F.scaled_dot_product_attention

LAYOUTS = ("bhsd", "bshd")
_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_MAX_GRID_YZ = 65535
_MAX_SEQ = 1 << 30
# After a daemon is found unreachable, calls of the same bucket go to SDPA (or
# the disk cache) without asking it again for this long.
_UNREACHABLE_RETRY_S = 30.0


class FlashCoreFallbackWarning(UserWarning):
    """attention() ran SDPA instead of a FlashCore kernel; the message says why."""


class NotCoveredError(RuntimeError):
    """strict=True and the call cannot run a FlashCore kernel; the message says why."""


def arch_for_capability(major: int, minor: int) -> Optional[str]:
    """The arch to compile for a GPU of this compute capability, or None outside the family.

    A cubin runs on its own major version at the same or a higher minor, so 8.7
    takes sm_86's; 9.0 takes sm_90a, the daemon's own choice for Hopper
    (runtime/cuda/driver_api.cpp), so tuning results recorded under it are found.
    """
    if major == 8:
        return "sm_89" if minor >= 9 else "sm_86" if minor >= 6 else "sm_80"
    if major == 9 and minor == 0:
        return "sm_90a"
    return None


@dataclass(frozen=True)
class Plan:
    """What attention() does for a call: a kernel, or SDPA and why (see explain())."""
    kernel_key: Optional[str]
    config: Optional[str]           # "128x64w4s2", the handle's tile config
    config_source: Optional[str]    # "tuned", "default" or "cached" (daemon unreachable)
    handle_source: Optional[str]    # "daemon" or "disk", for the call that resolved it
    fallback_reason: Optional[str]  # set when SDPA runs instead
    template_id: Optional[str] = None  # the kernel's family: attention_fwd, _sm90, _decode


class _Kernel:
    """A resolved kernel for one (device, class, bucket): loaded function plus ABI packer."""

    def __init__(self, loaded: _cuda.LoadedKernel, layout: _abi.ParamsLayout, block_m: int,
                 resolved: _resolve.Resolved, multiprocessors: int = 0):
        self.loaded = loaded
        self.params = layout
        self.block_m = block_m
        # The Hopper family (ABI 2): its tensor maps are encoded per call from the
        # handle's recipes, and its grid is 1-D over tiles (clamped when persistent).
        self.tma = layout.tma
        self.persistent = bool(resolved.handle.config.persistent)
        self.multiprocessors = multiprocessors
        # Packed params of the Hopper family ((kernelParams, buffer): the four tensor
        # maps encoded, then the fields) by the kept call and what varies between
        # its calls (data pointers, seq_k, scale): a loop over the same tensors
        # encodes and packs them once. The O map holds the output's address, and a
        # loop's outputs come back from the caching allocator at one or a few
        # addresses.
        self.packed: "OrderedDict[tuple, tuple]" = OrderedDict()
        # The decode family (ABI 3): split count and workspace per call shape,
        # kept by what they depend on (batch, heads, kv heads, seq_q, key tiles).
        self.decode = _decode.Kernel.from_handle(resolved.handle) if layout.decode else None
        self.launches: "OrderedDict[tuple, _decode.Launch]" = OrderedDict()
        self.combine_step = 1 if loaded.steps > 1 else None
        config = resolved.handle.config
        self.plan = Plan(resolved.handle.key,
                         "%dx%dw%ds%d" % (config.block_m, config.block_n, config.warps,
                                          config.stages),
                         resolved.config_source, resolved.handle_source, None,
                         resolved.handle.template_id or None)


class _Call:
    """What a launch needs beyond the tensors' data, kept for calls with the same
    metadata (_call_key): the kernel, (batch, heads, seq_q, head_dim), kv heads, the
    strides, and what every launch of them reuses (the lse's shape, the
    device, the params fields the metadata fixes, the grid). seq_k is each call's
    own, read from k."""

    __slots__ = ("kernel", "dims", "kv_heads", "strides", "seq_axis", "device", "index",
                 "lse_shape", "fixed", "grid", "scale")

    def __init__(self, kernel: "_Kernel", q, dims, kv_heads: int, strides: tuple, layout: str):
        batch, heads, seq_q, head_dim = dims
        self.kernel = kernel
        self.dims = dims
        self.kv_heads = kv_heads
        self.strides = strides
        self.seq_axis = 2 if layout == "bhsd" else 1  # seq_k's place in k.shape
        self.device = q.device
        self.index = q.device.index if q.device.index is not None else torch.cuda.current_device()
        self.lse_shape = (batch, heads, seq_q)
        # The params fields between the pointers and seq_k (FIELDS, DECODE_FIELDS).
        self.fixed = strides + (batch, heads, kv_heads, seq_q)
        self.scale = 1.0 / math.sqrt(head_dim)  # the default
        if kernel.decode is not None:  # its grid follows seq_k (_decode_launch)
            self.grid = None
        elif kernel.tma:  # 1-D over tiles, clamped when persistent
            tiles = (seq_q + kernel.block_m - 1) // kernel.block_m * heads * batch
            self.grid = (min(tiles, kernel.multiprocessors) if kernel.persistent else tiles,
                         1, 1)
        else:
            self.grid = ((seq_q + kernel.block_m - 1) // kernel.block_m, heads, batch)

    def launch(self, q, qp: int, kp: int, vp: int, seq_k: int, scale: float, return_lse: bool):
        """(out, lse or None) of a launch on the current stream for q (whose metadata
        these are), k, v at these (16-byte aligned) addresses and ``seq_k`` keys."""
        kernel = self.kernel
        # q's shape, dtype and device, densely packed: empty_like parses no
        # arguments and is about 1.3 us faster a call than torch.empty(shape,
        # dtype=, device=) (CPU tensors, torch 2.15).
        out = torch.empty_like(q, memory_format=_CONTIGUOUS)
        if return_lse:
            lse = torch.empty(self.lse_shape, dtype=torch.float32, device=self.device)
            lp = lse.data_ptr()
        else:
            lse, lp = None, 0  # the op's signature wants a tensor: _attention_op makes one
        op = out.data_ptr()
        stream = _raw_stream(self.index)
        if kernel.decode is not None:
            _launch_decode(kernel, self, stream, qp, kp, vp, op, lp, seq_k, scale)
        elif kernel.tma:
            key = (self, qp, kp, vp, op, lp, seq_k, scale)
            packed = kernel.packed.get(key)
            if packed is None:
                packed = _pack_tma(kernel, self, (qp, kp, vp, op, lp), seq_k, scale)
                _keep(kernel.packed, key, packed, _TENSOR_MAP_MEMO)
            kernel.loaded.launch_args(self.grid, packed[0], stream)
        else:
            buffer, args = _cuda.params_buffer(kernel.params.size)
            kernel.params.pack_into_args(buffer, 0, qp, kp, vp, op, lp, *self.fixed, seq_k, scale,
                                         scale * _LOG2E)
            kernel.loaded.launch_args(self.grid, args, stream)
        return out, lse


# Calls kept per process (shapes vary: bounded, the oldest kept first out).
_CALL_MEMO = 256


def _call_key(q, k, v, causal: bool, layout: str) -> tuple:
    """Everything the input checks, the coverage checks and the kernel's choice read,
    except the data pointers' alignment and that v has k's shape (both checked on
    every call, in attention()). seq_k enters as its power-of-two class only (what
    they read of it: 0, 1, or the power of two at or above it, which fixes its
    bucket and whether it passes 2^30), so that a decode loop over a KV cache, one
    key more each call as a view of one buffer with the same strides, takes the
    short path. k.stride() holds k's rank: a k of another rank gets another key."""
    ks = k.shape
    if layout == "bhsd":
        seq = ks[2]
        return (q.shape, q.stride(), ks[0], ks[1], ks[3],
                seq if seq <= 1 else 1 << (seq - 1).bit_length(), k.stride(), v.stride(),
                q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, causal, layout)
    seq = ks[1]
    return (q.shape, q.stride(), ks[0], ks[2], ks[3],
            seq if seq <= 1 else 1 << (seq - 1).bit_length(), k.stride(), v.stride(),
            q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, causal, layout)


class _Runtime:
    """Process-wide state: the client, the disk cache, resolved kernels, warnings given."""

    def __init__(self, client: Optional[Client] = None, address: Optional[str] = None,
                 cache_dir=None):
        self._client = client
        self._address = address
        self.store = HandleStore(cache_dir)
        self.resolver = _resolve.Resolver(self.client, self.store, self._store_error)
        self.lock = threading.Lock()
        # (device, dtype, head_dim, causal, bucket) -> _Kernel, or (reason, retry_at)
        self.kernels: Dict[tuple, object] = {}
        self.modules: Dict[Tuple[int, str], _cuda.LoadedKernel] = {}  # (device, key)
        self.warned = set()
        self.device_info: Dict[int, Tuple[Optional[str], str]] = {}  # arch, name
        # The calls that launched a kernel, by what the checks and the kernel's
        # choice depend on (_call_key): a later call with the same metadata
        # skips them (attention()'s short path).
        self.calls: "OrderedDict[tuple, _Call]" = OrderedDict()
        # The decode family's fused-combine workspace per (device, stream)
        # (_fused_workspace), each (tensor, address, bytes), grown when a call needs
        # more: the partials, and the split counters, zero between launches (the
        # kernels leave them so).
        self.partials: Dict[Tuple[int, int], tuple] = {}
        self.counters: Dict[Tuple[int, int], tuple] = {}

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._address)
        return self._client

    def _store_error(self, error: OSError) -> None:
        warn_once("store", "flashcore: cannot write the handle cache %s (%s); kernels are kept "
                  "in memory only" % (self.store.folder, error))

    def device(self, index: int) -> Tuple[Optional[str], str]:
        info = self.device_info.get(index)
        if info is None:
            major, minor = torch.cuda.get_device_capability(index)
            info = (arch_for_capability(major, minor), torch.cuda.get_device_name(index))
            self.device_info[index] = info
        return info


_runtime: Optional[_Runtime] = None
_runtime_lock = threading.Lock()


def _state() -> _Runtime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = _Runtime()
    return _runtime


def configure(*, address: Optional[str] = None, client: Optional[Client] = None,
              cache_dir=None) -> None:
    """Use another daemon (``address`` or a ready ``client``) or handle cache folder.

    Forgets the kernels resolved so far (loaded modules stay loaded) and the
    warnings already given."""
    global _runtime
    with _runtime_lock:
        _runtime = _Runtime(client=client, address=address, cache_dir=cache_dir)


def warn_once(kind: str, message: str) -> None:
    state = _state()
    if kind in state.warned:
        return
    state.warned.add(kind)
    warnings.warn(message, FlashCoreFallbackWarning, stacklevel=4)


# -- input checks -------------------------------------------------------------


def _dims(t: torch.Tensor, layout: str) -> Tuple[int, int, int, int]:
    """(batch, heads, seq, dim) of a 4-D tensor in ``layout``."""
    b, x, y, d = t.shape
    return (b, x, y, d) if layout == "bhsd" else (b, y, x, d)


def _strides(t: torch.Tensor, layout: str) -> Tuple[int, int, int]:
    """(batch, head, row) strides in elements; a dimension of size 1 gets 0 (it is never
    stepped over, so any stride would do, and 0 passes the kernel's alignment rule)."""
    s, n = t.stride(), t.shape  # unrolled: this runs four times per call
    if layout == "bhsd":
        return (0 if n[0] == 1 else s[0], 0 if n[1] == 1 else s[1], 0 if n[2] == 1 else s[2])
    return (0 if n[0] == 1 else s[0], 0 if n[2] == 1 else s[2], 0 if n[1] == 1 else s[1])


def _check_inputs(q, k, v, layout: str) -> None:
    """ValueError/TypeError for what SDPA itself would refuse; nothing about coverage."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError("flashcore.torch.attention: %s must be a torch.Tensor, got %s"
                            % (name, type(t).__name__))
        if t.dim() != 4:
            raise ValueError("flashcore.torch.attention: %s must be 4-D (%s), got shape %s"
                             % (name, layout, tuple(t.shape)))
    if layout not in LAYOUTS:
        raise ValueError("flashcore.torch.attention: layout must be 'bhsd' or 'bshd', got %r"
                         % (layout,))
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("flashcore.torch.attention: q, k, v dtypes differ: %s, %s, %s"
                         % (q.dtype, k.dtype, v.dtype))
    if not (q.device == k.device == v.device):
        raise ValueError("flashcore.torch.attention: q, k, v are on different devices: %s, %s, %s"
                         % (q.device, k.device, v.device))
    b, h, _, d = _dims(q, layout)
    bk, hk, sk, dk = _dims(k, layout)
    bv, hv, sv, _ = _dims(v, layout)
    if not (b == bk == bv):
        raise ValueError("flashcore.torch.attention: batch sizes differ: q %d, k %d, v %d"
                         % (b, bk, bv))
    if d != dk:
        raise ValueError("flashcore.torch.attention: q and k head dims differ: %d, %d" % (d, dk))
    if (hk, sk) != (hv, sv):
        raise ValueError("flashcore.torch.attention: k and v differ in heads or sequence length:"
                         " k %s, v %s (%s)" % (tuple(k.shape), tuple(v.shape), layout))
    if hk == 0 or h % hk != 0:
        raise ValueError("flashcore.torch.attention: kv heads %d must divide query heads %d"
                         % (hk, h))


def _not_covered(q, k, v, layout: str) -> Optional[Tuple[str, str]]:
    """(kind, reason) when no kernel of the family can take the call, else None."""
    if q.device.type != "cuda":
        return "device", "the tensors are on %s, not a CUDA device" % q.device
    if q.dtype not in _DTYPES:
        return "dtype", "dtype %s is not covered (float16, bfloat16)" % q.dtype
    b, h, sq, d = _dims(q, layout)
    _, hk, sk, dv = _dims(v, layout)
    if d not in _resolve.SUPPORTED_HEAD_DIMS:
        return "head_dim", "head_dim %d is not covered (32, 64, 96, 128, 256)" % d
    if dv != d:
        return "head_dim", "v's head dim %d differs from q's %d" % (dv, d)
    if b > _MAX_GRID_YZ or h > _MAX_GRID_YZ:
        return "shape", "batch %d or heads %d exceeds the grid limit 65535" % (b, h)
    if sq > _MAX_SEQ or sk > _MAX_SEQ:
        return "shape", "a sequence length exceeds 2^30"
    if sk == 0:
        return "shape", "k and v have no keys (seq_k 0)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1 and t.shape[-1] != 1:
            return "stride", "%s's last dimension is not contiguous (strides %s)" % (
                name, t.stride())
        if any(s % 8 for s in _strides(t, layout)):
            return "stride", ("%s's strides %s are not multiples of 8 elements (the kernel "
                              "loads 16 bytes at a time)" % (name, t.stride()))
        if t.data_ptr() % 16:
            return "alignment", "%s's data is not 16-byte aligned" % name
    return None


# -- the two implementations --------------------------------------------------


def _sdpa(q, k, v, causal: bool, scale: float, layout: str, return_lse: bool):
    """The fallback: PyTorch's SDPA, plus the LSE computed in fp32 when asked for."""
    # Data that is not 16-byte aligned goes to SDPA as an aligned copy: PyTorch 2.11
    # picks its kernels by strides and head dim without looking at the data pointers
    # (pytorch/pytorch#183484). On an H100 its default (cuDNN) backend answered a q
    # 8 bytes off alignment with garbage (max abs difference 2.5 against the aligned
    # call) and its flash, efficient and math backends with "misaligned address"
    # (bench/python/sdpa_misaligned_check.py).
    q, k, v = (t.clone() if t.is_cuda and t.data_ptr() % 16 else t for t in (q, k, v))
    if layout == "bshd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    out = _original_sdpa(q, k, v, is_causal=causal, scale=scale)
    if return_lse:
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        if causal:
            sq, sk = scores.shape[-2:]
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
    else:
        lse = None
    if layout == "bshd":
        out = out.transpose(1, 2)
    return out.contiguous(), lse


# The Hopper family (wgmma + TMA, the fast one on H100/H200): served on sm_90a
# when the daemon chooses it (the default) or FLASHCORE_TORCH_HOPPER=1 names it.
HOPPER_TEMPLATE = _resolve.HOPPER_TEMPLATE
# Packed params a Hopper kernel keeps (by call, pointers, seq_k and scale).
_TENSOR_MAP_MEMO = 64
HOPPER_HEAD_DIMS = _resolve.HOPPER_HEAD_DIMS


def _family(arch: str, head_dim: int, decode_rows: int) -> str:
    """The family a call asks the daemon for: by default none (the daemon's choice,
    _resolve's doc). FLASHCORE_TORCH_HOPPER=1 names the Hopper family for the
    prefill shapes it covers, =0 the sm80 family; decode shapes keep the decode
    family unless FLASHCORE_TORCH_DECODE=0."""
    if decode_rows and os.environ.get("FLASHCORE_TORCH_DECODE") != "0":
        return _resolve.AUTO
    hopper = os.environ.get("FLASHCORE_TORCH_HOPPER")
    if hopper == "1" and arch == "sm_90a" and head_dim in HOPPER_HEAD_DIMS:
        return HOPPER_TEMPLATE
    if hopper in ("0", "1") or decode_rows:
        return _resolve.TEMPLATE
    return _resolve.AUTO


def _load_kernel(state: _Runtime, device: int, resolved: _resolve.Resolved) -> "_Kernel":
    """A resolved handle as a _Kernel on ``device``: its module loaded once per device
    and key, with every kernel of the handle (the decode family's combine too)."""
    handle = resolved.handle
    loaded = state.modules.get((device, handle.key))
    if loaded is None:
        loaded = _cuda.LoadedKernel(device, handle.cubin, handle.lowered_name,
                                    (handle.launch.block.x, handle.launch.block.y,
                                     handle.launch.block.z),
                                    handle.launch.dynamic_smem_bytes)
        for step in handle.steps[1:]:  # the decode family's combine kernel
            loaded.add_step(step.lowered_name, (step.launch.block.x or 1,
                                                step.launch.block.y or 1,
                                                step.launch.block.z or 1),
                            step.launch.dynamic_smem_bytes)
        state.modules[(device, handle.key)] = loaded
    return _Kernel(loaded, _abi.ParamsLayout(handle.abi), handle.config.block_m, resolved,
                   torch.cuda.get_device_properties(device).multi_processor_count)


def _resolve_kernel(state: _Runtime, q, layout: str, causal: bool, dims, kv_heads: int,
                    seq_k: int):
    """The _Kernel for this call, or a (kind, reason) to fall back for."""
    batch, heads, seq_q, head_dim = dims
    device = q.device.index if q.device.index is not None else torch.cuda.current_device()
    # Within a bucket the decode family's kernels differ by their packed rows.
    decode_rows = (_decode.packed_rows_for(heads, kv_heads, seq_q)
                   if _decode.serves(head_dim, causal, heads, kv_heads, seq_q, seq_k) else 0)
    memo = (device, q.dtype, head_dim, causal, decode_rows) + _resolve.whole_bucket(
        batch, heads, kv_heads, seq_q, seq_k, layout)
    entry = state.kernels.get(memo)
    if isinstance(entry, _Kernel):
        return entry
    if entry is not None and time.monotonic() < entry[2]:
        return entry[:2]
    with state.lock:
        entry = state.kernels.get(memo)
        if isinstance(entry, _Kernel):
            return entry
        arch, name = state.device(device)
        if arch is None:
            major, minor = torch.cuda.get_device_capability(device)
            result = ("arch", "GPU %s (compute capability %d.%d) is outside the sm80 family's "
                      "archs" % (name, major, minor))
            state.kernels[memo] = result + (float("inf"),)
            return result
        query = _resolve.Query(_DTYPES[q.dtype], head_dim, causal, arch, batch, heads, kv_heads,
                               seq_q, seq_k, layout, name, _family(arch, head_dim, decode_rows))
        try:
            kernel = _load_kernel(state, device, state.resolver.resolve(query))
            if kernel.decode is not None and (heads // kv_heads) * seq_q > kernel.decode.packed_rows:
                raise _abi.AbiError("the decode kernel packs %d rows, the call needs %d"
                                    % (kernel.decode.packed_rows, (heads // kv_heads) * seq_q))
        except FlashCoreError as error:
            unreachable = error.code in _resolve.TRANSPORT_CODES
            result = ("unreachable" if unreachable else "daemon",
                      "%s%s" % (error, " and no cached kernel for this bucket" if unreachable
                                else ""))
            retry = time.monotonic() + _UNREACHABLE_RETRY_S if unreachable else float("inf")
            state.kernels[memo] = result + (retry,)
            return result
        except (_cuda.CudaError, _abi.AbiError) as error:
            result = ("load", "cannot launch kernel on cuda:%d: %s" % (device, error))
            state.kernels[memo] = result + (float("inf"),)
            return result
        state.kernels[memo] = kernel
        return kernel


_LOG2E = 1.4426950408889634
_CONTIGUOUS = torch.contiguous_format

try:  # the current stream's raw handle without building a torch.cuda.Stream per call
    _raw_stream = torch._C._cuda_getCurrentRawStream
except AttributeError:  # pragma: no cover
    def _raw_stream(device):
        return torch.cuda.current_stream(device).cuda_stream


def _attention_impl(q, k, v, causal: bool, scale: float, layout: str, return_lse: bool,
                    strict: bool):
    problem = _not_covered(q, k, v, layout)
    dims = _dims(q, layout)
    batch, heads, seq_q, head_dim = dims
    if problem is None and (batch == 0 or heads == 0 or seq_q == 0):
        out = q.new_empty(tuple(q.shape))
        lse = q.new_empty((batch, heads, seq_q), dtype=torch.float32) if return_lse else None
        return out, lse
    state = _state()
    if problem is None:
        _, kv_heads, seq_k, _ = _dims(k, layout)
        kernel = _resolve_kernel(state, q, layout, causal, dims, kv_heads, seq_k)
        if isinstance(kernel, _Kernel):
            call = _Call(kernel, q, dims, kv_heads, _all_strides(q, k, v, layout), layout)
            _keep(state.calls, _call_key(q, k, v, causal, layout), call, _CALL_MEMO)
            return call.launch(q, q.data_ptr(), k.data_ptr(), v.data_ptr(), seq_k, scale,
                               return_lse)
        problem = kernel
    kind, reason = problem
    if strict:
        raise NotCoveredError("flashcore.torch.attention: " + reason)
    warn_once(kind, "flashcore.torch.attention runs SDPA instead: %s" % reason)
    return _sdpa(q, k, v, causal, scale, layout, return_lse)


_keep = _cuda.keep_bounded  # memo[key] = value, the oldest dropped past a bound


def _all_strides(q, k, v, layout: str) -> tuple:
    """The (batch, head, row) strides of q, k, v and of the output (q's shape, contiguous)."""
    b, x, y, d = q.shape
    out = (x * y * d, y * d, d) if layout == "bhsd" else (x * y * d, d, y * d)
    out = (0 if b == 1 else out[0],) + tuple(
        0 if n == 1 else s for n, s in zip(_dims(q, layout)[1:3], out[1:]))
    return _strides(q, layout) + _strides(k, layout) + _strides(v, layout) + out


def _launch(kernel: _Kernel, q, k, v, scale, layout, return_lse, dims, kv_heads, seq_k):
    """A launch of ``kernel`` for these inputs without a kept call: (out, lse or None)."""
    call = _Call(kernel, q, dims, kv_heads, _all_strides(q, k, v, layout), layout)
    return call.launch(q, q.data_ptr(), k.data_ptr(), v.data_ptr(), seq_k, scale, return_lse)


def _pack_tma(kernel: _Kernel, call: _Call, pointers: tuple, seq_k: int, scale: float) -> tuple:
    """The Hopper family's params for a call, in a buffer of their own: its four
    tensor maps encoded from the handle's recipes, then the fields.
    (kernelParams array, buffer)."""
    batch, heads, seq_q, head_dim = call.dims
    values = (*pointers, *call.fixed, seq_k, scale, scale * _LOG2E)
    names = dict(zip(("attn." + f for f in _abi.FIELDS), values))
    names.update(head_dim=head_dim, seq_q=seq_q, seq_k=seq_k, heads=heads,
                 kv_heads=call.kv_heads, batch=batch)
    maps = [_cuda.encode_tensor_map(_abi.tensor_map_arguments(recipe, names))
            for recipe in kernel.params.tensor_maps]
    return _cuda.own_params(kernel.params.pack(values, maps))


# Decode launches a kernel keeps (by batch, heads, kv heads, seq_q, key tiles).
_DECODE_LAUNCH_MEMO = 256


def _decode_launch(kernel: _Kernel, batch: int, heads: int, kv_heads: int, seq_q: int,
                   seq_k: int) -> "_decode.Launch":
    """The split count and workspace of a decode call: they change with seq_k only
    when its key tiles do, so a decode loop computes them once per tile."""
    memo = (batch, heads, kv_heads, seq_q, _decode.key_tiles(seq_k, kernel.decode.block_n))
    launch = kernel.launches.get(memo)
    if launch is None:
        launch = kernel.decode.launch(batch, heads, kv_heads, seq_q, seq_k,
                                      kernel.multiprocessors)
        _keep(kernel.launches, memo, launch, _DECODE_LAUNCH_MEMO)
    return launch


def _fused_workspace(device, stream: int, launch: "_decode.Launch"):
    """(keep, partials, counters) for a fused-combine decode launch on ``stream``:
    the partials' address (o then lse, the launch's sizes) and a zeroed u32 counter
    buffer's; ``keep`` holds their tensors, to live until the launch is enqueued.

    Outside CUDA-graph capture one workspace per (device, stream) serves every
    call, allocated on that stream: launches on one stream run in order, and each
    is a single kernel that leaves the counters at zero and has merged its
    partials when it ends. (Not the two-kernel variant: another thread's split
    kernel could come between a split kernel and its combine on the stream.)
    This saves a torch allocation per call. During capture each call gets its
    own, its counters zeroed by a node of the graph, so graphs replayed on other
    streams share none."""
    partial_bytes = launch.o_partial_bytes + launch.lse_partial_bytes
    if torch.cuda.is_current_stream_capturing():
        partials = torch.empty(partial_bytes, dtype=torch.uint8, device=device)
        counters = torch.zeros(launch.counter_bytes // 4, dtype=torch.int32, device=device)
        return (partials, counters), partials.data_ptr(), counters.data_ptr()
    state = _state()
    partials = _stream_buffer(state.partials, device, stream, partial_bytes, False)
    counters = _stream_buffer(state.counters, device, stream, launch.counter_bytes, True)
    return (partials, counters), partials[1], counters[1]


def _stream_buffer(buffers: dict, device, stream: int, size: int, zeroed: bool) -> tuple:
    """(tensor, address, bytes) of ``buffers``' buffer for (device, stream), of at
    least ``size`` bytes: a new one (zeroed where asked, on this stream, after the
    launches that used the old one) when there is none or it is too small. The
    caller keeps the tuple until its launch is enqueued: another thread may
    replace the buffer meanwhile."""
    key = (device.index, stream)
    kept = buffers.get(key)
    if kept is None or kept[2] < size:
        size = max(size, 4096)
        tensor = (torch.zeros if zeroed else torch.empty)(size, dtype=torch.uint8, device=device)
        kept = buffers[key] = (tensor, tensor.data_ptr(), size)
    return kept


def _launch_decode(kernel: _Kernel, call: _Call, stream: int, qp: int, kp: int, vp: int,
                   op: int, lp: int, seq_k: int, scale: float) -> None:
    """The decode family's launch: the split kernel, then the combine kernel where
    the handle has one and the keys are split. The partials of the two-kernel
    variant are a torch allocation of the call (stream-ordered, so the next call
    may reuse it); the fused combine's are _fused_workspace's."""
    batch, heads, seq_q, _ = call.dims
    launch = _decode_launch(kernel, batch, heads, call.kv_heads, seq_q, seq_k)
    o_partial = lse_partial = counters = 0
    keep = None
    if launch.num_splits > 1:
        if kernel.decode.fused_combine:
            keep, o_partial, counters = _fused_workspace(call.device, stream, launch)
        else:
            keep = torch.empty(launch.o_partial_bytes + launch.lse_partial_bytes,
                               dtype=torch.uint8, device=call.device)
            o_partial = keep.data_ptr()
        lse_partial = o_partial + launch.o_partial_bytes
    buffer, args = _cuda.params_buffer(kernel.params.size)
    kernel.params.pack_into_args(buffer, 0, qp, kp, vp, op, lp, o_partial, lse_partial, counters,
                                 *call.fixed, seq_k, launch.num_splits, scale, scale * _LOG2E)
    kernel.loaded.launch_args(launch.split_grid, args, stream)
    if launch.combine_grid is not None:  # the same params, still in the buffer
        if kernel.combine_step is None:
            raise _cuda.CudaError("cuLaunchKernel(combine)", -1, "CUDA_ERROR_NOT_FOUND",
                                  "the decode handle %s has no combine kernel"
                                  % kernel.plan.kernel_key)
        kernel.loaded.launch_args(launch.combine_grid, args, stream, step=kernel.combine_step)
    del keep  # the partials (and capture's counters) outlive the launches above


# -- the custom op ------------------------------------------------------------


@torch.library.custom_op("flashcore::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                  layout: str, return_lse: bool,
                  strict: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    out, lse = _attention_impl(q, k, v, causal, scale, layout, return_lse, strict)
    if lse is None:
        lse = q.new_empty((0,), dtype=torch.float32)
    return out, lse


@_attention_op.register_fake
def _attention_fake(q, k, v, causal, scale, layout, return_lse, strict):
    batch, heads, seq_q, _ = _dims(q, layout)
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))
    lse = q.new_empty((batch, heads, seq_q) if return_lse else (0,), dtype=torch.float32)
    return out, lse


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              scale: Optional[float] = None, layout: str = "bhsd", return_lse: bool = False,
              strict: bool = False):
    """softmax(q k^T * scale [causal mask]) v, as F.scaled_dot_product_attention(q, k, v,
    is_causal=causal, scale=scale) for "bhsd" inputs (see the module's doc for coverage).

    q: (batch, heads, seq_q, dim) for layout "bhsd", (batch, seq_q, heads, dim) for "bshd";
    k, v: the same with kv_heads (dividing heads) and seq_k. scale defaults to
    1/sqrt(dim). Returns the output in q's layout, or (output, lse) with
    return_lse=True, lse float32 (batch, heads, seq_q), natural log. strict=True
    raises NotCoveredError where the call would otherwise fall back to SDPA.
    """
    # A call with the metadata of one that launched a kernel before (and not
    # traced, recorded or needing grad) skips the checks and the lookup. Traced
    # calls never look: torch.compile goes through the custom op below.
    if not torch.compiler.is_compiling() and not _recorders and _runtime is not None:
        try:
            call = _runtime.calls.get(_call_key(q, k, v, causal, layout))
        except (AttributeError, TypeError, IndexError):  # not 4-D tensors: the checks say so
            call = None
        if (call is not None
                and not (torch.is_grad_enabled()
                         and (q.requires_grad or k.requires_grad or v.requires_grad))):
            # What the full path checks per call and the key leaves out: alignment
            # and v's shape (then the full path runs and says why). Inline: a
            # Python frame less per call.
            ks = k.shape
            qp, kp, vp = q.data_ptr(), k.data_ptr(), v.data_ptr()
            if ks == v.shape and not (qp | kp | vp) % 16:
                out, lse = call.launch(q, qp, kp, vp, ks[call.seq_axis],
                                       call.scale if scale is None else float(scale), return_lse)
                return (out, lse) if return_lse else out
    _check_inputs(q, k, v, layout)
    if _recorders:
        _record_attention(q, k, v, causal, layout)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        if strict:
            raise NotCoveredError("flashcore.torch.attention: the kernels are forward only and "
                                  "an input requires grad")
        warn_once("autograd", "flashcore.torch.attention runs SDPA instead: an input requires "
                  "grad and the kernels are forward only")
        out, lse = _sdpa(q, k, v, causal, float(scale), layout, return_lse)
    elif torch.compiler.is_compiling():
        out, lse = torch.ops.flashcore.attention(q, k, v, causal, float(scale), layout,
                                                 return_lse, strict)
    else:
        out, lse = _attention_impl(q, k, v, causal, float(scale), layout, return_lse, strict)
    return (out, lse) if return_lse else out


def explain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
            layout: str = "bhsd") -> Plan:
    """What attention() would do for these inputs: the kernel (key, config, where its
    config and handle came from) or the reason it would run SDPA. Resolves (and so
    may compile) the kernel like a call does, without launching anything."""
    _check_inputs(q, k, v, layout)
    problem = _not_covered(q, k, v, layout)
    if problem is None:
        _, kv_heads, seq_k, _ = _dims(k, layout)
        kernel = _resolve_kernel(_state(), q, layout, causal, _dims(q, layout), kv_heads, seq_k)
        if isinstance(kernel, _Kernel):
            return kernel.plan
        problem = kernel
    return Plan(None, None, None, None, problem[1])


# -- record_shapes ------------------------------------------------------------


class RecordedShapes:
    """The attention shapes a forward pass made: each distinct :class:`flashcore.Shape`
    once, in the order first seen, with how many calls made it (``calls``), and the
    calls that were not recordable with the reason (``skipped``: reason -> count).

    Pass it to :meth:`flashcore.Client.tune_many`, or ``save(path)`` a JSON plan
    for ``flashcore-tune-plan``."""

    def __init__(self, sdpa: bool = True):
        self.sdpa = sdpa  # whether this block records SDPA calls too
        self.calls: "OrderedDict[Shape, int]" = OrderedDict()
        self.skipped: Dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, shape: Shape) -> None:
        with self._lock:
            self.calls[shape] = self.calls.get(shape, 0) + 1

    def skip(self, reason: str) -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def __iter__(self):
        return iter(list(self.calls))

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, index) -> Shape:
        return list(self.calls)[index]

    def __contains__(self, shape) -> bool:
        return shape in self.calls

    def save(self, path):
        """Writes the shapes as a JSON plan file (with their call counts)."""
        return save_plan(self, path)

    def __repr__(self) -> str:
        return "RecordedShapes(%d shapes, %d calls%s)" % (
            len(self.calls), sum(self.calls.values()),
            ", %d skipped" % sum(self.skipped.values()) if self.skipped else "")


_recorders: list = []
_recorders_lock = threading.Lock()
_replaced_sdpa = None  # what F.scaled_dot_product_attention was before the first block


def _record(shape_or_reason, sdpa_call: bool = False) -> None:
    for recorder in list(_recorders):
        if sdpa_call and not recorder.sdpa:
            continue
        if isinstance(shape_or_reason, Shape):
            recorder.add(shape_or_reason)
        else:
            recorder.skip(shape_or_reason)


def _dtype_name(dtype) -> Optional[str]:
    return _DTYPES.get(dtype)


def _record_attention(q, k, v, causal: bool, layout: str) -> None:
    dtype = _dtype_name(q.dtype)
    if dtype is None:
        _record("dtype %s is not served (float16, bfloat16)" % q.dtype)
        return
    batch, heads, seq_q, head_dim = _dims(q, layout)
    _, kv_heads, seq_k, _ = _dims(k, layout)
    _record(Shape(head_dim=head_dim, seq_q=seq_q, dtype=dtype, causal=bool(causal), batch=batch,
                  heads=heads, kv_heads=kv_heads, seq_k=seq_k, layout=layout))


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                    scale=None, enable_gqa=False, **_):
    return query, key, value, attn_mask, dropout_p, is_causal


def _record_sdpa(*args, **kwargs) -> None:
    """The Shape of an F.scaled_dot_product_attention call (q: (N, ..., H, L, E)), or why none."""
    try:
        q, k, v, attn_mask, dropout_p, is_causal = _sdpa_arguments(*args, **kwargs)
    except TypeError:
        return  # SDPA itself reports the bad call
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in (q, k, v)):
        return
    if attn_mask is not None:
        _record("SDPA with an attn_mask (the kernels take causal or no mask)", True)
        return
    if dropout_p:
        _record("SDPA with dropout (the kernels are for inference)", True)
        return
    if _dtype_name(q.dtype) is None:
        _record("dtype %s is not served (float16, bfloat16)" % q.dtype, True)
        return
    if v.shape[-1] != q.shape[-1]:
        _record("v's head dim differs from q's", True)
        return
    lead = 1
    for size in q.shape[:-3]:
        lead *= size
    heads = q.shape[-3] if q.dim() >= 3 else 1
    kv_heads = k.shape[-3] if k.dim() >= 3 else 1
    batch = lead if q.dim() >= 4 else (q.shape[0] if q.dim() == 3 else 1)
    if q.dim() == 3:  # (N, L, E): one head per batch entry
        heads = kv_heads = 1
    _record(Shape(head_dim=q.shape[-1], seq_q=q.shape[-2], dtype=_dtype_name(q.dtype),
                  causal=bool(is_causal), batch=batch, heads=heads, kv_heads=kv_heads,
                  seq_k=k.shape[-2], layout="bhsd"), True)


def _recording_sdpa(*args, **kwargs):
    if _recorders and not torch.compiler.is_compiling():
        _record_sdpa(*args, **kwargs)
    return _original_sdpa(*args, **kwargs)


@contextlib.contextmanager
def record_shapes(*, sdpa: bool = True):
    """Records every attention shape made inside the ``with`` block (no daemon needed)::

        with flashcore.torch.record_shapes() as shapes:
            model(example)
        client.tune_many(shapes)            # or shapes.save("plan.json")

    It sees calls of :func:`attention` and, with ``sdpa`` (the default), of
    ``torch.nn.functional.scaled_dot_product_attention`` (replaced for the block;
    modules that call it through that attribute are seen, including
    nn.MultiheadAttention's SDPA path, but not code that imported the function
    itself before the block). Calls nothing could serve (an attn_mask, dropout, a
    dtype other than fp16/bf16) are counted in ``shapes.skipped`` with the reason.
    Blocks nest; recording costs nothing outside them."""
    global _replaced_sdpa
    shapes = RecordedShapes(sdpa)
    with _recorders_lock:
        _recorders.append(shapes)
        if sdpa and F.scaled_dot_product_attention is not _recording_sdpa:
            _replaced_sdpa = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = _recording_sdpa
    try:
        yield shapes
    finally:
        with _recorders_lock:
            _recorders.remove(shapes)
            if not any(r.sdpa for r in _recorders) and _replaced_sdpa is not None:
                F.scaled_dot_product_attention = _replaced_sdpa
                _replaced_sdpa = None
