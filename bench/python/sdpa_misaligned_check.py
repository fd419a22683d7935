"""PyTorch SDPA on a q whose data is 8 bytes off 16-byte alignment, against the same
call on aligned data, per backend. Why flashcore.torch's SDPA fallback copies
unaligned inputs first (torch.py, _sdpa). Needs a CUDA GPU.

    python3 bench/python/sdpa_misaligned_check.py
"""
import torch, torch.nn.functional as F
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(2, 8, 512, 64, generator=g, device="cuda").half() for _ in range(3))
base = torch.empty(q.numel() + 8, device="cuda", dtype=q.dtype)
s = base[4:4 + q.numel()].view(q.shape); s.copy_(q)
ref = F.scaled_dot_product_attention(q, k, v)
for name, be in [("default", None), ("cudnn", torch.nn.attention.SDPBackend.CUDNN_ATTENTION), ("flash", torch.nn.attention.SDPBackend.FLASH_ATTENTION), ("efficient", torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION), ("math", torch.nn.attention.SDPBackend.MATH)]:
    try:
        if be is None: out = F.scaled_dot_product_attention(s, k, v)
        else:
            with torch.nn.attention.sdpa_kernel([be]): out = F.scaled_dot_product_attention(s, k, v)
        torch.cuda.synchronize()
        print(name, "max abs diff vs aligned:", (out.float() - ref.float()).abs().max().item())
    except Exception as e: print(name, "error:", str(e).splitlines()[0][:120])
