"""Build a real Gemma4 decoder layer with the importable vLLM and route through it.

Run as a subprocess by tests/test_plugin.py and ci/release_matrix.py (plugins
load once per process), with the vLLM under test first on PYTHONPATH. Prints
one JSON line with what it saw.
"""

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fp64 oracle

# The decoder layer's MLP looks its compiled activation op up when it is built.
_MLP_OP = "gelu_tanh_and_mul"
_MLP_OP_SCHEMA = "gelu_tanh_and_mul(Tensor! out, Tensor input) -> ()"
_stub_libraries = []  # a torch Library unregisters its ops when collected


def compiled_ops_or_stub() -> str:
    """``"loaded"`` if this vLLM's compiled CPU ops load, else ``"stubbed"``.

    Releases built for another torch (0.19, 0.24 on torch 2.13) or for CUDA
    (0.33) cannot load theirs. Routing never calls the MLP, so an op that
    raises if it is ever called is enough to build the layer.
    """
    from vllm.platforms import current_platform

    current_platform.import_kernels()  # logs, does not raise, when they do not load
    if hasattr(torch.ops._C, _MLP_OP):
        return "loaded"

    def never_called(out: torch.Tensor, input: torch.Tensor) -> None:
        raise RuntimeError(f"stand-in for vLLM's _C.{_MLP_OP}: its compiled ops did not load")

    library = torch.library.Library("_C", "FRAGMENT")
    library.define(_MLP_OP_SCHEMA)
    library.impl(_MLP_OP, never_called, "CPU")
    _stub_libraries.append(library)
    return "stubbed"


def collect_plugin_log() -> list[str]:
    """The plugin's log messages from now on.

    Call it after ``import vllm.logger``: in older releases (0.19.1, 0.24.0,
    0.29.0 at least) that import configures vLLM's loggers and strips handlers
    off their children; 0.32 configures them only in its entry points, so
    vLLM's own handlers print nothing here.
    """
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    from vllm_gemma4_router.log_contract import LOGGER_NAME

    plugin_logger = logging.getLogger(LOGGER_NAME)
    plugin_logger.addHandler(handler)
    plugin_logger.setLevel(logging.INFO)
    return messages


def tiny_gemma4_config(num_experts: int, topk: int, hidden_size: int = 64):
    """A two-layer Gemma4 MoE text config (transformers' ``Gemma4TextConfig``)."""
    from transformers import Gemma4TextConfig

    config = Gemma4TextConfig(
        vocab_size=256,
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=32,
        enable_moe_block=True,
        num_experts=num_experts,
        top_k_experts=topk,
        moe_intermediate_size=32,
    )
    config.architectures = ["Gemma4ForCausalLM"]
    return config


def tiny_vllm_config(config, custom_ops: list[str] | None = None, dtype: str = "float32"):
    """A ``VllmConfig`` for ``config`` (saved to a temporary directory), eager (mode 0)."""
    from vllm.config import CompilationConfig, ModelConfig, VllmConfig

    model_dir = tempfile.mkdtemp()
    config.save_pretrained(model_dir)
    return VllmConfig(
        model_config=ModelConfig(model=model_dir, skip_tokenizer_init=True, dtype=dtype),
        compilation_config=CompilationConfig(mode=0, custom_ops=custom_ops or []),
    )


def init_single_process_distributed() -> None:
    """vLLM's distributed state for one process (gloo, world size 1)."""
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    init_distributed_environment(
        world_size=1,
        rank=0,
        local_rank=0,
        backend="gloo",
        distributed_init_method=f"file://{tempfile.mktemp()}",
    )
    initialize_model_parallel(1, 1)


def main() -> None:
    import vllm.logger

    plugin_log = collect_plugin_log()
    import vllm.plugins

    vllm.plugins.load_general_plugins()
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.models import gemma4

    from vllm_gemma4_router import vllm_adapter

    result = {
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "layout": getattr(gemma4, "_vllm_gemma4_router_layout", "not installed"),
        "closure_handover": vllm_adapter.closure_handover(gemma4),
        "routing_function_module": getattr(
            getattr(getattr(gemma4, "Gemma4Router", None), "routing_function", None),
            "__module__",
            None,
        ),
    }
    num_experts, topk = 16, 4
    config = tiny_gemma4_config(num_experts, topk)
    vllm_config = tiny_vllm_config(config)
    with set_current_vllm_config(vllm_config):
        init_single_process_distributed()
        result["compiled_ops"] = compiled_ops_or_stub()
        layer = gemma4.Gemma4DecoderLayer(config, prefix="model.layers.0")
        if hasattr(layer, "experts"):  # router_method: Gemma4Router owns the routing
            owner, experts = layer.router, layer.experts
        else:  # moe_closure: Gemma4MoE owns it and its experts
            owner = layer.moe
            experts = owner.experts
        result["owner"] = type(owner).__name__
    from oracle import oracle_fp64

    from vllm_gemma4_router.vllm_op import Gemma4Routing

    ops = [m for m in owner.modules() if isinstance(m, Gemma4Routing)]
    result["ops_in_owner"] = len(ops)
    calls = []
    if ops:
        ops[0].register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
        result["forward_method"] = ops[0]._forward_method.__name__

    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    with torch.no_grad():
        owner.per_expert_scale.copy_(torch.rand(num_experts, generator=gen) + 0.5)
    hidden = torch.randn(7, 64, generator=gen)
    logits = torch.randn(7, num_experts, generator=gen)

    def route():
        with set_current_vllm_config(vllm_config), torch.no_grad():
            return experts.router.select_experts(hidden_states=hidden, router_logits=logits)

    def matches_reference(weights, ids):
        # Every path selects on the exact fp32 logits: ids agree exactly with
        # the fp64 oracle, weights to fp32 rounding.
        ref_w, ref_ids = oracle_fp64(logits, topk, owner.per_expert_scale)
        return bool(np.array_equal(ids.long().numpy(), ref_ids)) and bool(
            np.allclose(weights.double().numpy(), ref_w, rtol=1e-5, atol=1e-7)
        )

    weights, ids = route()
    result["first_call_matches_reference"] = matches_reference(weights, ids)
    # per_expert_scale is read at call time: an in-place update and a replaced
    # Parameter (weight reload) both reach the next call.
    with torch.no_grad():
        owner.per_expert_scale.mul_(2.0)
    weights2, ids2 = route()
    result["inplace_scale_seen"] = bool(torch.allclose(weights2, weights * 2.0)) and bool(
        matches_reference(weights2, ids2)
    )
    owner.per_expert_scale = torch.nn.Parameter(torch.rand(num_experts, generator=gen) + 3.0)
    weights3, ids3 = route()
    result["replaced_scale_seen"] = matches_reference(weights3, ids3) and bool(
        (weights3 > weights2).any()
    )
    result["op_calls"] = calls
    result["plugin_log"] = plugin_log
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
