"""vLLM general plugin entry point (``vllm.general_plugins``)."""

from __future__ import annotations


def register() -> None:
    """Make vLLM's Gemma4 MoE layers route through the ``gemma4_routing`` op.

    vLLM calls this in every process. It is idempotent and cheap: it imports
    nothing heavy and patches Gemma4's model module only when vLLM imports it.
    When this vLLM's Gemma 4 code is not where the plugin patches it, it says
    so in one log line. Opt out with ``VLLM_PLUGINS`` (a list of plugin names
    without ``gemma4_router``).
    """
    from vllm_gemma4_router.integration.gemma4_layouts import (
        GEMMA4_MODULE,
        check_gemma4_location,
        install,
    )
    from vllm_gemma4_router.integration.import_hook import when_imported

    when_imported(GEMMA4_MODULE, install)
    check_gemma4_location()
