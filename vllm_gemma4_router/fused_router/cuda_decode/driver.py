"""Launches an NVRTC-built kernel (``torch.cuda._compile_kernel``) through the driver's
``cuLaunchKernelEx``, so that a launch may carry programmatic dependent launch (PDL):
the kernel starts while the one ahead on the stream finishes, and waits for it at its
``griddepcontrol.wait``. torch's own launcher (``cuLaunchKernel``) takes no attributes.
A launch is an asynchronous driver call on torch's current stream: CUDA graphs capture
it, and nothing in it waits for the device.
"""

from __future__ import annotations

import ctypes
import functools

import torch

#: ``CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`` (cuda.h).
_PROGRAMMATIC_STREAM_SERIALIZATION = 6
#: ``CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED`` (cuda.h).
_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14


class _Attribute(ctypes.Structure):
    # CUlaunchAttribute: a 4-byte id, 4 bytes of padding, a 64-byte value union.
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_char * 64)]


class _Config(ctypes.Structure):
    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_mem", ctypes.c_uint),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_Attribute)),
        ("num_attrs", ctypes.c_uint),
    ]


@functools.cache
def _driver() -> ctypes.CDLL:
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuLaunchKernelEx.argtypes = [
        ctypes.POINTER(_Config), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
    ]  # fmt: skip
    lib.cuFuncSetAttribute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.cuOccupancyMaxActiveClusters.argtypes = [
        ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.POINTER(_Config)
    ]  # fmt: skip
    return lib


def _check(result: int, call: str) -> None:
    if result != 0:
        raise RuntimeError(f"{call} failed with CUresult {result}")


def allow_large_clusters(kernel) -> None:
    """Let ``kernel`` launch with ``__cluster_dims__`` above 8 blocks ("non-portable"
    sizes, up to 16 on sm_90), which the driver refuses otherwise."""
    _check(
        _driver().cuFuncSetAttribute(kernel.func, _NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
        "cuFuncSetAttribute",
    )


def max_active_clusters(kernel, grid: tuple[int, int, int], block: tuple[int, int, int]) -> int:
    """How many clusters of ``kernel`` (its compile-time ``__cluster_dims__``) the current
    GPU runs at once, launched with ``grid`` and ``block``: a host-side driver query
    (``cuOccupancyMaxActiveClusters``), no stream work. It depends on the GPU's SMs and
    their grouping into GPCs, and on a MIG slice."""
    count = ctypes.c_int(0)
    config = _Config((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), 0, None, None, 0)
    _check(
        _driver().cuOccupancyMaxActiveClusters(ctypes.byref(count), kernel.func,
                                               ctypes.byref(config)),
        "cuOccupancyMaxActiveClusters",
    )  # fmt: skip
    return count.value


def launch(
    kernel,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: list[torch.Tensor | int | float],
    *,
    pdl: bool = False,
) -> None:
    """Launch ``kernel`` (a ``torch.cuda._compile_kernel`` result) on the current stream.

    ``args`` are CUDA tensors (passed as pointers), ints (passed as 32-bit ``int``) and
    floats (passed as ``float``), in the kernel's parameter order. ``pdl`` sets
    programmatic stream serialization."""
    values = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            values.append(ctypes.c_void_p(arg.data_ptr()))
        elif isinstance(arg, bool | int):
            values.append(ctypes.c_int(arg))
        elif isinstance(arg, float):
            values.append(ctypes.c_float(arg))
        else:
            raise TypeError(
                f"kernel arguments are tensors, ints or floats, got {type(arg).__name__}"
            )
    pointers = (ctypes.c_void_p * len(values))(
        *[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values]
    )
    attribute = None
    if pdl:
        attribute = _Attribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
        attribute.value = (1).to_bytes(4, "little")  # the int "allowed", 1
    config = _Config(
        (ctypes.c_uint * 3)(*grid),
        (ctypes.c_uint * 3)(*block),
        0,
        torch.cuda.current_stream().cuda_stream,
        ctypes.pointer(attribute) if attribute is not None else None,
        int(pdl),
    )
    _check(
        _driver().cuLaunchKernelEx(ctypes.byref(config), kernel.func, pointers, None),
        "cuLaunchKernelEx",
    )
