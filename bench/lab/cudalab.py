"""Kernel lab: compile a kernel template with NVRTC and launch it in PyTorch's
CUDA context, with nothing but libnvrtc and libcuda (through ctypes).

This is the bench's way of trying a template on the GPU box, which has no gRPC
C++ libraries: the same NVRTC options and name expressions the daemon uses,
the same Driver API calls a client makes, and PyTorch only for tensors, the
fp64 reference and SDPA. ctypes rather than a binding package: the box's
Python may lack cuda-bindings, and the few calls needed are stable C ABI.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import pathlib
import re
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "kernel_templates"


def _cuda_home() -> pathlib.Path:
    env = os.environ.get("CUDA_HOME")
    if env:
        return pathlib.Path(env)
    if pathlib.Path("/usr/local/cuda/include/nvrtc.h").exists():
        return pathlib.Path("/usr/local/cuda")
    import shutil
    nvcc = shutil.which("nvcc")
    if nvcc:
        return pathlib.Path(os.path.realpath(nvcc)).parents[1]
    raise RuntimeError("CUDA toolkit not found: set CUDA_HOME")


def _load(names):
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError(f"none of {names} could be loaded")


_nvrtc = None


def nvrtc():
    global _nvrtc
    if _nvrtc is None:
        lib = _cuda_home() / "lib64"
        _nvrtc = _load([str(lib / "libnvrtc.so"), str(lib / "libnvrtc.so.13"), "libnvrtc.so"])
    return _nvrtc


class CompileError(RuntimeError):
    pass


def compile_template(name_expression: str, includes: list[str], arch: str = "sm_90a",
                     options: tuple[str, ...] = (), ptxas_verbose: bool = True,
                     templates: pathlib.Path | None = None):
    """NVRTC-compile a translation unit that #includes `includes` (paths under
    kernel_templates/, or under `templates` for another copy of them) and
    instantiates `name_expression`. Returns (cubin bytes, lowered name, log
    text, seconds)."""
    lib = nvrtc()
    src = "".join(f'#include "{inc}"\n' for inc in includes).encode()
    prog = ctypes.c_void_p()
    check = _nvrtc_check
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"lab.cu", 0, None, None))
    try:
        check(lib.nvrtcAddNameExpression(prog, name_expression.encode()))
        # The daemon's options (server/jit/nvrtc_compiler.cpp), plus the include path.
        opts = [f"--gpu-architecture={arch}", "--std=c++17", "--use_fast_math", "-lineinfo",
                "-DFLASHCORE_NVRTC=1", f"-I{templates or TEMPLATES}", *options]
        if ptxas_verbose:
            opts.append("--ptxas-options=-v")
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        t0 = time.perf_counter()
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        seconds = time.perf_counter() - t0
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if rc != 0:
            raise CompileError(f"NVRTC failed for {name_expression}:\n{log}")
        lowered = ctypes.c_char_p()
        check(lib.nvrtcGetLoweredName(prog, name_expression.encode(), ctypes.byref(lowered)))
        lowered_name = lowered.value.decode()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(prog, cubin))
        return cubin.raw, lowered_name, log, seconds
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _nvrtc_check(rc):
    if rc != 0:
        nvrtc().nvrtcGetErrorString.restype = ctypes.c_char_p
        raise CompileError(nvrtc().nvrtcGetErrorString(rc).decode())


def resource_report(log: str) -> dict:
    """Registers, spills and stack from ptxas -v output in an NVRTC log."""
    out = {}
    m = re.search(r"Used (\d+) registers", log)
    out["registers"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        out["stack"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    return out


# ---------------------------------------------------------------- driver API
_cuda = None


def cuda():
    global _cuda
    if _cuda is None:
        _cuda = _load(["libcuda.so.1", "libcuda.so"])
    return _cuda


def _check(rc, what):
    if rc != 0:
        s = ctypes.c_char_p()
        cuda().cuGetErrorString(rc, ctypes.byref(s))
        raise RuntimeError(f"{what} failed: {rc} {s.value.decode() if s.value else ''}")


CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
TMA_DTYPE = {"fp16": 6, "bf16": 9, "fp32": 7}
TMA_SWIZZLE = {"none": 0, "32B": 1, "64B": 2, "128B": 3}
TMA_L2 = {"none": 0, "64B": 1, "128B": 2, "256B": 3}


class Kernel:
    """A cubin loaded into the current context (PyTorch's primary context)."""

    def __init__(self, cubin: bytes, name: str, dynamic_smem: int = 0):
        self.module = ctypes.c_void_p()
        self.func = ctypes.c_void_p()
        _check(cuda().cuModuleLoadData(ctypes.byref(self.module), cubin), "cuModuleLoadData")
        _check(cuda().cuModuleGetFunction(ctypes.byref(self.func), self.module, name.encode()),
               "cuModuleGetFunction")
        if dynamic_smem > 48 * 1024:
            _check(cuda().cuFuncSetAttribute(self.func, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                             dynamic_smem), "cuFuncSetAttribute")
        self.dynamic_smem = dynamic_smem

    def launch(self, grid, block, params: bytes, stream: int = 0):
        """One by-value struct parameter, given as its bytes."""
        buf = ctypes.create_string_buffer(params, len(params))
        ptrs = (ctypes.c_void_p * 1)(ctypes.cast(buf, ctypes.c_void_p))
        _check(cuda().cuLaunchKernel(self.func, grid[0], grid[1], grid[2], block[0], block[1],
                                     block[2], self.dynamic_smem, ctypes.c_void_p(stream), ptrs,
                                     None), "cuLaunchKernel")

    def launch_args(self, grid, block, args: list, stream: int = 0):
        """Several parameters, each given as its bytes (in order)."""
        bufs = [ctypes.create_string_buffer(a, len(a)) for a in args]
        ptrs = (ctypes.c_void_p * len(bufs))(*[ctypes.cast(b, ctypes.c_void_p) for b in bufs])
        _check(cuda().cuLaunchKernel(self.func, grid[0], grid[1], grid[2], block[0], block[1],
                                     block[2], self.dynamic_smem, ctypes.c_void_p(stream), ptrs,
                                     None), "cuLaunchKernel")


def encode_tensor_map(dtype: str, address: int, dims, strides_bytes, box, swizzle="128B",
                      l2="256B", oob_nan=False) -> bytes:
    """cuTensorMapEncodeTiled; dims innermost first, strides_bytes for dims 1.. ."""
    rank = len(dims)
    tmap = (ctypes.c_uint8 * 128)()
    gdim = (ctypes.c_uint64 * rank)(*dims)
    gstr = (ctypes.c_uint64 * (rank - 1))(*strides_bytes)
    bdim = (ctypes.c_uint32 * rank)(*box)
    estr = (ctypes.c_uint32 * rank)(*([1] * rank))
    _check(cuda().cuTensorMapEncodeTiled(tmap, TMA_DTYPE[dtype], rank, ctypes.c_void_p(address),
                                         gdim, gstr, bdim, estr, 0, TMA_SWIZZLE[swizzle], TMA_L2[l2],
                                         1 if oob_nan else 0), "cuTensorMapEncodeTiled")
    return bytes(tmap)


# -------------------------------------------------------------------- timing
def interleaved(timers, rounds):
    """Times every timer once a round for ``rounds`` rounds and returns
    {name: [us per round]}. The order rotates by one each round, so every
    timer runs at every place in it equally often: with a fixed order the
    first timer after the slowest one was measured up to 7% faster than the
    same kernel later in the round (H100, D 128 S 8192, an A/A pair: the
    clock and power state a timer inherits depends on what ran before it)."""
    names = list(timers)
    samples = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for n in names[k:] + names[:k]:
            samples[n].append(timers[n]())
    return samples


def graph_timer(fns, reps, warmup=1):
    """Captures ``reps`` calls cycling over ``fns`` (one per input set) in a CUDA
    graph, after ``warmup`` eager rounds of them on a side stream; returns a
    function that replays the graph once and gives microseconds per call (its
    ``graph`` attribute keeps the graph)."""
    import torch
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fns[i % len(fns)]()
    torch.cuda.synchronize()

    def once():
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) * 1000 / reps
    once()
    once.graph = g
    return once
