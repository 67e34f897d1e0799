"""Route through real Gemma 4 decoder layers of the patched vLLM tree, on this CPU.

Run as a subprocess by ``tests/upstream/test_series.py`` with the patched tree
first on PYTHONPATH (plugins load once per process). Builds two decoder layers
with the tree's own ``gemma4.py`` (``tests/scripts/route_real_layer.py``
builds them), routes fresh random logits through each layer's fused-MoE router,
and prints one JSON line: the forward each layer's ``gemma4_routing`` op runs,
and whether the result equals the fp64 oracle (ids exactly, weights to fp32).

    python tests/upstream/route_patched_layer.py [--plugin]

Without ``--plugin``: with ``custom_ops`` as vLLM's default (``[]``) and as
``["-gemma4_routing"]``. ``--plugin``: load vLLM's general plugins first (this
repository's among them), default ``custom_ops`` only, and report what it
installed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from vllm_standins import stand_in_for_triton_cpu  # noqa: E402


def op_facts(op: torch.nn.Module) -> dict:
    """Class and forward of a ``gemma4_routing`` op instance."""
    forward = op._forward_method
    return {
        "class": f"{type(op).__module__}.{type(op).__qualname__}",
        "forward": inspect.unwrap(forward).__name__,
        "compiled": inspect.unwrap(forward) is not forward,
    }


def run(plugin: bool) -> dict:
    """Build two layers per ``custom_ops`` setting, route through them; what happened."""
    result: dict = {"triton_stand_in": stand_in_for_triton_cpu()}
    import vllm

    result["vllm"] = vllm.__version__
    result["vllm_file"] = vllm.__file__
    if plugin:
        import vllm.plugins

        vllm.plugins.load_general_plugins()
    from route_real_layer import (
        HIDDEN,
        NUM_EXPERTS,
        TOKENS,
        TOPK,
        build_layer,
        compiled_ops_or_stub,
        init_single_process_distributed,
        route,
        rows_match_oracle,
        tiny_gemma4_config,
        tiny_vllm_config,
    )
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.models import gemma4

    result["plugin_layout"] = getattr(gemma4, "_vllm_gemma4_router_layout", "not installed")
    result["routing_function_module"] = gemma4.Gemma4Router.routing_function.__module__
    config = tiny_gemma4_config(NUM_EXPERTS, TOPK, HIDDEN)
    settings = (
        {"default": []} if plugin else {"default": [], "-gemma4_routing": ["-gemma4_routing"]}
    )
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for name, custom_ops in settings.items():
        vllm_config = tiny_vllm_config(config, custom_ops=custom_ops)
        with set_current_vllm_config(vllm_config):
            if name == "default":
                init_single_process_distributed()
                result["compiled_ops"] = compiled_ops_or_stub()
        layers = result.setdefault("custom_ops", {}).setdefault(name, [])
        for index in range(2):
            owner, experts = build_layer(gemma4, config, vllm_config, f"model.layers.{index}")
            with torch.no_grad():
                owner.per_expert_scale.copy_(torch.rand(NUM_EXPERTS, generator=gen) + 0.5)
            hidden = torch.randn(TOKENS, HIDDEN, generator=gen)
            logits = torch.randn(TOKENS, NUM_EXPERTS, generator=gen)
            weights, ids = route(experts, vllm_config, hidden, logits)
            layer = {
                "in_tree_op": op_facts(owner.routing),
                "matches_oracle": rows_match_oracle(
                    weights, ids, logits, owner.per_expert_scale, range(TOKENS)
                ),
            }
            # per_expert_scale is read at call time: a weight update reaches the next call.
            with torch.no_grad():
                owner.per_expert_scale.mul_(2.0)
            weights2, ids2 = route(experts, vllm_config, hidden, logits)
            layer["scale_update_seen"] = bool(torch.equal(ids2, ids)) and bool(
                torch.allclose(weights2, weights * 2.0)
            )
            plugin_op = getattr(owner, "gemma4_routing", None)
            if plugin_op is not None:
                layer["plugin_op"] = op_facts(plugin_op)
            layers.append(layer)
    if plugin:
        from vllm_gemma4_router.integration import gemma4_layouts

        # What install() read from vLLM's routing, before replacing it.
        facts = getattr(gemma4, gemma4_layouts.INSTALLED_FACTS_ATTRIBUTE)
        result["plugin_mask_helper"] = facts.mask_helper
        result["plugin_mask_module"] = facts.mask_module
    return result


def main(argv: list[str] | None = None) -> int:
    """Print the JSON line; exit status 1 (with ``error`` in it) on an exception."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plugin", action="store_true", help="load vLLM's general plugins")
    args = parser.parse_args(argv)
    try:
        result = run(args.plugin)
    except Exception as exc:  # reported, with the traceback on stderr
        import traceback

        traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:400]}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
