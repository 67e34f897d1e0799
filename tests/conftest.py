"""Test-wide setup: without a GPU, Triton kernels run under the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton.jit decorates the kernel, i.e.
before the package's kernel module is imported, hence here.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def gen() -> torch.Generator:
    """A freshly seeded generator per test: fresh random inputs, reproducible on failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def fresh_padding_state():
    """No padding source and no pending fused hand-over before and after the test
    (both are process-wide state the plugin sets up)."""
    from vllm_gemma4_router.fused_router import handover
    from vllm_gemma4_router.routing.padding import set_padding_source

    set_padding_source(None)
    handover.forget_all()
    yield
    set_padding_source(None)
    handover.forget_all()


@pytest.fixture
def plugin_records(monkeypatch) -> list:
    """Every record the plugin's logger emits during the test, DEBUG and up."""
    import logging

    from vllm_gemma4_router.log_contract import LOGGER_NAME

    records: list[logging.LogRecord] = []
    collector = logging.Handler(logging.DEBUG)
    collector.emit = records.append
    plugin_logger = logging.getLogger(LOGGER_NAME)
    # setLevel, not a plain attribute: it also clears the loggers' cached isEnabledFor
    # answers, which an earlier test's logging set-up may have left at "no" for INFO.
    level, disabled = plugin_logger.level, plugin_logger.disabled
    plugin_logger.setLevel(logging.DEBUG)
    plugin_logger.disabled = False
    monkeypatch.setattr(logging.root.manager, "disable", logging.NOTSET)
    plugin_logger.addHandler(collector)
    yield records
    plugin_logger.removeHandler(collector)
    plugin_logger.setLevel(level)
    plugin_logger.disabled = disabled
