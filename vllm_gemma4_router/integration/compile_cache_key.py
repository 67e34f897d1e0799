"""vLLM's compile cache keyed on the plugin: no graph compiled without it is reused.

With torch >= 2.10 vLLM loads the whole compiled model (``VLLM_USE_AOT_COMPILE``,
on by default) from ``VLLM_CACHE_ROOT`` by a key made of its own environment
variables and ``VllmConfig.compute_hash()``, not of the model's source: a model
compiled before the plugin was installed, or by another version of it, or with
other ops on, would load as it was, with Gemma 4's gate frozen on ``torch.mm``
and none of the plugin's ops called. ``compute_hash()`` hashes
``additional_config``, vLLM's slot for platform and plugin settings, so the
plugin writes its state there, in the process that builds the model, before
that model is first compiled.
"""

from __future__ import annotations

import functools
import hashlib
from importlib.resources import files

from vllm_gemma4_router._version import __version__
from vllm_gemma4_router.log_contract import cache_key_not_set_line, logger

#: The plugin's key in ``additional_config``.
CACHE_KEY_ENTRY = "vllm_gemma4_router"
_SOURCE_SUFFIXES = (".py", ".json")


@functools.cache
def sources_digest() -> str:
    """sha256 (hex, 16 digits) over the installed package's Python sources and tables:
    an edit to any op schema, kernel or table gives another key."""
    digest = hashlib.sha256()
    root = files("vllm_gemma4_router")
    pending = [(root, "")]
    found: list[tuple[str, bytes]] = []
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                if entry.name != "__pycache__":
                    pending.append((entry, f"{prefix}{entry.name}/"))
            elif entry.name.endswith(_SOURCE_SUFFIXES):
                found.append((f"{prefix}{entry.name}", entry.read_bytes()))
    for name, content in sorted(found):
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()[:16]


def plugin_state() -> dict[str, object]:
    """What the plugin changes in the compiled model: its version and sources, and
    whether the fused router and the gate's run-time tier are on."""
    from vllm_gemma4_router.integration.custom_ops import Gemma4FusedRouter, Gemma4GateTier

    return {
        "version": __version__,
        "sources": sources_digest(),
        "fused_router": Gemma4FusedRouter.enabled(),
        "gate_tier": Gemma4GateTier.enabled(),
    }


_not_set_logged = False


def key_compile_cache(vllm_config=None) -> bool:
    """Write :func:`plugin_state` into ``vllm_config.additional_config`` (the current
    vLLM config by default). False, with one log line per process, where that is not
    a dict (a platform's own config object): the cache key then ignores the plugin."""
    global _not_set_logged
    if vllm_config is None:
        from vllm.config import get_current_vllm_config

        vllm_config = get_current_vllm_config()
    additional = getattr(vllm_config, "additional_config", None)
    if not isinstance(additional, dict):
        if not _not_set_logged:
            _not_set_logged = True
            logger.warning(cache_key_not_set_line(type(additional).__name__))
        return False
    additional[CACHE_KEY_ENTRY] = plugin_state()
    return True
