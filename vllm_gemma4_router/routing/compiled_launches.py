"""A cached launch path for the routing kernel: Triton's compiled-kernel launcher, called directly.

``kernel[grid](...)`` binds the arguments, computes Triton's specialization
key and looks the compiled kernel up on every call: ~20 us of host time on the
H100 machine's CPU (benchmarks/kernel/profile_kernel.py --host; benchmarks/results/host/),
several times the kernel itself at decode sizes. This module keeps, per launch class,
the ``CompiledKernel`` that Triton chose the first time and calls its launcher.

The launch class is a refinement of what Triton specializes on (Triton 3.x:
each int's type and whether it is 1 or a multiple of 16; each pointer's dtype
and 16-byte alignment): strides and E by exact value, T by those properties,
pointers by dtype and alignment. Equal classes therefore mean the same
compiled kernel, and any change of specialization goes back through Triton.

Used only on CUDA/ROCm with Triton's launcher attributes present; with a
launch hook installed (profilers) or on any surprise, calls go through
``kernel[grid]``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from vllm_gemma4_router.log_contract import logger

_MAX_CLASSES = 256


class CompiledLaunches:
    """Per-launch-class cache of compiled kernels for one ``triton.jit`` function."""

    def __init__(self, jit_function: Any) -> None:
        self._jit = jit_function
        self._names: tuple[str, ...] = tuple(jit_function.arg_names)
        self._cache: OrderedDict[tuple, tuple[Any, tuple]] = OrderedDict()
        self.hits = 0
        # Decided at the first GPU launch: looking at Triton's driver before
        # then would initialise it (and fail on a machine without a GPU).
        self._enabled: bool | None = None

    @property
    def enabled(self) -> bool:
        """Whether calls take the cached path (False: every call goes through kernel[grid])."""
        if self._enabled is None:
            self._enabled = _launcher_api_present()
            if self._enabled:
                import triton
                from triton.runtime import driver

                self._knobs = triton.knobs.runtime
                self._stream = driver.active.get_current_stream
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = None  # re-decided (and the API looked up again) on the next read
        if value and not self.enabled:
            raise ValueError("Triton's launcher API is missing: cached launches cannot be enabled")
        self._enabled = value

    def launch(
        self,
        grid_x: int,
        device_index: int,
        tensors: Sequence[torch.Tensor],
        ints: Sequence[int],
        constexprs: dict[str, Any],
        class_key: Any,
    ) -> None:
        """Launch ``jit_function[(grid_x,)](*tensors, *ints, **constexprs)``.

        ``tensors`` and ``ints`` are the kernel's leading runtime parameters in
        order (its pointers, then its integers); ``class_key`` is a hashable
        stand-in for ``constexprs`` and the tensors' dtypes (which Triton also
        specializes on).
        """
        if not self.enabled or self._hooks_installed():
            self._jit[(grid_x,)](*tensors, *ints, **constexprs)
            return
        # Raw pointers: Triton's launcher takes ints as they are, where for a
        # tensor it calls data_ptr() and asks the driver about the pointer
        # (cuPointerGetAttribute) on every launch. The checks before any launch
        # already put every tensor on this GPU.
        pointers = [tensor.data_ptr() for tensor in tensors]
        num_tokens = ints[0]
        key = (
            device_index,
            class_key,
            tuple([pointer & 15 for pointer in pointers]),  # each pointer's 16-byte alignment
            num_tokens == 1,
            num_tokens & 15,
            num_tokens > 0x7FFFFFFF,
            ints[1:],
        )
        entry = self._cache.get(key)
        if entry is None:
            self._compile_and_launch(key, grid_x, tensors, ints, constexprs)
            return
        compiled, constexpr_values = entry
        self.hits += 1
        compiled.run(
            grid_x,
            1,
            1,
            self._stream(device_index),
            compiled.function,
            compiled.packed_metadata,
            None,
            None,
            None,
            *pointers,
            *ints,
            *constexpr_values,
        )

    def _compile_and_launch(
        self,
        key: tuple,
        grid_x: int,
        tensors: Sequence[torch.Tensor],
        ints: Sequence[int],
        constexprs: dict[str, Any],
    ) -> None:
        compiled = self._jit[(grid_x,)](*tensors, *ints, **constexprs)
        try:
            if hasattr(compiled, "result"):  # Triton's async compile mode
                compiled = compiled.result()
            compiled.run  # noqa: B018 - loads the module handles, raises if the API moved
            leading = len(tensors) + len(ints)
            values = tuple(constexprs[name] for name in self._names[leading:] if name in constexprs)
            if leading + len(values) != len(self._names):
                raise TypeError("constexprs do not cover the kernel's trailing parameters")
        except Exception as exc:  # an unexpected Triton: keep the JIT path
            logger.info("gemma4_routing: cached launches off (%s); using kernel[grid]", exc)
            self.enabled = False
            return
        if len(self._cache) >= _MAX_CLASSES:
            self._cache.popitem(last=False)
        self._cache[key] = (compiled, values)

    def _hooks_installed(self) -> bool:
        return _hook_active(self._knobs.launch_enter_hook) or _hook_active(
            self._knobs.launch_exit_hook
        )


def _hook_active(hook: Any) -> bool:
    # Triton >= 3.5 keeps the hooks in always-present chains (a list ``calls``);
    # earlier versions use None or a callable.
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return calls is None or bool(calls)


def _launcher_api_present() -> bool:
    try:
        import triton
        from triton.compiler.compiler import CompiledKernel
        from triton.runtime import driver
    except ImportError:
        return False
    return (
        hasattr(CompiledKernel, "run")
        and hasattr(driver.active, "get_current_stream")
        and hasattr(getattr(triton, "knobs", None), "runtime")
    )
