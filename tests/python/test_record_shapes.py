"""flashcore.torch.record_shapes on CPU tensors, no daemon: every attention shape of a
forward pass (SDPA calls, nn.MultiheadAttention, flashcore.torch.attention), counted
once per call, the unservable ones skipped with a reason, and the plan file it saves.

Skips without PyTorch (the CPU suite must not need it). With PyTorch and no GPU:
    FLASHCORE_DAEMON=build/server/flashcored python3 -m pytest tests/python/test_record_shapes.py
"""

import json
import warnings

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed; record_shapes needs it "
                            "(python3 -c 'import torch' fails)")
import torch.nn.functional as F  # noqa: E402


@pytest.fixture
def ft(flashcore, tmp_path):
    import flashcore.torch as ft
    ft.configure(address="127.0.0.1:1", cache_dir=tmp_path / "client-cache")  # no daemon
    yield ft
    ft.configure()


class Block(torch.nn.Module):
    """Causal self-attention through F.scaled_dot_product_attention, as models write it."""

    def __init__(self, heads=8, dim=64):
        super().__init__()
        self.heads, self.dim = heads, dim

    def forward(self, x):  # x: (batch, seq, heads * dim)
        b, s, _ = x.shape
        q = x.view(b, s, self.heads, self.dim).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q, is_causal=True)


class Model(torch.nn.Module):
    def __init__(self, ft):
        super().__init__()
        self.ft = ft
        self.block = Block()

    def forward(self, x, memory):
        y = self.block(x)                                      # SDPA, causal, GQA 8/2
        y = self.block(x)                                      # the same shape again
        q = y.transpose(1, 2)                                  # (b, s, h, d): bshd
        out = self.ft.attention(q, memory, memory, layout="bshd")  # GQA cross-attention
        return out


def test_records_every_shape_of_a_forward_pass(ft):
    model = Model(ft)
    x = torch.randn(2, 100, 8 * 64, dtype=torch.bfloat16)
    memory = torch.randn(2, 77, 2, 64, dtype=torch.bfloat16)  # 2 kv heads for 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # attention() on CPU runs SDPA with a warning
        with ft.record_shapes() as shapes:
            model(x, memory)
    assert len(shapes) == 2, shapes.calls
    sdpa_shape, cross = shapes
    assert sdpa_shape.to_dict() == dict(head_dim=64, seq_q=100, dtype="bf16", causal=True,
                                        batch=2, heads=8, kv_heads=8, seq_k=100, layout="bhsd")
    assert cross.to_dict() == dict(head_dim=64, seq_q=100, dtype="bf16", causal=False, batch=2,
                                   heads=8, kv_heads=2, seq_k=77, layout="bshd")
    # attention()'s SDPA fallback is not counted a second time.
    assert shapes.calls[sdpa_shape] == 2 and shapes.calls[cross] == 1
    assert shapes.skipped == {}
    # Outside the block nothing is recorded and SDPA is PyTorch's own again.
    assert F.scaled_dot_product_attention is ft._original_sdpa
    model(x, memory)
    assert sum(shapes.calls.values()) == 3


def test_unservable_calls_are_skipped_with_the_reason(ft):
    q = torch.randn(1, 4, 16, 32)
    with ft.record_shapes() as shapes:
        F.scaled_dot_product_attention(q, q, q)                          # float32
        h = q.half()
        F.scaled_dot_product_attention(h.float(), h.float(), h.float(),
                                       attn_mask=torch.ones(16, 16, dtype=torch.bool))
        b = q.bfloat16()
        F.scaled_dot_product_attention(b, b, b, attn_mask=torch.ones(16, 16, dtype=torch.bool))
        F.scaled_dot_product_attention(b, b, b, dropout_p=0.1)
        F.scaled_dot_product_attention(b[0], b[0], b[0])                  # (N, L, E): 3-D
    assert [s.to_dict() for s in shapes] == [
        dict(head_dim=32, seq_q=16, dtype="bf16", causal=False, batch=4, heads=1, kv_heads=1,
             seq_k=16, layout="bhsd")]
    assert shapes.skipped == {
        "dtype torch.float32 is not served (float16, bfloat16)": 1,
        "SDPA with an attn_mask (the kernels take causal or no mask)": 2,
        "SDPA with dropout (the kernels are for inference)": 1,
    }


def test_multihead_attention_module_is_recorded(ft):
    mha = torch.nn.MultiheadAttention(128, 4, batch_first=True).to(torch.bfloat16)
    x = torch.randn(3, 50, 128, dtype=torch.bfloat16)
    mha.train()  # the fused fast path of eval mode bypasses SDPA's Python name
    with ft.record_shapes() as shapes:
        mha(x, x, x, need_weights=False)
    assert [s.label() for s in shapes] == ["bf16 D32 3x4 S50"]


def test_blocks_nest_and_save_a_plan(ft, flashcore, tmp_path):
    b = torch.randn(1, 2, 8, 64, dtype=torch.float16)
    with ft.record_shapes() as outer:
        F.scaled_dot_product_attention(b, b, b, is_causal=True)
        with ft.record_shapes(sdpa=False) as inner:
            F.scaled_dot_product_attention(b, b, b)
        F.scaled_dot_product_attention(b, b, b)
    assert len(outer) == 2 and len(inner) == 0
    assert F.scaled_dot_product_attention is ft._original_sdpa
    path = outer.save(tmp_path / "plan.json")
    entries = json.loads(path.read_text())
    assert [e["calls"] for e in entries] == [1, 2]
    assert flashcore.load_plan(path) == list(outer)
