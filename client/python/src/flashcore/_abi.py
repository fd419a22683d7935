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
# (FLASHCORE_ATTENTION_ABI_VERSION), and the Hopper family's struct: four
# CUtensorMaps (encoded per call from the handle's recipes) and then the same
# fields, named "attn.<field>" (FLASHCORE_ATTENTION_TMA_ABI_VERSION).
ABI_VERSION = 1
PARAMS_STRUCT = "flashcore::AttentionParams"
TMA_ABI_VERSION = 2
TMA_PARAMS_STRUCT = "flashcore::AttentionTmaParams"
TMA_OPERANDS = ("q", "k", "v", "o")
TENSOR_MAP_BYTES = 128
# The decode family's struct (FLASHCORE_DECODE_ABI_VERSION in the catalog's
# numbering): the workspace pointers and num_splits besides the same fields.
DECODE_ABI_VERSION = 3
DECODE_PARAMS_STRUCT = "flashcore::DecodeParams"

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

# DecodeParams' fields in the header's order (decode/decode_params.cuh).
DECODE_FIELDS = (
    "q", "k", "v", "o", "lse", "o_partial", "lse_partial", "split_counters",
    "q_batch_stride", "q_head_stride", "q_row_stride",
    "k_batch_stride", "k_head_stride", "k_row_stride",
    "v_batch_stride", "v_head_stride", "v_row_stride",
    "o_batch_stride", "o_head_stride", "o_row_stride",
    "batch", "heads", "kv_heads", "seq_q", "seq_k", "num_splits",
    "softmax_scale", "softmax_scale_log2",
)

# ABI type -> (struct code, size); little-endian, no implicit padding ('<').
_TYPES = {"ptr": ("Q", 8), "i64": ("q", 8), "i32": ("i", 4), "f32": ("f", 4),
          "tensormap": ("128s", TENSOR_MAP_BYTES)}


class AbiError(ValueError):
    """The handle's ABI is not one this client can fill."""


class ParamsLayout:
    """A struct.Struct built once per handle; pack() takes values in FIELDS order
    (DECODE_FIELDS order for the decode family's ABI)."""

    def __init__(self, abi):
        self.tma = abi.abi_version == TMA_ABI_VERSION
        self.decode = abi.abi_version == DECODE_ABI_VERSION
        want = (TMA_PARAMS_STRUCT if self.tma else
                DECODE_PARAMS_STRUCT if self.decode else PARAMS_STRUCT)
        if abi.params_struct and abi.params_struct != want:
            raise AbiError("kernel params struct is %s, this client fills %s"
                           % (abi.params_struct, want))
        if abi.abi_version not in (ABI_VERSION, TMA_ABI_VERSION, DECODE_ABI_VERSION):
            raise AbiError("kernel ABI version %d is not one this client knows (%d, %d, %d)"
                           % (abi.abi_version, ABI_VERSION, TMA_ABI_VERSION, DECODE_ABI_VERSION))
        # Names as FIELDS spells them: ABI 2 prefixes the attention fields.
        # The maps are keyed "tma.q" ... here: "q" is also AttentionParams' pointer.
        expected = ((DECODE_FIELDS if self.decode else FIELDS)
                    + (tuple("tma." + o for o in TMA_OPERANDS) if self.tma else ()))
        def plain(name):
            if not self.tma:
                return name
            if name.startswith("attn."):
                return name[len("attn."):]
            return "tma." + name if name in TMA_OPERANDS else name
        fields: Dict[str, object] = {}
        for field in abi.fields:
            if field.type not in _TYPES:
                raise AbiError("field %s has ABI type %r, which this client cannot fill"
                               % (field.name, field.type))
            if _TYPES[field.type][1] != field.size:
                raise AbiError("field %s: type %s is %d bytes, the handle says %d"
                               % (field.name, field.type, _TYPES[field.type][1], field.size))
            if (field.type == "tensormap") != (self.tma and field.name in TMA_OPERANDS):
                raise AbiError("field %s of type %s is not where this client expects one"
                               % (field.name, field.type))
            fields[plain(field.name)] = field
        missing = [name for name in expected if name not in fields]
        unknown = [name for name in fields if name not in expected]
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
        # The struct takes its arguments in offset order; pack() gets the four maps
        # of ABI 2 (TMA_OPERANDS order) and then the values in FIELDS order, which
        # is the header's own order for all three structs (AttentionTmaParams has
        # its maps first), so no reordering per call.
        arguments = ((tuple("tma." + o for o in TMA_OPERANDS) if self.tma else ())
                     + (DECODE_FIELDS if self.decode else FIELDS))
        reorder = tuple(arguments.index(plain(field.name)) for field in order)
        # Struct.pack_into(buffer, offset, *maps, *values), the arguments in the
        # header's order (the maps first for ABI 2), for the launch path to pack into
        # its buffer; the bound method itself where the offsets follow that order.
        if reorder == tuple(range(len(arguments))):
            self.pack_into_args = self._struct.pack_into
        else:
            pack_into = self._struct.pack_into
            self.pack_into_args = lambda buffer, offset, *arguments: pack_into(
                buffer, offset, *[arguments[i] for i in reorder])
        self.tensor_maps = list(abi.tensor_maps) if self.tma else []

    def pack(self, values: Sequence, maps: Sequence[bytes] = ()) -> bytes:
        """The struct's bytes for ``values`` given in FIELDS order and, for ABI 2,
        the encoded q, k, v, o tensor maps."""
        buffer = bytearray(self.size)
        self.pack_into_args(buffer, 0, *((*maps, *values) if self.tma else values))
        return bytes(buffer)


def tensor_map_arguments(recipe, named: Dict[str, int]):
    """cuTensorMapEncodeTiled's arguments for one recipe of the handle, with the
    run-time values it names (params fields as "attn.<field>", shape names as
    themselves) taken from ``named``: (data_type, rank, address, dims, strides,
    box, element_strides, interleave, swizzle, l2_promotion, oob_fill)."""
    def value(expr: str) -> int:
        name, _, factor = expr.partition("*")
        if name not in named:
            raise AbiError("tensor map %s names %r, which this client does not know"
                           % (recipe.operand, name))
        return int(named[name]) * (int(factor) if factor else 1)
    dims = tuple(value(d) for d in recipe.global_dims)
    strides = tuple(value(s) for s in recipe.global_strides_bytes)
    if len(dims) != recipe.rank or len(strides) != recipe.rank - 1:
        raise AbiError("tensor map %s: rank %d with %d dims and %d strides"
                       % (recipe.operand, recipe.rank, len(dims), len(strides)))
    return (recipe.data_type, recipe.rank, value(recipe.global_address), dims, strides,
            tuple(recipe.box_dims), tuple(recipe.element_strides), recipe.interleave,
            recipe.swizzle, recipe.l2_promotion, recipe.oob_fill)
