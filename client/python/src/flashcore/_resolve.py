"""Which kernel serves an attention call: the policy, without PyTorch.

For a problem class (dtype, head_dim, causal), an arch and the shape bucket
of the call (DESIGN.md §1: sequence lengths and batch x heads rounded up to
powers of two; server/tuning/shape_bucket.cpp), the kernel is:

1. the tuned config of that bucket for this GPU, when the daemon's tuning
   database holds one (GetTuningResult with this process's device name);
2. otherwise the family's default config (the daemon's, or DEFAULT_CONFIGS
   where the sm80 family is asked for by name).

Which family: by default (template AUTO) the daemon's own choice, as it
serves the CLI (server/rpc/translate.cpp): the decode family for a few query
rows per kv head, on sm_90a the Hopper family or the sm80 one as their tuned
bests decide (the Hopper family when neither is tuned, for its head dims),
else the sm80 family; the handle's template_id says which. A Query may name
a family instead.
   No tuning job is started on the caller's behalf: tuning takes a GPU of the
   daemon for tens of seconds, so it is asked for explicitly (Client.tune,
   `flashcore tune`); the next process then finds the tuned config.

The handle (with its cubin) is compiled or fetched through the daemon and kept
in the client's disk cache by key (_store.HandleStore), with an index from the
(class, arch, bucket) text to the key. When the daemon cannot be reached
(UNAVAILABLE, DEADLINE_EXCEEDED), the kernel last resolved for that class,
arch and bucket is served from the disk cache, so a process can launch cached
kernels with no daemon running.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import grpc

from . import _decode, messages
from ._stubs import pb
from ._store import HandleStore
from .errors import FlashCoreError

TEMPLATE = "attention_fwd"
# No family named: the daemon picks (above).
AUTO = ""
# The Hopper family (server/family/attention_sm90.hpp): sm_90a, these head dims.
HOPPER_TEMPLATE = "attention_fwd_sm90"
HOPPER_HEAD_DIMS = (64, 128, 256)
# server/tuning/tile_config.hpp kSupportedHeadDims.
SUPPORTED_HEAD_DIMS = (32, 64, 96, 128, 256)
# The sm80 family's default tile per head dim, (block_m, block_n, warps,
# stages): the configs tests/gpu/test_attention_gpu.cpp verifies without
# spills (D 256 needs small tiles for registers and shared memory; D 96 and
# 128 keep 128-row tiles with 8 warps).
DEFAULT_CONFIGS = {32: (128, 64, 4, 2), 64: (128, 64, 4, 2), 96: (128, 64, 8, 2),
                   128: (128, 64, 8, 2), 256: (64, 32, 4, 2)}
# server/tuning/shape_bucket.hpp.
MIN_SEQ_BUCKET = 64
MIN_QUERY_BUCKET = 1  # seq_q below 64: every power of two is its own bucket
MAX_SEQ_BUCKET = 1 << 30

# Codes that mean "no daemon to ask", as opposed to an answer.
TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A GetTuningResult lookup is quick; a Compile may run NVRTC for seconds.
LOOKUP_TIMEOUT_S = 10.0


def next_power_of_two(value: int) -> int:
    return 1 if value <= 1 else 1 << (int(value) - 1).bit_length()


def seq_bucket(seq: int, min_bucket: int = MIN_SEQ_BUCKET) -> int:
    return min(max(next_power_of_two(seq), min_bucket), MAX_SEQ_BUCKET)


def bucket(batch: int, heads: int, seq_q: int, seq_k: int) -> Tuple[int, int, int]:
    """(seq_q, seq_k, batch_heads) bucket, as the daemon computes it."""
    return (seq_bucket(seq_q, MIN_QUERY_BUCKET), seq_bucket(seq_k),
            next_power_of_two(max(batch, 1) * max(heads, 1)))


def whole_bucket(batch: int, heads: int, kv_heads: int, seq_q: int, seq_k: int,
                 layout: str) -> Tuple[int, int, int, int, str]:
    """The daemon's whole bucket (bucket_of): the three sizes above, the GQA ratio
    rounded up to a power of two, and the layout."""
    seq_q_b, seq_k_b, batch_heads = bucket(batch, heads, seq_q, seq_k)
    heads = max(heads, 1)
    kv_heads = min(max(kv_heads, 1), heads)
    return (seq_q_b, seq_k_b, batch_heads,
            next_power_of_two((heads + kv_heads - 1) // kv_heads), layout)


def bucket_text(batch: int, heads: int, kv_heads: int, seq_q: int, seq_k: int,
                layout: str) -> str:
    """whole_bucket as the daemon writes it (canonical_bucket)."""
    return "seq_q=%d;seq_k=%d;batch_heads=%d;gqa=%d;layout=%s;" % whole_bucket(
        batch, heads, kv_heads, seq_q, seq_k, layout)


@dataclass(frozen=True)
class Query:
    """One attention call's kernel question: class, arch and run-time shape."""
    dtype: str        # "fp16" or "bf16"
    head_dim: int
    causal: bool
    arch: str         # "sm_80", ..., "sm_90a"
    batch: int
    heads: int
    kv_heads: int
    seq_q: int
    seq_k: int
    layout: str       # "bshd" or "bhsd"
    device_name: str  # the GPU's name, as the tuning database records it
    template: str = AUTO  # the kernel family; AUTO: the daemon's choice

    def index_text(self) -> str:
        """The disk cache's index text: class, arch and bucket, and for the decode
        family's shapes the packed rows (its kernels are compiled for them)."""
        text = "template=%s;dtype=%s;head_dim=%d;causal=%d;arch=%s;%s" % (
            self.template or "auto", self.dtype, self.head_dim, int(self.causal), self.arch,
            bucket_text(self.batch, self.heads, self.kv_heads, self.seq_q, self.seq_k,
                        self.layout))
        rows = self.decode_rows()
        return text + ("packed_rows=%d;" % rows if rows else "")

    def decode_rows(self) -> int:
        """The decode family's packed rows when the daemon would serve this query
        with it (AUTO or named), else 0."""
        if self.template not in (AUTO, _decode.TEMPLATE):
            return 0
        if not _decode.serves(self.head_dim, self.causal, self.heads, self.kv_heads, self.seq_q,
                              self.seq_k):
            return 0
        return _decode.packed_rows_for(self.heads, self.kv_heads, self.seq_q)

    def request(self, config: Optional[pb.TileConfig] = None,
                template: Optional[str] = None) -> pb.KernelRequest:
        return messages.kernel_request(
            template_id=self.template if template is None else template, dtype=self.dtype,
            head_dim=self.head_dim, causal=self.causal, batch=self.batch, heads=self.heads,
            kv_heads=self.kv_heads, seq_q=self.seq_q, seq_k=self.seq_k, layout=self.layout,
            arch=self.arch, config=config, omit_cubin=True, accepts_multi_kernel=True)


def default_config(head_dim: int) -> pb.TileConfig:
    block_m, block_n, warps, stages = DEFAULT_CONFIGS[head_dim]
    return messages.tile_config(block_m, block_n, warps, stages)


@dataclass
class Resolved:
    handle: pb.KernelHandle  # with its cubin
    config_source: str       # "tuned", "default", or "cached" (daemon unreachable)
    handle_source: str       # "daemon", "disk"


class Resolver:
    def __init__(self, client: Callable[[], "object"], store: HandleStore,
                 on_store_error: Callable[[OSError], None] = lambda error: None):
        self._client = client
        self._store = store
        self._on_store_error = on_store_error

    def resolve(self, query: Query) -> Resolved:
        """Raises FlashCoreError: the daemon's refusal, or the transport error when
        the daemon is unreachable and the disk cache has nothing for the query."""
        try:
            return self._from_daemon(query)
        except FlashCoreError as error:
            if error.code not in TRANSPORT_CODES:
                raise
            key = self._store.lookup(query.index_text())
            handle = self._store.get(key) if key else None
            if handle is None:
                raise
            return Resolved(handle, "cached", "disk")

    def _from_daemon(self, query: Query) -> Resolved:
        client = self._client()
        try:
            tuned = client.get_tuning_result(query.request(), device=query.device_name,
                                             timeout=LOOKUP_TIMEOUT_S)
            # The family whose best the daemon serves for the bucket.
            template = tuned.template_id or query.template
            config, config_source = tuned.config, "tuned"
        except FlashCoreError as error:
            if error.code in TRANSPORT_CODES:
                raise
            # NOT_FOUND (untuned bucket), or a daemon without a tuning database:
            # this client's sm80 tiles, or no config (the daemon's family default,
            # and with AUTO its choice of family).
            template = query.template
            config = default_config(query.head_dim) if template == TEMPLATE else None
            config_source = "default"
        meta = client.compile(query.request(config, template))
        handle, handle_source = self._store.get(meta.key), "disk"
        if handle is None:
            handle, handle_source = client.get_kernel(meta.key), "daemon"
            try:
                self._store.put(handle)
            except OSError as error:
                self._on_store_error(error)
        try:
            self._store.remember(query.index_text(), meta.key)
        except OSError as error:
            self._on_store_error(error)
        return Resolved(handle, config_source, handle_source)
