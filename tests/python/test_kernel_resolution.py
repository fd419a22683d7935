"""The torch layer's parts that need neither PyTorch nor a GPU, against a real daemon:
which kernel a call gets (tuned or default config), the handle cache on disk and its
use without a daemon, the shape buckets, and filling the params struct from a
handle's ABI.
"""

import re
import struct

import grpc
import pytest


@pytest.fixture
def parts(flashcore):
    from flashcore import _abi, _resolve, _store
    return _abi, _resolve, _store


def query(resolve, **overrides):
    fields = dict(dtype="fp16", head_dim=128, causal=True, arch="sm_90a", batch=2, heads=16,
                  kv_heads=4, seq_q=1000, seq_k=1000, layout="bhsd", device_name="NVIDIA H200",
                  template=resolve.TEMPLATE)
    fields.update(overrides)
    return resolve.Query(**fields)


# -- shape buckets ------------------------------------------------------------


@pytest.mark.parametrize("shape", [
    dict(batch=5, heads=6, seq_q=1000, seq_k=33),
    dict(batch=1, heads=1, seq_q=1, seq_k=65536),
    dict(batch=3, heads=32, seq_q=4097, seq_k=64),
    dict(batch=2, heads=40, kv_heads=8, seq_q=3, seq_k=5000, layout="bhsd"),
    dict(batch=1, heads=32, kv_heads=1, seq_q=1, seq_k=100, layout="bshd"),
])
def test_buckets_match_the_daemons(flashcore, client, parts, shape):
    _, resolve, _ = parts
    seq_q, seq_k, batch_heads = resolve.bucket(shape["batch"], shape["heads"], shape["seq_q"],
                                               shape["seq_k"])
    with pytest.raises(flashcore.FlashCoreError) as info:
        client.get_tuning_result(head_dim=64, device="any", **shape)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "bucket seq_q=%d;seq_k=%d;batch_heads=%d;" % (seq_q, seq_k, batch_heads) \
        in info.value.message
    text = resolve.bucket_text(shape["batch"], shape["heads"],
                               shape.get("kv_heads") or shape["heads"], shape["seq_q"],
                               shape["seq_k"], shape.get("layout", "bshd"))
    assert "bucket " + text + " on any" in info.value.message, (text, info.value.message)


# -- the family's default configs ---------------------------------------------


@pytest.mark.parametrize("arch", ["sm_80", "sm_86", "sm_90a"])
@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 256])
def test_default_configs_compile_without_spills(client, parts, head_dim, arch):
    _, resolve, _ = parts
    handle = client.compile(query(resolve, head_dim=head_dim, arch=arch, causal=False).request(
        resolve.default_config(head_dim)))
    assert handle.resources.spill_store_bytes == 0 and handle.resources.stack_frame_bytes == 0
    block_m, block_n, warps, stages = resolve.DEFAULT_CONFIGS[head_dim]
    assert (handle.config.block_m, handle.config.block_n, handle.config.warps,
            handle.config.stages) == (block_m, block_n, warps, stages)


# -- resolution and the disk cache --------------------------------------------


def test_untuned_bucket_gets_the_default_config_and_is_cached_on_disk(flashcore, client, parts,
                                                                     tmp_path):
    _, resolve, store_module = parts
    store = store_module.HandleStore(tmp_path / "cache")
    resolver = resolve.Resolver(lambda: client, store)
    q = query(resolve)
    first = resolver.resolve(q)
    assert first.config_source == "default" and first.handle_source == "daemon"
    handle = first.handle
    assert handle.cubin[:4] == b"\x7fELF"
    assert (handle.config.block_m, handle.config.warps) == (128, 8)  # D 128's default
    assert handle.problem.causal and handle.arch == "sm_90a"
    path = tmp_path / "cache" / "handles" / handle.key[:2] / (handle.key + ".pb")
    assert path.is_file()
    assert store.lookup(q.index_text()) == handle.key

    # A new process (a new resolver) finds the cubin on disk: only metadata crosses the wire.
    again = resolve.Resolver(lambda: client, store_module.HandleStore(tmp_path / "cache"))
    second = again.resolve(query(resolve, seq_q=900, batch=1, heads=32))  # same bucket
    assert second.handle_source == "disk" and second.handle.key == handle.key
    assert second.handle.cubin == handle.cubin


def test_a_corrupt_cached_handle_is_dropped_and_fetched_again(client, parts, tmp_path):
    _, resolve, store_module = parts
    store = store_module.HandleStore(tmp_path / "cache")
    key = resolve.Resolver(lambda: client, store).resolve(query(resolve)).handle.key
    path = tmp_path / "cache" / "handles" / key[:2] / (key + ".pb")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bit flip inside the cubin
    path.write_bytes(bytes(data))
    assert store.get(key) is None and not path.exists()
    resolved = resolve.Resolver(lambda: client, store).resolve(query(resolve))
    assert resolved.handle_source == "daemon" and path.exists()


def test_without_a_daemon_the_last_kernel_of_the_bucket_comes_from_disk(flashcore, parts,
                                                                       start_daemon, tmp_path):
    _, resolve, store_module = parts
    daemon = start_daemon()
    c = flashcore.Client(daemon.address, timeout=60)
    store = store_module.HandleStore(tmp_path / "cache")
    online = resolve.Resolver(lambda: c, store).resolve(query(resolve))
    assert daemon.stop() == 0

    offline = resolve.Resolver(lambda: c, store)
    served = offline.resolve(query(resolve, seq_q=600))  # same bucket (1024)
    assert served.config_source == "cached" and served.handle_source == "disk"
    assert served.handle.key == online.handle.key
    with pytest.raises(flashcore.FlashCoreError) as info:
        offline.resolve(query(resolve, seq_q=5000))  # another bucket: nothing cached
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot reach flashcored" in info.value.message
    c.close()


def test_a_refusal_is_not_hidden_by_the_disk_cache(flashcore, client, parts, tmp_path):
    _, resolve, store_module = parts
    resolver = resolve.Resolver(lambda: client, store_module.HandleStore(tmp_path / "cache"))
    with pytest.raises(flashcore.FlashCoreError) as info:
        resolver.resolve(query(resolve, heads=16, kv_heads=5))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "kv_heads" in info.value.message


def test_an_unwritable_cache_is_reported_and_resolution_goes_on(client, parts, tmp_path):
    _, resolve, store_module = parts
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    errors = []
    resolver = resolve.Resolver(lambda: client, store_module.HandleStore(blocker / "cache"),
                                errors.append)
    resolved = resolver.resolve(query(resolve, head_dim=64))
    assert resolved.handle.cubin and resolved.handle_source == "daemon"
    assert errors and all(isinstance(e, OSError) for e in errors)


# -- the params struct from the handle's ABI ----------------------------------


def test_params_are_packed_at_the_offsets_the_handle_gives(client, parts):
    abi_module, resolve, _ = parts
    handle = client.compile(query(resolve, head_dim=64).request(resolve.default_config(64)))
    layout = abi_module.ParamsLayout(handle.abi)
    assert layout.size == handle.abi.params_size == 168
    values = [0x7F0000001000 + 0x100 * i for i in range(5)] + list(range(8, 8 * 13, 8)) + \
        [2, 16, 4, 1000, 999, 0.125, 0.125 * 1.4426950408889634]
    data = layout.pack(values)
    assert len(data) == 168
    launched = bytearray(168)  # what the launch path writes into its buffer
    layout.pack_into_args(launched, 0, *values)
    assert bytes(launched) == data
    codes = {"ptr": "<Q", "i64": "<q", "i32": "<i", "f32": "<f"}
    by_name = dict(zip(abi_module.FIELDS, values))
    for field in handle.abi.fields:
        (value,) = struct.unpack_from(codes[field.type], data, field.offset)
        assert value == pytest.approx(by_name[field.name], rel=1e-7), field.name


def test_params_follow_a_field_that_moves(flashcore, client, parts):
    abi_module, resolve, _ = parts
    abi = client.compile(query(resolve, head_dim=64).request(
        resolve.default_config(64))).abi
    moved = flashcore.pb.KernelAbi()
    moved.CopyFrom(abi)
    # Swap the offsets of seq_q and seq_k: the packer must write each where it is told.
    by_name = {f.name: f for f in moved.fields}
    by_name["seq_q"].offset, by_name["seq_k"].offset = by_name["seq_k"].offset, \
        by_name["seq_q"].offset
    layout = abi_module.ParamsLayout(moved)
    values = [0] * 5 + [0] * 12 + [1, 1, 1, 111, 222, 1.0, 1.0]
    data = layout.pack(values)
    assert struct.unpack_from("<i", data, by_name["seq_q"].offset)[0] == 111
    assert struct.unpack_from("<i", data, by_name["seq_k"].offset)[0] == 222
    launched = bytearray(layout.size)  # the launch path's packer reorders the same way
    layout.pack_into_args(launched, 0, *values)
    assert bytes(launched) == data


@pytest.mark.parametrize("tamper, message", [
    (lambda abi: setattr(abi, "abi_version", 7), "ABI version 7"),
    (lambda abi: setattr(abi, "params_struct", "other::Params"), "other::Params"),
    (lambda abi: setattr(abi.fields[3], "type", "f64"), "'f64'"),
    (lambda abi: setattr(abi.fields[3], "size", 4), "is 8 bytes, the handle says 4"),
    (lambda abi: abi.fields.pop(), "missing ['softmax_scale_log2']"),
    (lambda abi: setattr(abi.fields[1], "offset", 4), "overlaps"),
])
def test_an_abi_this_client_cannot_fill_is_refused(flashcore, client, parts, tamper, message):
    abi_module, resolve, _ = parts
    abi = flashcore.pb.KernelAbi()
    abi.CopyFrom(client.compile(query(resolve, head_dim=64).request(
        resolve.default_config(64))).abi)
    tamper(abi)
    with pytest.raises(abi_module.AbiError, match=re.escape(message)):
        abi_module.ParamsLayout(abi)


# -- the Hopper family's ABI 2 ------------------------------------------------


def test_an_sm90_handle_packs_its_tensor_maps_and_fields_where_the_abi_says(client, parts):
    """A real Hopper-family handle from the daemon (NVRTC compiles sm_90a here):
    the maps land at their offsets, the attention fields after them, and each
    recipe turns into cuTensorMapEncodeTiled's arguments for the call's shape."""
    _abi, _resolve, _ = parts
    q = query(_resolve, template="attention_fwd_sm90", head_dim=64, causal=False)
    handle = client.compile(q.request())
    assert handle.abi.abi_version == 2
    layout = _abi.ParamsLayout(handle.abi)
    assert layout.tma and layout.size == handle.abi.params_size
    values = list(range(1, len(_abi.FIELDS) + 1))
    values[_abi.FIELDS.index("softmax_scale")] = 0.125
    values[_abi.FIELDS.index("softmax_scale_log2")] = 0.25
    maps = [bytes([i]) * 128 for i in (1, 2, 3, 4)]
    packed = layout.pack(values, maps)
    assert len(packed) == handle.abi.params_size
    offsets = {f.name: f.offset for f in handle.abi.fields}
    for i, name in enumerate(_abi.TMA_OPERANDS):
        assert packed[offsets[name]:offsets[name] + 128] == maps[i]
    seq_q = struct.unpack_from("<i", packed, offsets["attn.seq_q"])[0]
    assert seq_q == values[_abi.FIELDS.index("seq_q")]

    named = {"attn." + f: v for f, v in zip(_abi.FIELDS, values)}
    named.update(head_dim=64, seq_q=1000, seq_k=1500, heads=16, kv_heads=4, batch=2)
    k_recipe = next(r for r in handle.abi.tensor_maps if r.operand == "k")
    (dtype, rank, address, dims, strides, box, element_strides, interleave, swizzle, l2,
     oob) = _abi.tensor_map_arguments(k_recipe, named)
    assert (dtype, rank) == (6, 4)
    assert address == named["attn.k"]
    assert dims == (64, 1500, 4, 2)
    assert strides == tuple(2 * named["attn.k_" + s] for s in
                            ("row_stride", "head_stride", "batch_stride"))
    assert box == (64, handle.config.block_n, 1, 1)
    assert swizzle == 3 and element_strides == (1, 1, 1, 1)
    k_recipe.global_dims[0] = "no_such_value"
    with pytest.raises(_abi.AbiError, match="no_such_value"):
        _abi.tensor_map_arguments(k_recipe, named)


# -- which family: the daemon's choice (AUTO) ---------------------------------


@pytest.mark.parametrize("arch, head_dim, family", [
    ("sm_90a", 128, "attention_fwd_sm90"),
    ("sm_90a", 96, "attention_fwd"),   # not a Hopper head dim
    ("sm_80", 128, "attention_fwd"),
])
def test_an_untuned_prefill_call_gets_the_daemons_family(client, parts, tmp_path, arch, head_dim,
                                                         family):
    _, resolve, store_module = parts
    resolver = resolve.Resolver(lambda: client, store_module.HandleStore(tmp_path / "cache"))
    q = query(resolve, template=resolve.AUTO, arch=arch, head_dim=head_dim, causal=False)
    resolved = resolver.resolve(q)
    assert resolved.config_source == "default"
    assert resolved.handle.template_id == family
    assert "template=auto;" in q.index_text() and "packed_rows" not in q.index_text()


# Decode-sized calls: (heads, kv_heads, seq_q, seq_k, causal); the Python rule
# (_decode.serves) must give the family the daemon picks for each.
DECODE_SHAPES = [
    (32, 8, 1, 4096, False),    # GQA 4: 4 rows -> 16
    (32, 8, 4, 777, False),     # 16 rows
    (32, 8, 12, 2000, False),   # 48 rows
    (32, 8, 16, 2000, False),   # 64 rows
    (32, 8, 17, 2000, False),   # 68 rows: prefill
    (8, 1, 8, 5000, False),     # MQA 8 x 8 = 64 rows
    (16, 16, 1, 3001, True),    # causal, one query row, many keys: the mask matters: prefill
    (16, 16, 1, 1, True),       # causal with one key: no mask
    (4, 4, 64, 64, False),      # 64 rows
    (4, 4, 65, 65, False),      # prefill
]


@pytest.mark.parametrize("heads, kv_heads, seq_q, seq_k, causal", DECODE_SHAPES)
def test_the_decode_rule_picks_what_the_daemon_picks(client, parts, heads, kv_heads, seq_q,
                                                     seq_k, causal):
    from flashcore import _decode
    _, resolve, _ = parts
    q = query(resolve, template=resolve.AUTO, batch=3, heads=heads, kv_heads=kv_heads,
              seq_q=seq_q, seq_k=seq_k, causal=causal)
    handle = client.compile(q.request())
    decode = _decode.serves(128, causal, heads, kv_heads, seq_q, seq_k)
    assert (handle.template_id == _decode.TEMPLATE) == decode, handle.template_id
    assert bool(q.decode_rows()) == decode
    if decode:
        assert handle.config.block_m == q.decode_rows() == _decode.packed_rows_for(
            heads, kv_heads, seq_q)
        assert "packed_rows=%d;" % q.decode_rows() in q.index_text()


# (batch, heads, kv_heads, seq_q, seq_k, config) for the launch rules; config
# None is the daemon's default (fused combine, splits by the rule).
DECODE_LAUNCHES = [
    (1, 32, 8, 1, 8192, None),
    (1, 32, 8, 1, 131072, None),
    (2, 32, 8, 1, 100, None),
    (64, 32, 8, 1, 1024, None),
    (8, 32, 8, 4, 4096, None),
    (3, 8, 1, 1, 777, None),
    (1, 32, 8, 1, 8192, (16, 32, 2, 3, False, 0)),   # two kernels, splits by the rule
    (4, 16, 16, 2, 5000, (32, 64, 4, 3, False, 7)),  # two kernels, 7 splits asked
    (1, 32, 8, 1, 300, (16, 64, 4, 2, True, 64)),    # more splits asked than key tiles
]


@pytest.mark.parametrize("batch, heads, kv_heads, seq_q, seq_k, config", DECODE_LAUNCHES)
def test_decode_launch_rules_match_the_daemons_handles(flashcore, client, parts, batch, heads,
                                                       kv_heads, seq_q, seq_k, config):
    """The split count, grids and workspace the client computes for a call are the
    ones the daemon writes into a handle compiled for that shape (at its 132 SMs)."""
    from flashcore import _decode
    _, resolve, _ = parts
    tile = None
    if config is not None:
        rows, block_n, warps, stages, fused, splits = config
        tile = flashcore.pb.TileConfig(block_m=rows, block_n=block_n, warps=warps,
                                       stages=stages, fused_combine=fused, splits=splits)
    q = query(resolve, template=_decode.TEMPLATE, batch=batch, heads=heads, kv_heads=kv_heads,
              seq_q=seq_q, seq_k=seq_k, causal=False)
    handle = client.compile(q.request(tile))
    kernel = _decode.Kernel.from_handle(handle)
    launch = kernel.launch(batch, heads, kv_heads, seq_q, seq_k, _decode.HANDLE_SM_COUNT)
    assert launch.num_splits == handle.num_splits
    assert launch.workspace_bytes == handle.workspace.bytes
    split = handle.steps[0]
    assert split.role == "split" and split.lowered_name == handle.lowered_name
    assert launch.split_grid == (split.launch.grid.x, split.launch.grid.y, split.launch.grid.z)
    combine = [s for s in handle.steps if s.role == "combine"]
    assert bool(combine) == (not kernel.fused_combine)
    if launch.combine_grid is not None:
        assert launch.combine_grid == (combine[0].launch.grid.x, 1, 1)
        assert combine[0].launch.block.x == _decode.COMBINE_THREADS
    if config is not None and config[5] > 0:
        assert launch.num_splits == _decode.effective_splits(seq_k, kernel.block_n, config[5])


def num_splits_as_the_header_loops(batch, heads, kv_heads, seq_q, seq_k, head_dim, block_n,
                                   sm_count, blocks_per_sm=1, max_splits=128):
    """decode_num_splits as decode_params.cuh writes it: every split count, skipping
    one whose tiles per split repeat the previous one's."""
    def ceil_div(a, b):
        return (a + b - 1) // b
    tiles = ceil_div(seq_k, block_n)
    slots = sm_count * (blocks_per_sm if blocks_per_sm > 0 else 1)
    best, best_cost, last_tps = 1, 0.0, 0
    for s in range(1, min(tiles, max_splits) + 1):
        tps = ceil_div(tiles, s)
        if tps == last_tps:
            continue
        last_tps = tps
        used = ceil_div(tiles, tps)
        cost = float((batch * kv_heads * used + slots - 1) // slots) * (tps + 2.0)
        if used > 1:
            cost += 1.0 + (8.0 * batch * heads * seq_q * used * head_dim) / (
                4.0 * block_n * head_dim * float(slots))
        if s == 1 or cost < best_cost:
            best, best_cost = used, cost
    return best


def test_the_split_rule_is_the_headers_loop(flashcore):
    """num_splits jumps between the split counts whose tiles per split differ; the
    header's loop visits every count. Same answer over a spread of shapes."""
    import random
    from flashcore import _decode
    rng = random.Random(7)
    for _ in range(3000):
        kv = rng.choice([1, 2, 8, 32])
        args = (rng.choice([1, 3, 16, 128]), kv * rng.choice([1, 4, 8]), kv, rng.choice([1, 4]),
                rng.randint(1, rng.choice([500, 20000, 300000])), rng.choice([64, 128, 256]),
                rng.choice([16, 32, 64, 128]), rng.choice([1, 78, 132]))
        assert _decode.num_splits(*args) == num_splits_as_the_header_loops(*args), args


def test_a_decode_handle_packs_its_params_where_the_abi_says(client, parts):
    from flashcore import _decode
    abi_module, resolve, _ = parts
    q = query(resolve, template=_decode.TEMPLATE, batch=1, heads=32, kv_heads=8, seq_q=1,
              seq_k=8192, causal=False)
    handle = client.compile(q.request())
    assert handle.abi.abi_version == abi_module.DECODE_ABI_VERSION
    layout = abi_module.ParamsLayout(handle.abi)
    assert layout.decode and not layout.tma and layout.size == handle.abi.params_size
    values = [0x7F0000001000 + 0x100 * i for i in range(8)] + list(range(8, 8 * 13, 8)) + \
        [1, 32, 8, 1, 8192, 16, 0.125, 0.125 * 1.4426950408889634]
    data = layout.pack(values)
    codes = {"ptr": "<Q", "i64": "<q", "i32": "<i", "f32": "<f"}
    by_name = dict(zip(abi_module.DECODE_FIELDS, values))
    assert {f.name for f in handle.abi.fields} == set(abi_module.DECODE_FIELDS)
    for field in handle.abi.fields:
        (value,) = struct.unpack_from(codes[field.type], data, field.offset)
        assert value == pytest.approx(by_name[field.name], rel=1e-7), field.name


def test_a_decode_call_is_cached_on_disk_by_its_packed_rows(flashcore, parts, start_daemon,
                                                           tmp_path):
    """Two decode calls of one bucket with other packed rows get other kernels, and
    each is found on disk by its own index text when the daemon is gone."""
    _, resolve, store_module = parts
    daemon = start_daemon()
    c = flashcore.Client(daemon.address, timeout=60)
    store = store_module.HandleStore(tmp_path / "cache")
    four = query(resolve, template=resolve.AUTO, heads=32, kv_heads=8, seq_q=3, seq_k=2000,
                 causal=False)      # 12 rows -> 16
    sixteen = query(resolve, template=resolve.AUTO, heads=32, kv_heads=8, seq_q=4, seq_k=2000,
                    causal=False)   # 16 rows, the same bucket (seq_q 4)
    twelve = query(resolve, template=resolve.AUTO, heads=48, kv_heads=8, seq_q=4, seq_k=2000,
                   causal=False)    # 24 rows -> 32, batch x heads 96 -> 128 (another bucket)
    online = [resolve.Resolver(lambda: c, store).resolve(x).handle for x in (four, sixteen, twelve)]
    assert [h.template_id for h in online] == ["attention_decode"] * 3
    assert online[0].key == online[1].key  # both 16 packed rows
    assert online[2].config.block_m == 32 and online[2].key != online[0].key
    assert daemon.stop() == 0
    offline = resolve.Resolver(lambda: c, store)
    for x, h in zip((four, sixteen, twelve), online):
        served = offline.resolve(x)
        assert served.handle_source == "disk" and served.handle.key == h.key
    c.close()
