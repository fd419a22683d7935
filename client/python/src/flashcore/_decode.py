"""The decode family's launch rules, for a client that launches its handles.

A decode handle (template "attention_decode", ABI 3: flashcore::DecodeParams)
is one or two kernels and a workspace: the split kernel streams a share of
the keys per block and, when the keys are split, writes a partial output and
log-sum-exp per split; the last split block of each (batch, kv head) merges
them (fused combine), or a second kernel does. The handle's steps, workspace
and num_splits are for the shape it was compiled for and a 132-SM GPU; a call
of another shape on this GPU needs them again, so they are computed here by
the rules the kernels compile with (kernel_templates/decode/decode_params.cuh,
server/family/attention_decode.cpp), as the C++ launcher does
(runtime/cuda/attention_launch.cpp). tests/python/test_kernel_resolution.py
checks them against the handles the daemon answers. No torch here.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

TEMPLATE = "attention_decode"
ABI_VERSION = 3
HEAD_DIMS = (64, 128, 256)
MAX_PACKED_ROWS = 64
MAX_SPLITS = 1024
COMBINE_THREADS = 128
# What the daemon assumes for the handle's own num_splits (kHandleSmCount).
HANDLE_SM_COUNT = 132


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def packed_rows_for(heads: int, kv_heads: int, seq_q: int) -> int:
    """The query rows of one kv head (heads / kv_heads * seq_q) rounded up to the
    16-row mma tile; 0 past MAX_PACKED_ROWS (a prefill shape)."""
    rows = _ceil_div((heads // max(kv_heads, 1)) * seq_q, 16) * 16
    return rows if rows <= MAX_PACKED_ROWS else 0


def serves(head_dim: int, causal: bool, heads: int, kv_heads: int, seq_q: int,
           seq_k: int) -> bool:
    """Whether the daemon answers this call with the decode family when the
    client takes multi-kernel handles (decode_family::serves): few packed rows,
    a head dim of the family, and no causal mask to apply (top-left causal with
    more than one key is a mask the decode kernels do not apply)."""
    if head_dim not in HEAD_DIMS:
        return False
    if causal and seq_k > 1:
        return False
    return packed_rows_for(heads, kv_heads, seq_q) != 0


def key_tiles(seq_k: int, block_n: int) -> int:
    return _ceil_div(seq_k, block_n)


def tiles_per_split(seq_k: int, block_n: int, splits: int) -> int:
    return _ceil_div(key_tiles(seq_k, block_n), splits)


def effective_splits(seq_k: int, block_n: int, splits: int) -> int:
    """Splits that own at least one key tile (what a launch uses)."""
    return _ceil_div(key_tiles(seq_k, block_n), tiles_per_split(seq_k, block_n, splits))


def num_splits(batch: int, heads: int, kv_heads: int, seq_q: int, seq_k: int, head_dim: int,
               block_n: int, sm_count: int, blocks_per_sm: int = 1,
               max_splits: int = 128) -> int:
    """decode_num_splits: the split count of least modelled cost (waves of key
    tiles per multiprocessor slot plus the combine's traffic), ties to fewer."""
    tiles = key_tiles(seq_k, block_n)
    slots = sm_count * (blocks_per_sm if blocks_per_sm > 0 else 1)
    pairs = batch * kv_heads
    tile_bytes = 4.0 * block_n * head_dim
    fixed = 2.0
    best, best_cost = 1, 0.0
    limit = min(tiles, max_splits)
    s = 1
    # The header's loop visits s = 1..limit and skips an s whose tiles per split
    # repeat the previous s's; this visits the same s values by jumping to the
    # next one whose tiles per split are smaller (O(sqrt(tiles)) steps: a call
    # computes it for its own seq_k).
    while s <= limit:
        tps = _ceil_div(tiles, s)
        used = _ceil_div(tiles, tps)
        waves = (pairs * used + slots - 1) // slots
        cost = float(waves) * (tps + fixed)
        if used > 1:
            partial_bytes = 8.0 * batch * heads * seq_q * used * head_dim
            cost += 1.0 + partial_bytes / (tile_bytes * float(slots))
        if s == 1 or cost < best_cost:
            best, best_cost = used, cost
        if tps == 1:
            break
        s = max(s + 1, _ceil_div(tiles, tps - 1))
    return best


def combine_rows_per_block(head_dim: int) -> int:
    return COMBINE_THREADS // (head_dim // 8)


def align256(size: int) -> int:
    return (size + 255) // 256 * 256


def counter_bytes(batch: int, kv_heads: int) -> int:
    return align256(4 * batch * kv_heads)


@dataclass(frozen=True)
class Launch:
    """One call's decode launch: the split count, both grids, and the workspace
    pieces (bytes; 0 when num_splits is 1)."""
    num_splits: int
    split_grid: Tuple[int, int, int]
    combine_grid: Optional[Tuple[int, int, int]]  # None: no combine kernel to launch
    counter_bytes: int   # split_counters, u32 [batch, kv_heads] (fused combine)
    o_partial_bytes: int  # fp32 [batch, heads, seq_q, num_splits, head_dim]
    lse_partial_bytes: int  # fp32 [batch, heads, seq_q, num_splits]

    @property
    def workspace_bytes(self) -> int:
        """decode_workspace_bytes: the three pieces as one buffer, counters first."""
        if self.num_splits <= 1:
            return 0
        return self.counter_bytes + self.o_partial_bytes + self.lse_partial_bytes


@dataclass(frozen=True)
class Kernel:
    """What a decode handle's config fixes: packed rows, key tile, a forced split
    count (0 = the rule), fused combine, head dim."""
    head_dim: int
    packed_rows: int
    block_n: int
    splits: int
    fused_combine: bool

    @classmethod
    def from_handle(cls, handle) -> "Kernel":
        config = handle.config
        kernel = cls(int(handle.problem.head_dim), int(config.block_m), int(config.block_n),
                     int(config.splits), bool(config.fused_combine))
        if not (16 <= kernel.packed_rows <= MAX_PACKED_ROWS and 0 < kernel.block_n <= 1024
                and kernel.head_dim in HEAD_DIMS and 0 <= kernel.splits <= MAX_SPLITS):
            raise ValueError("decode handle %s: config %s is not one of the family's"
                             % (handle.key[:16], kernel))
        return kernel

    def launch(self, batch: int, heads: int, kv_heads: int, seq_q: int, seq_k: int,
               sm_count: int) -> Launch:
        """The launch of this kernel for a call (decode_family::launch with the
        caller's multiprocessor count)."""
        asked = self.splits if self.splits > 0 else num_splits(
            batch, heads, kv_heads, seq_q, seq_k, self.head_dim, self.block_n, max(1, sm_count))
        splits = effective_splits(seq_k, self.block_n, asked)
        combine = None
        if splits > 1 and not self.fused_combine:
            per_block = combine_rows_per_block(self.head_dim)
            combine = (_ceil_div(batch * heads * seq_q, per_block), 1, 1)
        if splits <= 1:
            return Launch(splits, (splits, kv_heads, batch), None, 0, 0, 0)
        return Launch(splits, (splits, kv_heads, batch), combine, counter_bytes(batch, kv_heads),
                      align256(4 * batch * heads * seq_q * splits * self.head_dim),
                      align256(4 * batch * heads * seq_q * splits))
