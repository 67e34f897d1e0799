"""A real Gemma4 decoder layer's MoE block with the fused router on and off.

Run as a subprocess by tests/integration/test_vllm_fused_router.py (plugins load once per
process), with the vLLM under test first on PYTHONPATH, exactly like
route_real_layer.py. Builds one layer with ``custom_ops=["+gemma4_fused_router"]``
and one with the default, same random weights, and prints one JSON line of
what it saw: which forward each router ran, whether the routing function
claimed the fused routing or routed again, and the numbers against fp64.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # route_real_layer
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fp64 oracle

from route_real_layer import (  # noqa: E402
    collect_plugin_log,
    compiled_ops_or_stub,
    init_single_process_distributed,
    tiny_gemma4_config,
    tiny_vllm_config,
)

NUM_EXPERTS, TOPK, HIDDEN, TOKENS = 16, 4, 64, 9


class Calls:
    """Forward-hook counters on named modules."""

    def __init__(self, **modules):
        self.counts = dict.fromkeys(modules, 0)
        for name, module in modules.items():
            module.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, args, out):
            self.counts[name] += 1

        return hook

    def take(self) -> dict[str, int]:
        """The counts since the last take."""
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts


def fp64_logits(x, scale, weight, eps):
    """The router logits in float64: rms(x) * H**-0.5 * ((x * scale) @ W.T)."""
    h = x.double()
    rms = torch.rsqrt((h * h).mean(dim=-1, keepdim=True) + eps)
    return (h * scale.double()) @ weight.double().t() * rms * h.shape[-1] ** -0.5


def logits_close(got, want) -> bool:
    return bool(torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6))


def matches_oracle(weights, ids, logits, scale) -> bool:
    """ids exactly the fp64 oracle's on these logits, weights to fp32 rounding."""
    from oracle import oracle_fp64

    ref_w, ref_ids = oracle_fp64(logits, TOPK, scale)
    return bool(np.array_equal(ids.long().numpy(), ref_ids)) and bool(
        np.allclose(weights.double().numpy(), ref_w, rtol=2e-6, atol=1e-7)
    )


def near_tie_rows(logits_a, logits_b, gap: float) -> tuple[list[int], list[int]]:
    """Rows whose top-K ids differ between the two logits: (near ties, real differences).

    A row is a near tie when, in ``logits_b``, the K-th and (K+1)-th largest
    logits are within ``gap``: both chains may then pick either expert.
    """
    from oracle import oracle_fp64

    _, ids_a = oracle_fp64(logits_a, TOPK, None)
    _, ids_b = oracle_fp64(logits_b, TOPK, None)
    ties, real = [], []
    for row in np.nonzero((np.sort(ids_a, 1) != np.sort(ids_b, 1)).any(axis=1))[0]:
        top = torch.sort(logits_b[row].double(), descending=True).values
        (ties if float(top[TOPK - 1] - top[TOPK]) <= gap else real).append(int(row))
    return ties, real


def main() -> None:
    from vllm_standins import stand_in_for_triton_cpu

    stand_in_for_triton_cpu()  # vLLM 0.34 refuses x86 CPUs without triton-cpu
    import vllm.logger

    plugin_log = collect_plugin_log()
    import vllm.plugins

    vllm.plugins.load_general_plugins()
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    from vllm.model_executor.models import gemma4

    from vllm_gemma4_router.fused_router import handover
    from vllm_gemma4_router.fused_router.handover import claim_counts

    config = tiny_gemma4_config(NUM_EXPERTS, TOPK, hidden_size=HIDDEN)
    configs = {
        "on": tiny_vllm_config(config, ["+gemma4_fused_router"]),
        "off": tiny_vllm_config(config),
    }
    layers = {}
    with set_current_vllm_config(configs["on"]):
        init_single_process_distributed()
        compiled_ops = compiled_ops_or_stub()
    for arm, vllm_config in configs.items():
        with set_current_vllm_config(vllm_config):
            layers[arm] = gemma4.Gemma4DecoderLayer(config, prefix="model.layers.0")
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    with torch.no_grad():
        for name, param in layers["on"].named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
            if name.endswith("scale"):  # router.scale, per_expert_scale: positive
                param.abs_().add_(0.5)
    layers["off"].load_state_dict(layers["on"].state_dict())

    def parts(layer):
        router_method = hasattr(layer, "experts")
        owner = layer.router if router_method else layer.moe
        moe = layer.experts if router_method else layer.moe
        experts = layer.experts if router_method else layer.moe.experts
        return layer.router, owner, moe, experts

    router, owner, moe, experts = parts(layers["on"])
    router_off, owner_off, moe_off, experts_off = parts(layers["off"])
    calls = Calls(
        fused=router.gemma4_fused_router,
        norm=router.norm,
        routing=owner.gemma4_routing,
        fused_off=router_off.gemma4_fused_router,
        norm_off=router_off.norm,
        routing_off=owner_off.gemma4_routing,
    )
    eps = router.norm.variance_epsilon
    weight, pes = router.proj.weight.detach().clone(), owner.per_expert_scale
    # vLLM's post-load processing, as its model loader runs it. On the CPU the
    # gate's linear method prepacks the weight (oneDNN, when vLLM's compiled
    # ops load) and may replace router.proj.weight with an empty placeholder;
    # vLLM's own router forward needs it (cpu_linear). Releases whose compiled
    # ops do not load get only their gates processed (the experts need them).
    for arm, layer in layers.items():
        with set_current_vllm_config(configs[arm]):
            if compiled_ops == "loaded":
                process_weights_after_loading(layer, configs[arm].model_config, weight.device)
            else:
                proj = layer.router.proj
                proj.quant_method.process_weights_after_loading(proj)
    x = torch.randn(TOKENS, HIDDEN, generator=gen)
    want = fp64_logits(x, router.scale, weight, eps)
    result = {
        "vllm": vllm.__version__,
        "layout": getattr(gemma4, "_vllm_gemma4_router_layout", "not installed"),
        "compiled_ops": compiled_ops,
        "plan": {
            "on": repr(getattr(router, "_gemma4_fused_plan", None)),
            "off": repr(getattr(router_off, "_gemma4_fused_plan", None)),
        },
        "feeds": [getattr(o, "_gemma4_fused_feeds", False) for o in (owner, owner_off)],
        "gate_weight_numel_after_load": router.proj.weight.numel(),
        "plugin_log": plugin_log,
    }

    def route(experts_, logits):
        with set_current_vllm_config(configs["on"]), torch.no_grad():
            return experts_.router.select_experts(hidden_states=x, router_logits=logits)

    with torch.no_grad():
        logits_on = router(x)
        result["router_on_calls"] = calls.take()
        result["pending_after_router"] = len(handover._PRODUCED)
        logits_off = router_off(x)
        result["router_off_calls"] = calls.take()
        # Not 2-D: vLLM's own forward.
        logits_3d = router(x[None])
        result["router_3d"] = {"calls": calls.take(), "close": logits_close(logits_3d[0], want)}
    result["logits_on_close_to_fp64"] = logits_close(logits_on, want)
    result["logits_off_close_to_fp64"] = logits_close(logits_off, want)
    result["logits_on"] = [list(logits_on.shape), str(logits_on.dtype)]

    before = dict(claim_counts)
    weights, ids = route(experts, logits_on)
    result["claimed_route"] = {
        "calls": calls.take(),
        "claims": {k: claim_counts[k] - before.get(k, 0) for k in ("claimed", "missed")},
        "pending": len(handover._PRODUCED),
        "matches_oracle": matches_oracle(weights, ids, logits_on, pes),
    }
    with torch.no_grad():
        fresh = router(x)
    calls.take()
    before = dict(claim_counts)
    weights, ids = route(experts, fresh.clone())
    result["cloned_route"] = {
        "calls": calls.take(),
        "claims": {k: claim_counts[k] - before.get(k, 0) for k in ("claimed", "missed")},
        "matches_oracle": matches_oracle(weights, ids, fresh, pes),
    }
    handover.forget_all()
    before = dict(claim_counts)
    weights, ids = route(experts_off, logits_off)
    result["off_route"] = {
        "calls": calls.take(),
        "claims": {k: claim_counts[k] - before.get(k, 0) for k in ("claimed", "missed")},
        "matches_oracle": matches_oracle(weights, ids, logits_off, pes),
    }

    if compiled_ops == "loaded":
        # The whole MoE block (its experts run vLLM's compiled CPU ops).
        from vllm.forward_context import set_forward_context

        outs = {}
        for arm, (r, m) in {"on": (router, moe), "off": (router_off, moe_off)}.items():
            with (
                set_current_vllm_config(configs[arm]),
                torch.no_grad(),
                set_forward_context(None, configs[arm]),
            ):
                logits = r(x)
                outs[arm] = (logits, m(x, logits))
        counts = calls.take()
        ties, real = near_tie_rows(outs["on"][0], outs["off"][0], gap=1e-5)
        keep = [i for i in range(TOKENS) if i not in ties]
        diff = (outs["on"][1][keep] - outs["off"][1][keep]).abs().max()
        scale = outs["off"][1][keep].abs().max()
        result["moe_block"] = {
            "logits_on_close_to_fp64": logits_close(outs["on"][0], want),
            "calls": counts,
            "id_rows_differing_not_near_tie": real,
            "rows_compared": len(keep),
            "max_abs_diff_over_max": float(diff / scale),
        }
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
