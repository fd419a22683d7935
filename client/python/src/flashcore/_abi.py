"""Filling the kernel's params struct from the ABI its handle describes.

The handle's KernelAbi lists every field of flashcore::AttentionParams
(kernel_templates/common/attention_params.cuh) with its offset, size and
type, so this client packs the struct from the handle rather than from a
copy of the header: a field that moves is followed, and a field this client
cannot fill, or an ABI version it does not know, is refused before launch.
"""

import struct
from typing import Dict, Sequence

# The ABI version this client's field meanings are written for
# (FLASHCORE_ATTENTION_ABI_VERSION).
ABI_VERSION = 1
PARAMS_STRUCT = "flashcore::AttentionParams"

# Every field the client fills, in the header's order.
FIELDS = (
    "q", "k", "v", "o", "lse",
    "q_batch_stride", "q_head_stride", "q_row_stride",
    "k_batch_stride", "k_head_stride", "k_row_stride",
    "v_batch_stride", "v_head_stride", "v_row_stride",
    "o_batch_stride", "o_head_stride", "o_row_stride",
    "batch", "heads", "kv_heads", "seq_q", "seq_k",
    "softmax_scale", "softmax_scale_log2",
)

# ABI type -> (struct code, size); little-endian, no implicit padding ('<').
_TYPES = {"ptr": ("Q", 8), "i64": ("q", 8), "i32": ("i", 4), "f32": ("f", 4)}


class AbiError(ValueError):
    """The handle's ABI is not one this client can fill."""


class ParamsLayout:
    """A struct.Struct built once per handle; pack() takes values in FIELDS order."""

    def __init__(self, abi):
        if abi.params_struct and abi.params_struct != PARAMS_STRUCT:
            raise AbiError("kernel params struct is %s, this client fills %s"
                           % (abi.params_struct, PARAMS_STRUCT))
        if abi.abi_version != ABI_VERSION:
            raise AbiError("kernel ABI version %d does not match this client's %d"
                           % (abi.abi_version, ABI_VERSION))
        fields: Dict[str, object] = {}
        for field in abi.fields:
            if field.type not in _TYPES:
                raise AbiError("field %s has ABI type %r, which this client cannot fill"
                               % (field.name, field.type))
            if _TYPES[field.type][1] != field.size:
                raise AbiError("field %s: type %s is %d bytes, the handle says %d"
                               % (field.name, field.type, _TYPES[field.type][1], field.size))
            fields[field.name] = field
        missing = [name for name in FIELDS if name not in fields]
        unknown = [name for name in fields if name not in FIELDS]
        if missing or unknown:
            raise AbiError("kernel params fields differ from this client's: missing %s, unknown %s"
                           % (missing or "none", unknown or "none"))
        order = sorted(fields.values(), key=lambda f: f.offset)
        fmt, position = "<", 0
        for field in order:
            if field.offset < position:
                raise AbiError("field %s at offset %d overlaps the one before" %
                               (field.name, field.offset))
            fmt += "x" * (field.offset - position) + _TYPES[field.type][0]
            position = field.offset + field.size
        size = abi.params_size or position
        if size < position:
            raise AbiError("params_size %d is smaller than its fields (%d bytes)" % (size, position))
        fmt += "x" * (size - position)
        self.size = size
        self._struct = struct.Struct(fmt)
        # pack() takes values in FIELDS order; the struct wants offset order.
        self._order = tuple(FIELDS.index(field.name) for field in order)
        self._in_order = self._order == tuple(range(len(FIELDS)))

    def pack(self, values: Sequence) -> bytes:
        """The struct's bytes for ``values`` given in FIELDS order."""
        if self._in_order:  # the header's own order: no reordering per call
            return self._struct.pack(*values)
        return self._struct.pack(*[values[i] for i in self._order])
