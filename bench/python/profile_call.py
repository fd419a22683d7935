#!/usr/bin/env python3
"""Where flashcore.torch.attention's per-call time goes in Python (issue 15's
<= 10 us goal): cProfile over many eager calls on tests/python's overhead shape,
kernels from a client handle cache (no daemon), the top functions by own time.

    FLASHCORE_TORCH_HOPPER=1 python3 bench/python/profile_call.py --cache build/gpu_handles
"""
import argparse
import cProfile
import pathlib
import pstats
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "python"))

import torch  # noqa: E402

import flashcore.torch as ft  # noqa: E402
import gpu_cases  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True, help="client handle cache (prepare_gpu_handles.py)")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    ft.configure(address="127.0.0.1:1", cache_dir=args.cache)
    case = gpu_cases.OVERHEAD_CASE
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (case.batch, case.heads, case.seq_q, case.head_dim)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=torch.float16) for _ in range(3))
    ft.attention(q, k, v, strict=True)  # resolved and loaded before timing
    torch.cuda.synchronize()
    for label, fn in (("flashcore", lambda: ft.attention(q, k, v, strict=True)),
                      ("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))):
        begin = time.perf_counter()
        for _ in range(args.calls):
            fn()
        torch.cuda.synchronize()
        print("%s: %.1f us a call (wall, eager, %d calls)" % (
            label, (time.perf_counter() - begin) * 1e6 / args.calls, args.calls))
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.calls):
        ft.attention(q, k, v, strict=True)
    profile.disable()
    torch.cuda.synchronize()
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
