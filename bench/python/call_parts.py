#!/usr/bin/env python3
"""What each piece of flashcore.torch.attention's short path costs on this machine
(issue 15: <= 10 us of Python per call), beside the whole call of each family and
SDPA's, so a change to the short path can be judged piece by piece.

    python3 bench/python/call_parts.py --cache build/gpu_handles [--json out.json]

Kernels come from a client handle cache (tests/python/prepare_gpu_handles.py), no
daemon. Pieces are timed with timeit (best of 5 repeats, microseconds a call);
whole calls as tests/python's overhead test does (loops of calls ending in a
synchronize, median of 3). The whole-call rows need the families' kernels: the
Hopper one (sm_90a), the sm80 one named (FLASHCORE_TORCH_HOPPER=0 while it is
resolved), and the decode family.
"""
import argparse
import ctypes
import json
import math
import os
import pathlib
import statistics
import sys
import time
import timeit

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import flashcore.torch as ft  # noqa: E402
from flashcore import _cuda  # noqa: E402
import gpu_cases  # noqa: E402


def piece_us(stmt: str, names: dict, number: int = 20000) -> float:
    timer = timeit.Timer(stmt, globals=names)
    return min(timer.repeat(5, number)) / number * 1e6


def call_us(fn, calls: int = 2000) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def pieces(q, k, v) -> dict:
    """The torch and ctypes operations the short path is made of, with alternatives."""
    device, shape, dtype = q.device, tuple(q.shape), q.dtype
    index = device.index
    api = _cuda.driver()
    context = api.primary_context(index)
    current = ctypes.c_void_p()
    names = dict(torch=torch, q=q, k=k, v=v, device=device, shape=shape, dtype=dtype,
                 index=index, ft=ft, api=api, context=context, current=current,
                 byref=ctypes.byref(current), ctypes=ctypes, raw=ft._raw_stream,
                 contiguous=torch.contiguous_format, uint8=torch.uint8,
                 is_compiling=torch.compiler.is_compiling, grad=torch.is_grad_enabled,
                 grad_c=torch._C.is_grad_enabled, tracing=torch._C._get_tracing_state,
                 capturing=torch.cuda.is_current_stream_capturing,
                 capturing_c=getattr(torch._C, "_cuda_isCurrentStreamCapturing", None))
    rows = {
        "pass (timeit floor)": "pass",
        "torch.compiler.is_compiling()": "is_compiling()",
        "torch._C._get_tracing_state()": "tracing()",
        "torch.is_grad_enabled()": "grad()",
        "torch._C.is_grad_enabled()": "grad_c()",
        "q.requires_grad x3": "q.requires_grad or k.requires_grad or v.requires_grad",
        "q.shape": "q.shape",
        "q.stride()": "q.stride()",
        "q.dtype": "q.dtype",
        "q.device": "q.device",
        "q.get_device()": "q.get_device()",
        "q.is_cuda": "q.is_cuda",
        "q.data_ptr()": "q.data_ptr()",
        "_call_key(q, k, v)": "ft._call_key(q, k, v, False, 'bhsd')",
        "torch.empty(q.shape, dtype=q.dtype, device=q.device)":
            "torch.empty(q.shape, dtype=q.dtype, device=q.device)",
        "torch.empty(shape, dtype=dtype, device=device) (kept args)":
            "torch.empty(shape, dtype=dtype, device=device)",
        "q.new_empty(q.shape)": "q.new_empty(q.shape)",
        "q.new_empty(shape) (kept shape)": "q.new_empty(shape)",
        "torch.empty_like(q, memory_format=contiguous)":
            "torch.empty_like(q, memory_format=contiguous)",
        "torch.empty(4096, dtype=uint8, device=device)":
            "torch.empty(4096, dtype=uint8, device=device)",
        "torch.empty(...).data_ptr()": "torch.empty(shape, dtype=dtype, device=device).data_ptr()",
        "_raw_stream(q.device.index)": "raw(q.device.index)",
        "_raw_stream(index) (kept index)": "raw(index)",
        "torch.cuda.is_current_stream_capturing()": "capturing()",
        "cuCtxGetCurrent (new c_void_p, byref)":
            "api.cuCtxGetCurrent(ctypes.byref(ctypes.c_void_p()))",
        "cuCtxGetCurrent (kept c_void_p)": "api.cuCtxGetCurrent(current)",
        "Driver.make_current(context)": "api.make_current(context)",
    }
    if names["capturing_c"] is not None:
        rows["torch._C._cuda_isCurrentStreamCapturing()"] = "capturing_c()"
    return {label: piece_us(stmt, names) for label, stmt in rows.items()}


def whole_calls(args) -> dict:
    out = {}
    case = gpu_cases.OVERHEAD_CASE
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (case.batch, case.heads, case.seq_q, case.head_dim)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=torch.float16)
               for _ in range(3))
    out["pieces"] = pieces(q, k, v)
    # The family is chosen when a call's kernel is resolved: configure() forgets them.
    for family, env in (("hopper", "1"), ("sm80", "0")):
        os.environ["FLASHCORE_TORCH_HOPPER"] = env
        ft.configure(address="127.0.0.1:1", cache_dir=args.cache)
        try:
            ft.attention(q, k, v, strict=True)
        except ft.NotCoveredError as error:
            out[family] = str(error)
            continue
        out[family + "_family"] = ft.explain(q, k, v).template_id
        out[family + "_call_us"] = call_us(lambda: ft.attention(q, k, v, strict=True))
        out[family + "_lse_call_us"] = call_us(
            lambda: ft.attention(q, k, v, return_lse=True, strict=True))
    os.environ.pop("FLASHCORE_TORCH_HOPPER", None)
    out["sdpa_call_us"] = call_us(lambda: F.scaled_dot_product_attention(q, k, v))

    # Decode: B1 H32/8 S1 D128, the repeated call and a KV cache growing a key a call.
    ft.configure(address="127.0.0.1:1", cache_dir=args.cache)
    first, last = (c.seq_k for c in gpu_cases.DECODE_OVERHEAD_CASES)
    g = torch.Generator(device="cuda").manual_seed(13)
    dq = torch.randn(1, 32, 1, 128, generator=g, device="cuda").half()
    ck = torch.randn(1, 8, last, 128, generator=g, device="cuda").half()
    cv = torch.randn(1, 8, last, 128, generator=g, device="cuda").half()
    dk, dv = ck[:, :, :first], cv[:, :, :first]
    lengths = range(first, last)

    def growing():
        for n in lengths:
            ft.attention(dq, ck[:, :, :n], cv[:, :, :n], strict=True)

    def sdpa_growing():
        for n in lengths:
            F.scaled_dot_product_attention(dq, ck[:, :, :n], cv[:, :, :n], enable_gqa=True)

    try:
        growing()  # both buckets resolved
        out["decode_family"] = ft.explain(dq, dk, dv).template_id
        out["decode_call_us"] = call_us(lambda: ft.attention(dq, dk, dv, strict=True))
        out["decode_growing_call_us"] = call_us(growing, calls=1) / len(lengths)
    except ft.NotCoveredError as error:
        out["decode"] = str(error)
    out["sdpa_decode_call_us"] = call_us(
        lambda: F.scaled_dot_product_attention(dq, dk, dv, enable_gqa=True))
    out["sdpa_decode_growing_call_us"] = call_us(sdpa_growing, calls=1) / len(lengths)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True, help="client handle cache (prepare_gpu_handles.py)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "python": sys.version.split()[0], "package": ft.__file__}
    result.update(whole_calls(args))
    for key, value in result.items():
        if key == "pieces":
            for label, us in value.items():
                print("  %-60s %6.3f us" % (label, us))
        else:
            print("%-28s %s" % (key, round(value, 2) if isinstance(value, float) else value))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
