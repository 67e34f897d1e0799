"""fast_launch.CompiledLaunches on the CPU: when it takes the cached path, what it calls, and
how it falls back to ``kernel[grid]``.

A fake ``triton.jit`` function stands in for the kernel and a fake driver for
the GPU's stream, so the launch-class logic runs without a GPU; that the cached
path picks the kernel Triton itself would is checked on the GPU
(tests/routing/test_gpu_routing.py::test_gpu_cached_launches_match_triton_dispatch).
"""

from __future__ import annotations

import logging

import pytest
import torch
import triton
from triton.runtime import driver

from vllm_gemma4_router.routing import compiled_launches
from vllm_gemma4_router.routing.compiled_launches import CompiledLaunches

ARG_NAMES = ("logits", "scale", "weights", "ids", "T", "E", "stride_t", "stride_e", "K", "BLOCK")
CONSTEXPRS = {"BLOCK": 128, "K": 8}  # given out of order: the launcher must order them
STREAM_BASE = 7000


class FakeCompiled:
    """The launcher surface of Triton's CompiledKernel: ``run`` and its handles."""

    def __init__(self) -> None:
        self.function = object()
        self.packed_metadata = object()
        self.runs: list[tuple] = []

    def run(self, *args) -> None:
        self.runs.append(args)


class FakeJit:
    """``kernel[grid](*args, **constexprs)``: records the launch, returns what it 'compiled'."""

    arg_names = ARG_NAMES

    def __init__(self, make=FakeCompiled) -> None:
        self.make = make
        self.launches: list[tuple] = []
        self.compiled: list = []

    def __getitem__(self, grid):
        def launch(*args, **constexprs):
            self.launches.append((grid, args, constexprs))
            compiled = self.make()
            self.compiled.append(compiled)
            return compiled

        return launch


class FakeDriver:
    def get_current_stream(self, device_index: int) -> int:
        return STREAM_BASE + device_index


@pytest.fixture
def gpu_like(monkeypatch):
    """Triton's launcher API 'present' and a driver whose stream is a known number."""
    monkeypatch.setattr(compiled_launches, "_launcher_api_present", lambda: True)
    monkeypatch.setattr(driver, "_active", FakeDriver())


def _tensors(gen: torch.Generator, num_tokens: int = 17, offset: int = 0):
    base = torch.randn(num_tokens + 1, 128, generator=gen)
    logits = base.view(-1)[offset : offset + num_tokens * 128].view(num_tokens, 128)
    scale = torch.rand(128, generator=gen) + 0.5
    weights = torch.empty(num_tokens, 8)
    ids = torch.empty(num_tokens, 8, dtype=torch.int32)
    return logits, scale, weights, ids


def _launch(launches: CompiledLaunches, tensors, *, grid_x: int = 5, class_key="k", device=0):
    logits = tensors[0]
    ints = (logits.shape[0], logits.shape[1], *logits.stride())
    launches.launch(grid_x, device, tensors, ints, CONSTEXPRS, class_key)
    return ints


def test_without_triton_launcher_api_every_call_goes_through_triton(monkeypatch, gen):
    monkeypatch.setattr(compiled_launches, "_launcher_api_present", lambda: False)
    jit = FakeJit()
    launches = CompiledLaunches(jit)
    assert launches.enabled is False
    tensors = _tensors(gen)
    for _ in range(3):
        _launch(launches, tensors, grid_x=3)
    assert len(jit.launches) == 3 and launches.hits == 0
    grid, args, constexprs = jit.launches[-1]
    assert grid == (3,) and args[:4] == tensors and constexprs == CONSTEXPRS
    with pytest.raises(ValueError, match="launcher API is missing"):
        launches.enabled = True


def test_a_repeated_launch_class_runs_the_cached_kernel_directly(gpu_like, gen):
    jit = FakeJit()
    launches = CompiledLaunches(jit)
    assert launches.enabled is True
    tensors = _tensors(gen)
    ints = _launch(launches, tensors, device=1)
    assert len(jit.launches) == 1 and launches.hits == 0  # first: Triton compiles and launches
    [compiled] = jit.compiled
    assert compiled.runs == []
    _launch(launches, tensors, grid_x=9, device=1)
    assert len(jit.launches) == 1 and launches.hits == 1
    [run] = compiled.runs
    pointers = tuple(t.data_ptr() for t in tensors)
    # grid, stream, handles, no hooks/metadata, then raw pointers, ints, and the
    # constexprs in the kernel's parameter order (K before BLOCK), not dict order.
    assert run[:9] == (
        9,
        1,
        1,
        STREAM_BASE + 1,
        compiled.function,
        compiled.packed_metadata,
        None,
        None,
        None,
    )
    assert run[9:] == (*pointers, *ints, CONSTEXPRS["K"], CONSTEXPRS["BLOCK"])


def test_any_change_of_triton_specialization_goes_back_through_triton(gpu_like, gen):
    jit = FakeJit()
    launches = CompiledLaunches(jit)
    _launch(launches, _tensors(gen, num_tokens=17))
    # T=33: same properties as 17 (not 1, 33 % 16 == 17 % 16), same strides: a hit.
    _launch(launches, _tensors(gen, num_tokens=33))
    assert (len(jit.launches), launches.hits) == (1, 1)
    new_classes = [
        lambda: _launch(launches, _tensors(gen, num_tokens=16)),  # a multiple of 16
        lambda: _launch(launches, _tensors(gen, num_tokens=1)),  # T == 1
        lambda: _launch(launches, _tensors(gen, offset=1)),  # logits 4 bytes off 16-aligned
        lambda: _launch(launches, _tensors(gen), class_key="other dtype"),
        lambda: _launch(launches, _tensors(gen), device=2),
    ]
    for count, launch in enumerate(new_classes, start=2):
        launch()
        assert (len(jit.launches), launches.hits) == (count, 1)
    transposed = _tensors(gen)
    logits = torch.randn(128, 17, generator=gen).t()  # other strides
    _launch(launches, (logits, *transposed[1:]))
    assert (len(jit.launches), launches.hits) == (len(new_classes) + 2, 1)


def test_launch_hooks_send_every_call_through_triton(gpu_like, gen):
    jit = FakeJit()
    launches = CompiledLaunches(jit)
    tensors = _tensors(gen)
    _launch(launches, tensors)

    def hook(*args) -> None:
        pass

    chain = triton.knobs.runtime.launch_enter_hook
    chain.add(hook)
    try:
        _launch(launches, tensors)  # a profiler must see this launch
    finally:
        chain.remove(hook)
    assert (len(jit.launches), launches.hits) == (2, 0)
    _launch(launches, tensors)
    assert (len(jit.launches), launches.hits) == (2, 1)


def test_hook_active_reads_both_triton_hook_styles():
    class Chain:
        def __init__(self, calls):
            self.calls = calls

    assert compiled_launches._hook_active(None) is False
    assert compiled_launches._hook_active(Chain([])) is False
    assert compiled_launches._hook_active(Chain([print])) is True
    assert compiled_launches._hook_active(print) is True  # Triton < 3.5: a plain callable


def test_an_unexpected_triton_switches_cached_launches_off(gpu_like, gen, caplog):
    jit = FakeJit(make=object)  # a "compiled kernel" without run(): the API moved
    launches = CompiledLaunches(jit)
    tensors = _tensors(gen)
    with caplog.at_level(logging.INFO, logger=compiled_launches.logger.name):
        compiled_launches.logger.addHandler(caplog.handler)
        try:
            _launch(launches, tensors)
        finally:
            compiled_launches.logger.removeHandler(caplog.handler)
    assert launches.enabled is False
    assert any("cached launches off" in record.getMessage() for record in caplog.records)
    _launch(launches, tensors)
    assert (len(jit.launches), launches.hits) == (2, 0)


def test_constexprs_that_miss_a_trailing_parameter_switch_cached_launches_off(gpu_like, gen):
    jit = FakeJit()
    launches = CompiledLaunches(jit)
    tensors = _tensors(gen)
    ints = (17, 128, *tensors[0].stride())
    launches.launch(5, 0, tensors, ints, {"K": 8}, "k")  # BLOCK missing
    assert launches.enabled is False
    launches.launch(5, 0, tensors, ints, {"K": 8}, "k")
    assert (len(jit.launches), launches.hits) == (2, 0)


def test_async_compile_results_are_awaited_and_cached(gpu_like, gen):
    class Future:
        def __init__(self) -> None:
            self.compiled = FakeCompiled()

        def result(self) -> FakeCompiled:
            return self.compiled

    jit = FakeJit(make=Future)
    launches = CompiledLaunches(jit)
    tensors = _tensors(gen)
    _launch(launches, tensors)
    _launch(launches, tensors)
    assert launches.hits == 1 and len(jit.compiled[0].compiled.runs) == 1


def test_enabled_can_be_switched_off_and_on(gpu_like, gen):
    jit = FakeJit()
    launches = CompiledLaunches(jit)
    tensors = _tensors(gen)
    _launch(launches, tensors)
    launches.enabled = False
    _launch(launches, tensors)
    assert (len(jit.launches), launches.hits) == (2, 0)
    launches.enabled = True
    _launch(launches, tensors)
    assert (len(jit.launches), launches.hits) == (2, 1)  # the cache survived


def test_the_cache_keeps_the_most_recent_classes(gpu_like, gen, monkeypatch):
    monkeypatch.setattr(compiled_launches, "_MAX_CLASSES", 2)
    jit = FakeJit()
    launches = CompiledLaunches(jit)
    tensors = _tensors(gen)
    for key in ("a", "b", "c"):  # "a" is evicted by "c"
        _launch(launches, tensors, class_key=key)
    _launch(launches, tensors, class_key="c")
    assert (len(jit.launches), launches.hits) == (3, 1)
    _launch(launches, tensors, class_key="a")
    assert (len(jit.launches), launches.hits) == (4, 1)
