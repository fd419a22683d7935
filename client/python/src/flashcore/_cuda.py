"""The five CUDA Driver API calls the launch path needs, through ctypes on libcuda.

Why ctypes rather than NVIDIA's cuda-bindings: the calls are few and their C
ABI has been stable since CUDA 4 (cuModuleLoadData, cuModuleGetFunction,
cuFuncSetAttribute, cuLaunchKernel, the primary-context calls), ctypes is in
the standard library, and libcuda.so.1 comes with the driver, so the client
needs no CUDA toolkit, no compiler and no package tied to one CUDA major
version (cuda-bindings wheels are per CUDA major and must match the driver).
A ctypes call costs about a microsecond with argtypes, a third of that without
(see Driver.launch_kernel). Nothing here needs PyTorch; the torch layer passes
raw pointers and streams.
"""

import ctypes
from collections import OrderedDict
import threading
from typing import Dict, Optional

CUDA_SUCCESS = 0
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8

_c_void_pp = ctypes.POINTER(ctypes.c_void_p)


class CudaError(RuntimeError):
    """A Driver API call failed; ``result`` is the CUresult, ``call`` the API name."""

    def __init__(self, call: str, result: int, name: str, text: str):
        self.call, self.result = call, result
        super().__init__("%s failed: %s (%d): %s" % (call, name, result, text))


class Driver:
    """libcuda.so.1, loaded on first use; one per process (see driver())."""

    def __init__(self):
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as error:
            raise CudaError("dlopen(libcuda.so.1)", -1, "CUDA_ERROR_NO_DEVICE",
                            "no NVIDIA driver: %s" % error) from None
        self._lib = lib
        # None of these calls has a versioned (_v2) entry point in cuda.h.
        sig = {
            "cuInit": [ctypes.c_uint],
            "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
            "cuGetErrorString": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
            "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
            "cuDevicePrimaryCtxRetain": [_c_void_pp, ctypes.c_int],
            "cuCtxGetCurrent": [_c_void_pp],
            "cuCtxSetCurrent": [ctypes.c_void_p],
            "cuModuleLoadData": [_c_void_pp, ctypes.c_char_p],
            "cuModuleGetFunction": [_c_void_pp, ctypes.c_void_p, ctypes.c_char_p],
            "cuFuncSetAttribute": [ctypes.c_void_p, ctypes.c_int, ctypes.c_int],
            "cuLaunchKernel": [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                               ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                               ctypes.c_void_p, _c_void_pp, _c_void_pp],
            # The Hopper family's tensor maps (CUDA 12+ drivers).
            "cuTensorMapEncodeTiled": [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint,
                                       ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
                                       ctypes.POINTER(ctypes.c_uint64),
                                       ctypes.POINTER(ctypes.c_uint32),
                                       ctypes.POINTER(ctypes.c_uint32), ctypes.c_int,
                                       ctypes.c_int, ctypes.c_int, ctypes.c_int],
        }
        for name, argtypes in sig.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
            setattr(self, name, function)
        # cuLaunchKernel once more, without argtypes, for the launch path: converting
        # eleven arguments through argtypes cost about 1.1 us of the 1.5 us a call took
        # (x86-64, a no-op C function of the same signature). Its callers pass
        # c_void_p for the function and the stream, a ctypes array for kernelParams,
        # None for extra, and Python ints for the unsigned ints (grid, block, shared
        # memory): ctypes passes their low 32 bits as a C int, what argtypes' c_uint
        # passed.
        self.launch_kernel = lib["cuLaunchKernel"]
        self.launch_kernel.restype = ctypes.c_int
        self.check(self.cuInit(0), "cuInit")
        self._lock = threading.Lock()
        self._contexts: Dict[int, int] = {}

    def check(self, result: int, call: str) -> None:
        if result == CUDA_SUCCESS:
            return
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        self.cuGetErrorName(result, ctypes.byref(name))
        self.cuGetErrorString(result, ctypes.byref(text))
        raise CudaError(call, result, (name.value or b"?").decode(), (text.value or b"?").decode())

    def primary_context(self, device: int) -> int:
        """The device's primary context: the one the CUDA runtime and PyTorch use."""
        with self._lock:
            if device not in self._contexts:
                handle = ctypes.c_int()
                self.check(self.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
                context = ctypes.c_void_p()
                self.check(self.cuDevicePrimaryCtxRetain(ctypes.byref(context), handle.value),
                           "cuDevicePrimaryCtxRetain")
                self._contexts[device] = context.value
            return self._contexts[device]

    def make_current(self, context: int) -> None:
        """Makes ``context`` current on this thread unless it already is."""
        current = _thread.current
        result = self.cuCtxGetCurrent(current)  # argtypes pass it by reference
        if result:
            self.check(result, "cuCtxGetCurrent")
        if current.value != context:
            self.check(self.cuCtxSetCurrent(context), "cuCtxSetCurrent")


def keep_bounded(memo: "OrderedDict", key, value, bound: int) -> None:
    """memo[key] = value, dropping the oldest entries past ``bound`` (shapes and
    pointers vary, so every memo of the launch path is bounded)."""
    memo[key] = value
    while len(memo) > bound:
        try:
            memo.popitem(last=False)
        except KeyError:  # emptied by another thread
            break


# The ctypes arrays of one tensor map geometry (everything but the address),
# built once: a call then only passes its address. Bounded: shapes vary.
_map_geometries: "OrderedDict[tuple, tuple]" = OrderedDict()
_MAP_GEOMETRIES = 256


def encode_tensor_map(arguments) -> bytes:
    """One CUtensorMap (128 bytes) from _abi.tensor_map_arguments(...)."""
    (data_type, rank, address, dims, strides, box, element_strides, interleave, swizzle, l2,
     oob) = arguments
    api = driver()
    key = (data_type, rank, dims, strides, box, element_strides, interleave, swizzle, l2, oob)
    prepared = _map_geometries.get(key)
    if prepared is None:
        # CUtensorMap is 64-byte aligned (alignas(64) in cuda.h): encode into an
        # aligned slice of a larger buffer.
        raw = ctypes.create_string_buffer(128 + 64)
        aligned = (ctypes.addressof(raw) + 63) // 64 * 64
        prepared = (raw, ctypes.c_void_p(aligned), (ctypes.c_uint64 * rank)(*dims),
                    (ctypes.c_uint64 * max(rank - 1, 1))(*strides), (ctypes.c_uint32 * rank)(*box),
                    (ctypes.c_uint32 * rank)(*element_strides), threading.Lock())
        keep_bounded(_map_geometries, key, prepared, _MAP_GEOMETRIES)
    raw, aligned, dims_c, strides_c, box_c, elements_c, lock = prepared
    with lock:  # one encode at a time into this geometry's buffer
        api.check(api.cuTensorMapEncodeTiled(
            aligned, data_type, rank, ctypes.c_void_p(address), dims_c, strides_c, box_c,
            elements_c, interleave, swizzle, l2, oob), "cuTensorMapEncodeTiled")
        return ctypes.string_at(aligned, 128)


_driver: Optional[Driver] = None
_driver_lock = threading.Lock()


def driver() -> Driver:
    global _driver
    with _driver_lock:
        if _driver is None:
            _driver = Driver()
        return _driver


class LoadedKernel:
    """One handle's cubin loaded into one device's primary context.

    The module stays loaded for the life of the process (modules per device
    per process); launch() packs nothing itself and takes the params bytes."""

    def __init__(self, device: int, cubin: bytes, lowered_name: str, block: tuple,
                 dynamic_smem_bytes: int):
        api = driver()
        self.device = device
        self.context = api.primary_context(device)
        api.make_current(self.context)
        module = ctypes.c_void_p()
        api.check(api.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
        function = ctypes.c_void_p()
        api.check(api.cuModuleGetFunction(ctypes.byref(function), module,
                                          lowered_name.encode()), "cuModuleGetFunction")
        # The default limit is 48 KB; most tile configs need more.
        api.check(api.cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                         int(dynamic_smem_bytes)),
                  "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")
        self._module = module  # kept: the function lives as long as its module
        # (function, block x, y, z, dynamic smem) per kernel of the handle, the first
        # its own: launch_kernel's arguments (Driver.launch_kernel says their types).
        self._steps = [_step(function, block, dynamic_smem_bytes)]
        self._api = api

    @property
    def steps(self) -> int:
        """Kernels loaded from the cubin: the handle's own, then add_step's."""
        return len(self._steps)

    def add_step(self, lowered_name: str, block: tuple, dynamic_smem_bytes: int) -> int:
        """Another kernel of the same cubin (a multi-kernel handle's later step, as
        the decode family's combine); launch(..., step=) takes the index returned."""
        api = self._api
        api.make_current(self.context)
        function = ctypes.c_void_p()
        api.check(api.cuModuleGetFunction(ctypes.byref(function), self._module,
                                          lowered_name.encode()), "cuModuleGetFunction")
        if dynamic_smem_bytes > 48 * 1024:
            api.check(api.cuFuncSetAttribute(function,
                                             CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                             int(dynamic_smem_bytes)),
                      "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")
        self._steps.append(_step(function, block, dynamic_smem_bytes))
        return len(self._steps) - 1

    def launch_args(self, grid: tuple, args, stream: int, step: int = 0) -> None:
        """cuLaunchKernel with the params struct as the single (__grid_constant__)
        argument: ``args`` is a kernelParams array whose entry points at the struct's
        bytes (params_buffer's, or one the caller keeps with its bytes, own_params);
        the driver copies them before it returns."""
        api = self._api
        current = _thread.current  # make_current(self.context), inline: every launch
        if api.cuCtxGetCurrent(current) or current.value != self.context:
            api.make_current(self.context)
        function, bx, by, bz, smem = self._steps[step]
        result = api.launch_kernel(function, grid[0], grid[1], grid[2], bx, by, bz, smem,
                                   ctypes.c_void_p(stream), args, None)
        if result:
            api.check(result, "cuLaunchKernel")


def _step(function: ctypes.c_void_p, block: tuple, dynamic_smem_bytes: int) -> tuple:
    bx, by, bz = (int(b) or 1 for b in block)
    return function, bx, by, bz, int(dynamic_smem_bytes)


class _ThreadSlots(threading.local):
    """Per thread: the current-context output slot, and the params buffers."""

    def __init__(self):
        self.current = ctypes.c_void_p()
        self.buffers = None  # (buffer, kernelParams array, bytes): params_buffer


_thread = _ThreadSlots()


def params_buffer(size: int):
    """This thread's params buffer (at least ``size`` bytes) and its one-entry
    kernelParams array. Reusing them is safe: cuLaunchKernel copies the argument
    bytes before it returns."""
    buffers = _thread.buffers
    if buffers is None or buffers[2] < size:
        buffer = ctypes.create_string_buffer(max(size, 1024))
        buffers = _thread.buffers = (buffer, kernel_params(buffer), len(buffer))
    return buffers[0], buffers[1]


def own_params(params: bytes) -> tuple:
    """A kernelParams array over a buffer of its own holding ``params``, for params a
    caller keeps and launches many times (launch_args): (array, buffer)."""
    buffer = ctypes.create_string_buffer(params, len(params))
    return kernel_params(buffer), buffer


def kernel_params(buffer) -> ctypes.Array:
    """A one-entry kernelParams array pointing at ``buffer`` (keep both alive)."""
    return (ctypes.c_void_p * 1)(ctypes.addressof(buffer))
