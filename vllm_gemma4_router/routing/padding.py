"""Where the fused router finds the padding mask of the batch it runs on.

The fused router op and the ``claimed_routing`` op run opaque: torch.compile
records them, and their Python runs at call time (and at CUDA-graph capture).
A mask passed in from traced model code would be frozen into the trace, so
they ask a *padding source* instead, at run time: a callable that takes the
number of rows ``T`` and returns the ``[T]`` bool/uint8 mask of the rows that
are padding (CUDA-graph or data-parallel padding), or ``None``.

The vLLM integration installs a source that reads vLLM's forward context,
exactly where the vLLM release's own Gemma 4 routing passes a mask; nothing
here imports vLLM. With no source installed (the default) no row is padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vllm_gemma4_router.routing.checks import check_padding_mask

PaddingSource = Callable[[int], "torch.Tensor | None"]

_source: PaddingSource | None = None


def set_padding_source(source: PaddingSource | None) -> None:
    """Install ``source`` (or ``None``: no padding) for the ops that read it at run time."""
    global _source
    _source = source


def padding_source() -> PaddingSource | None:
    """The installed padding source, or ``None``."""
    return _source


def current_padding_mask(num_tokens: int) -> torch.Tensor | None:
    """The padding mask for a batch of ``num_tokens`` rows from the installed source.

    Returns ``None`` when no source is installed or the source marks no padding.
    Never reads the mask's values (no host-device sync).
    """
    if _source is None:
        return None
    return _source(num_tokens)


def checked_padding_mask(num_tokens: int, device: torch.device) -> torch.Tensor | None:
    """:func:`current_padding_mask`, checked for ``num_tokens`` rows on ``device``
    (metadata only, no host sync). Raises ``TypeError``/``ValueError`` naming the
    padding source when it returns something the kernels cannot read.

    The opaque ops call this at run time, and at CUDA-graph capture: the kernels read
    the mask's buffer on the device, so a replay sees what that buffer holds then."""
    is_padding = current_padding_mask(num_tokens)
    try:
        check_padding_mask(is_padding, num_tokens, device)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"the padding source's mask for T={num_tokens}: {exc}") from exc
    return is_padding
