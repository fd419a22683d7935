"""flashcore.torch without a GPU: input checks, the SDPA fallback and its one warning,
strict mode, the custom op's fake implementation and torch.compile tracing.

Skips without PyTorch (the CPU suite must not need it). On CPU tensors every
call is "not covered", so what runs is the fallback; the kernels themselves are
tested in test_torch_gpu.py.
"""

import warnings

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed; the torch layer's "
                            "CPU tests need it (the GPU ones run in test_torch_gpu.py)")
import torch.nn.functional as F  # noqa: E402


@pytest.fixture
def ft(flashcore, tmp_path):
    import flashcore.torch as ft
    # A daemon that is not there: CPU calls never get as far as asking it anyway.
    ft.configure(address="127.0.0.1:1", cache_dir=tmp_path / "client-cache")
    yield ft
    ft.configure()


def qkv(b=2, h=4, hk=4, sq=33, sk=47, d=64, dtype=torch.float32, layout="bhsd", seed=0):
    g = torch.Generator().manual_seed(seed)
    def make(heads, seq):
        shape = (b, heads, seq, d) if layout == "bhsd" else (b, seq, heads, d)
        return torch.randn(shape, generator=g, dtype=dtype)
    return make(h, sq), make(hk, sk), make(hk, sk)


def sdpa(q, k, v, causal=False, scale=None, layout="bhsd"):
    if layout == "bshd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return out.transpose(1, 2) if layout == "bshd" else out


def test_arch_for_capability(ft):
    assert ft.arch_for_capability(8, 0) == "sm_80"
    assert ft.arch_for_capability(8, 6) == "sm_86"
    assert ft.arch_for_capability(8, 7) == "sm_86"
    assert ft.arch_for_capability(8, 9) == "sm_89"
    assert ft.arch_for_capability(9, 0) == "sm_90a"
    assert ft.arch_for_capability(7, 5) is None
    assert ft.arch_for_capability(10, 0) is None


@pytest.mark.parametrize("make, message", [
    (lambda: (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5)), "q must be 4-D"),
    (lambda: (torch.zeros(2, 4, 8, 64), torch.zeros(3, 4, 8, 64), torch.zeros(3, 4, 8, 64)),
     "batch sizes differ"),
    (lambda: (torch.zeros(1, 4, 8, 64), torch.zeros(1, 3, 8, 64), torch.zeros(1, 3, 8, 64)),
     "kv heads 3 must divide query heads 4"),
    (lambda: (torch.zeros(1, 4, 8, 64), torch.zeros(1, 4, 8, 32), torch.zeros(1, 4, 8, 32)),
     "head dims differ"),
    (lambda: (torch.zeros(1, 4, 8, 64), torch.zeros(1, 4, 8, 64), torch.zeros(1, 4, 9, 64)),
     "k and v differ"),
    (lambda: (torch.zeros(1, 4, 8, 64), torch.zeros(1, 4, 8, 64, dtype=torch.float64),
              torch.zeros(1, 4, 8, 64)), "dtypes differ"),
])
def test_invalid_inputs_raise_value_error(ft, make, message):
    with pytest.raises(ValueError, match=message):
        ft.attention(*make())


def test_unknown_layout_is_refused(ft):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="layout must be 'bhsd' or 'bshd'"):
        ft.attention(q, k, v, layout="sbhd")


def test_cpu_tensors_fall_back_to_sdpa_with_one_warning(ft):
    q, k, v = qkv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ft.attention(q, k, v, causal=True)
        ft.attention(q, k, v)
    fallbacks = [w for w in caught if issubclass(w.category, ft.FlashCoreFallbackWarning)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    assert "not a CUDA device" in str(fallbacks[0].message)
    assert fallbacks[0].filename == __file__  # points at the caller's line
    torch.testing.assert_close(out, sdpa(q, k, v, causal=True))


def test_strict_raises_instead_of_falling_back(ft):
    q, k, v = qkv()
    with pytest.raises(ft.NotCoveredError, match="not a CUDA device"):
        ft.attention(q, k, v, strict=True)


def test_explain_says_why_no_kernel(ft):
    q, k, v = qkv()
    plan = ft.explain(q, k, v)
    assert plan.kernel_key is None and "not a CUDA device" in plan.fallback_reason


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_fallback_matches_sdpa_for_gqa_scale_and_layouts(ft, layout):
    q, k, v = qkv(h=8, hk=2, layout=layout)
    out = ft.attention(q, k, v, causal=True, scale=0.3, layout=layout)
    assert out.shape == q.shape and out.is_contiguous()
    torch.testing.assert_close(out, sdpa(q, k, v, causal=True, scale=0.3, layout=layout))


def test_fallback_lse_is_the_scaled_logsumexp(ft):
    q, k, v = qkv(sq=40, sk=24, dtype=torch.float64)
    out, lse = ft.attention(q, k, v, causal=True, return_lse=True)
    scores = q @ k.transpose(-1, -2) / 8.0
    mask = torch.ones(40, 24, dtype=torch.bool).triu(1)
    expected = torch.logsumexp(scores.masked_fill(mask, float("-inf")), -1)
    assert lse.shape == (2, 4, 40) and lse.dtype == torch.float32
    torch.testing.assert_close(lse, expected.float())


def test_inputs_that_need_grad_run_sdpa(ft):
    q, k, v = qkv()
    q.requires_grad_(True)
    with pytest.warns(ft.FlashCoreFallbackWarning, match="forward only"):
        out = ft.attention(q, k, v)
    out.sum().backward()
    assert q.grad is not None
    with pytest.raises(ft.NotCoveredError, match="requires grad"):
        ft.attention(q, k, v, strict=True)


def test_the_call_key_reads_seq_k_as_its_power_of_two_class(ft):
    """What the short path keys a call on (_call_key): seq_k only as 0, 1 or the power
    of two at or above it (what the checks and the kernel's choice read of it), so a
    KV cache growing a key a call keeps one key per class; everything else as is."""
    for layout, axis in (("bhsd", 2), ("bshd", 1)):
        q = qkv(sq=1, layout=layout)[0]
        cache = torch.zeros((2, 6000, 4, 64) if layout == "bshd" else (2, 4, 6000, 64))

        def key(n, v_n=None):
            view = [slice(None)] * 4
            view[axis] = slice(0, n)
            k = cache[tuple(view)]
            view[axis] = slice(0, n if v_n is None else v_n)
            return ft._call_key(q, k, cache[tuple(view)], False, layout)

        assert key(4090) == key(4095) == key(4096) != key(4097) == key(5999)
        assert len({key(0), key(1), key(2), key(3), key(64), key(65)}) == 6
        # v's length is not in the key: the short path compares v's shape with k's.
        assert key(4095) == key(4095, v_n=4096)
        assert key(5) != ft._call_key(q, cache[:, :5] if axis == 1 else cache[:, :, :5],
                                      cache[:, :5] if axis == 1 else cache[:, :, :5], True,
                                      layout)
    q, k, v = qkv()
    assert ft._call_key(q, k, v, False, "bhsd") != ft._call_key(q, k.unsqueeze(-1), v, False,
                                                                "bhsd")


def test_the_custom_op_passes_opcheck(ft):
    q, k, v = qkv(h=4, hk=2)
    for return_lse in (False, True):
        torch.library.opcheck(torch.ops.flashcore.attention.default,
                              (q, k, v, True, 0.125, "bhsd", return_lse, False))


def test_torch_compile_fullgraph_traces_the_op(ft):
    class Attention(torch.nn.Module):
        def forward(self, x):
            b, s, _ = x.shape
            q = x.view(b, s, 4, 16).transpose(1, 2)
            return ft.attention(q, q, q, causal=True).transpose(1, 2).reshape(b, s, 64)

    x = torch.randn(2, 24, 64)
    compiled = torch.compile(Attention(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), Attention()(x))
