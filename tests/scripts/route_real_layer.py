"""Build a real Gemma4 decoder layer with the importable vLLM and route through it.

Run as a subprocess by tests/integration/test_plugin.py and ci/release_matrix.py (plugins
load once per process), with the vLLM under test first on PYTHONPATH. Prints
one JSON line with what it saw (also when it fails: then with ``error``,
``error_stage`` and ``error_in_plugin``, and exit status 1).

Where the release's CPU platform refuses to start without Triton (vLLM 0.34),
the Triton interpreter stands in for triton-cpu (``vllm_standins``; needs
``TRITON_INTERPRET=1``): ``triton_stand_in`` says whether it did.

Padding semantics, for releases whose forward context carries ``is_padding``
(``padding_mask``; else ``"no padding mask in this release"`` and the routed
calls must hold no -1 id): with a padding mask in the forward context (7
tokens, rows 2 and 5 padding; every row padding; no mask), route through

* ``cpu_branch``: a decoder layer built as vLLM runs here (CPU platform);
* ``cuda_like_branch``: one built while ``current_platform`` in vLLM's gemma4
  module alone answers ``is_cuda_alike()`` True (the branch that hands vLLM's
  Triton kernel the mask), plus ``vllm_kernel``: vLLM's own
  ``gemma4_fused_routing_kernel_triton(..., is_padding=get_moe_padding_mask(T))``
  on the same inputs, where Triton can run here (the stand-in's interpreter);
* ``skip_padding_off``: both again in a child process started with
  ``VLLM_MOE_SKIP_PADDING=0`` (``--skip-padding-off-child``).

Each records, per mask, whether the op was handed a mask, the rows that came
back as ids -1 / weights 0, and whether the other rows equal the fp64 oracle.
``ci/release_matrix.py`` judges them against what the release's gemma4.py does.
"""

import argparse
import contextlib
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fp64 oracle
sys.path.insert(0, str(Path(__file__).resolve().parent))  # vllm_standins

from vllm_standins import stand_in_for_triton_cpu  # noqa: E402

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


NO_PADDING_MASK = "no padding mask in this release"
REFUSED_PHRASE = "leaving vLLM's routing unchanged"
SKIP_PADDING_ENV = "VLLM_MOE_SKIP_PADDING"
NUM_EXPERTS, TOPK, HIDDEN, TOKENS = 16, 4, 64, 7
PADDING_ROWS = (2, 5)


class CudaLikePlatform:
    """vLLM's ``current_platform`` with ``is_cuda_alike()`` True, the rest delegated.

    Put into vLLM's gemma4 module alone (``cuda_like_branch``): its routing then
    takes the branch CUDA, ROCm and XPU take; everything else still sees the CPU.
    """

    def __init__(self, platform):
        self._platform = platform

    def is_cuda_alike(self) -> bool:
        return True

    def __getattr__(self, name):
        return getattr(self._platform, name)


@contextlib.contextmanager
def cuda_like_branch(gemma4):
    original = gemma4.current_platform
    gemma4.current_platform = CudaLikePlatform(original)
    try:
        yield
    finally:
        gemma4.current_platform = original


class OpCalls:
    """The rows of each ``gemma4_routing`` call in ``owner``, and whether it was handed a mask."""

    def __init__(self, owner):
        from vllm_gemma4_router.integration.custom_ops import Gemma4Routing

        self.ops = [m for m in owner.modules() if isinstance(m, Gemma4Routing)]
        self.calls: list[tuple[int, bool]] = []
        for op in self.ops:
            op.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        mask = kwargs.get("is_padding", args[3] if len(args) > 3 else None)
        self.calls.append((int(args[0].shape[0]), mask is not None))

    def take(self) -> list[tuple[int, bool]]:
        calls, self.calls = self.calls, []
        return calls


def build_layer(gemma4, config, vllm_config, prefix: str):
    """A ``Gemma4DecoderLayer``: (owner of ``per_expert_scale``, its fused-MoE experts)."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(vllm_config):
        layer = gemma4.Gemma4DecoderLayer(config, prefix=prefix)
    if hasattr(layer, "experts"):  # router_method: Gemma4Router owns the routing
        return layer.router, layer.experts
    return layer.moe, layer.moe.experts  # moe_closure: Gemma4MoE owns it and its experts


def route(experts, vllm_config, hidden, logits, context=None):
    """The layer's fused-MoE router on ``logits`` (optionally inside a forward context)."""
    from vllm.config import set_current_vllm_config

    context = context if context is not None else contextlib.nullcontext()
    with set_current_vllm_config(vllm_config), torch.no_grad(), context:
        return experts.router.select_experts(hidden_states=hidden, router_logits=logits)


def rows_match_oracle(weights, ids, logits, scale, rows) -> bool:
    """Exact ids and fp32-close weights against the fp64 oracle on ``rows``."""
    from oracle import oracle_fp64

    rows = list(rows)
    if not rows:
        return True
    ref_w, ref_ids = oracle_fp64(logits, TOPK, scale)
    return bool(np.array_equal(ids.long().numpy()[rows], ref_ids[rows])) and bool(
        np.allclose(weights.double().numpy()[rows], ref_w[rows], rtol=1e-5, atol=1e-7)
    )


def skipped_rows(weights, ids) -> list[int]:
    """Rows routed to no expert: every id -1 and every weight 0."""
    return [
        r for r in range(ids.shape[0]) if bool((ids[r] == -1).all() and (weights[r] == 0).all())
    ]


def negative_id_rows(ids) -> list[int]:
    return [r for r in range(ids.shape[0]) if bool((ids[r] < 0).any())]


def tie_rows(logits) -> list[int]:
    """Rows whose top K+1 logits hold equal values (the order among them is a convention)."""
    top = logits.sort(dim=-1, descending=True).values[:, : TOPK + 1]
    return [r for r in range(logits.shape[0]) if bool((top[r, 1:] == top[r, :-1]).any())]


def padding_masks() -> dict[str, torch.Tensor | None]:
    rows = torch.zeros(TOKENS, dtype=torch.bool)
    rows[list(PADDING_ROWS)] = True
    return {
        "rows_2_5": rows,
        "all_rows": torch.ones(TOKENS, dtype=torch.bool),
        "no_mask": None,
    }


def forward_context_has_padding() -> bool:
    import vllm.forward_context as fc

    fields = getattr(fc.ForwardContext, "__dataclass_fields__", {})
    setter = getattr(fc, "set_forward_context", None)
    return (
        "is_padding" in fields
        and callable(setter)
        and "is_padding" in inspect.signature(setter).parameters
    )


def observe_branch(owner, experts, vllm_config, hidden, logits, gemma4=None) -> dict:
    """Route with each padding mask in the forward context; what came back.

    With ``gemma4``, also run vLLM's own Triton routing kernel on the same
    inputs with the mask vLLM's routing would hand it, and compare.
    """
    import vllm.forward_context as fc

    calls = OpCalls(owner)
    out = {}
    for name, mask in padding_masks().items():
        padded = [] if mask is None else mask.nonzero().flatten().tolist()
        real = [r for r in range(TOKENS) if r not in padded]
        context = fc.set_forward_context(None, vllm_config, is_padding=mask)
        weights, ids = route(experts, vllm_config, hidden, logits, context)
        seen = calls.take()
        entry = {
            "op_calls": [rows for rows, _ in seen],
            "mask_passed": [passed for _, passed in seen],
            "skipped_rows": skipped_rows(weights, ids),
            "negative_id_rows": negative_id_rows(ids),
            "real_rows_match_oracle": rows_match_oracle(
                weights, ids, logits, owner.per_expert_scale, real
            ),
            "all_rows_match_oracle": rows_match_oracle(
                weights, ids, logits, owner.per_expert_scale, range(TOKENS)
            ),
        }
        if gemma4 is not None and mask is not None:
            entry["vllm_kernel"] = compare_with_vllm_kernel(
                gemma4, vllm_config, mask, logits, owner.per_expert_scale, weights, ids
            )
        out[name] = entry
    return out


def compare_with_vllm_kernel(gemma4, vllm_config, mask, logits, scale, weights, ids) -> dict:
    """vLLM's ``gemma4_fused_routing_kernel_triton`` on the same inputs, against ours."""
    import vllm.forward_context as fc
    import vllm.triton_utils

    kernel = getattr(gemma4, "gemma4_fused_routing_kernel_triton", None)
    get_mask = getattr(gemma4, "get_moe_padding_mask", None)
    if kernel is None or "is_padding" not in inspect.signature(kernel).parameters:
        return {"ran": False, "why": "no gemma4_fused_routing_kernel_triton(is_padding=...)"}
    if get_mask is None:
        return {"ran": False, "why": "gemma4.py has no get_moe_padding_mask"}
    if not vllm.triton_utils.HAS_TRITON:
        return {"ran": False, "why": "no Triton here (vllm.triton_utils.HAS_TRITON is false)"}
    with fc.set_forward_context(None, vllm_config, is_padding=mask), torch.no_grad():
        vllm_mask = get_mask(logits.shape[0])  # what vLLM's routing hands its kernel
        vllm_weights, vllm_ids = kernel(logits, TOPK, scale, is_padding=vllm_mask)
    padded = [] if vllm_mask is None else vllm_mask.nonzero().flatten().tolist()
    ties = tie_rows(logits)
    compared = [r for r in range(logits.shape[0]) if r not in padded and r not in ties]
    return {
        "ran": True,
        "padding_rows": padded,  # the rows vLLM's own mask marks
        "padding_rows_identical": bool(
            torch.equal(ids[padded].long(), vllm_ids[padded].long())
            and torch.equal(weights[padded], vllm_weights[padded])
            and bool((vllm_ids[padded] == -1).all())
            and bool((vllm_weights[padded] == 0.0).all())
        ),
        "tie_rows": ties,
        "real_rows_compared": compared,
        "real_rows_ids_equal": bool(torch.equal(ids[compared].long(), vllm_ids[compared].long())),
        "real_rows_weights_close": bool(
            torch.allclose(weights[compared], vllm_weights[compared], rtol=1e-5, atol=1e-6)
        ),
    }


class Release:
    """The vLLM under test, loaded with the plugin, and a tiny Gemma4 config."""

    def __init__(self, result: dict, stage: list[str]):
        stage[0] = "stand-in"
        result["triton_stand_in"] = stand_in_for_triton_cpu()
        stage[0] = "import"
        import vllm.logger

        self.plugin_log = collect_plugin_log()
        import vllm.plugins

        vllm.plugins.load_general_plugins()
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.models import gemma4

        from vllm_gemma4_router.integration import gemma4_layouts

        self.gemma4 = gemma4
        result.update(
            {
                "vllm": vllm.__version__,
                "torch": torch.__version__,
                "layout": getattr(gemma4, "_vllm_gemma4_router_layout", "not installed"),
                "closure_handover": gemma4_layouts.closure_handover(gemma4),
                "routing_function_module": getattr(
                    getattr(getattr(gemma4, "Gemma4Router", None), "routing_function", None),
                    "__module__",
                    None,
                ),
            }
        )
        result["plugin_refused"] = result["layout"] in (None, "not installed") and any(
            REFUSED_PHRASE in line for line in self.plugin_log
        )
        stage[0] = "build"
        self.config = tiny_gemma4_config(NUM_EXPERTS, TOPK, HIDDEN)
        self.vllm_config = tiny_vllm_config(self.config)
        with set_current_vllm_config(self.vllm_config):
            init_single_process_distributed()
            result["compiled_ops"] = compiled_ops_or_stub()
        self.gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))

    def layer(self, prefix: str, cuda_like: bool = False):
        """(owner, experts) of a new decoder layer, optionally built on the CUDA-like branch."""
        with cuda_like_branch(self.gemma4) if cuda_like else contextlib.nullcontext():
            owner, experts = build_layer(self.gemma4, self.config, self.vllm_config, prefix)
        with torch.no_grad():
            owner.per_expert_scale.copy_(torch.rand(NUM_EXPERTS, generator=self.gen) + 0.5)
        return owner, experts

    def inputs(self):
        hidden = torch.randn(TOKENS, HIDDEN, generator=self.gen)
        return hidden, torch.randn(TOKENS, NUM_EXPERTS, generator=self.gen)

    def branches(self, cpu_layer=None) -> dict:
        """Both routing branches with every padding mask (layers 0 and 1 of the config)."""
        hidden, logits = self.inputs()
        owner, experts = cpu_layer or self.layer("model.layers.0")
        out = {"cpu_branch": observe_branch(owner, experts, self.vllm_config, hidden, logits)}
        owner, experts = self.layer("model.layers.1", cuda_like=True)
        # vLLM's routing reads current_platform at call time: keep the branch forced.
        with cuda_like_branch(self.gemma4):
            out["cuda_like_branch"] = observe_branch(
                owner, experts, self.vllm_config, hidden, logits, self.gemma4
            )
        return out


def check_routing(release: Release, result: dict) -> tuple:
    """Three calls of 7 tokens through a decoder layer's router (no forward context)."""
    owner, experts = release.layer("model.layers.0")
    result["owner"] = type(owner).__name__
    calls = OpCalls(owner)
    result["ops_in_owner"] = len(calls.ops)
    if calls.ops:
        result["forward_method"] = calls.ops[0]._forward_method.__name__
    gen = release.gen
    hidden, logits = release.inputs()

    def matches_reference(weights, ids):
        # Every path selects on the exact fp32 logits: ids agree exactly with
        # the fp64 oracle, weights to fp32 rounding.
        return rows_match_oracle(weights, ids, logits, owner.per_expert_scale, range(TOKENS))

    weights, ids = route(experts, release.vllm_config, hidden, logits)
    result["first_call_matches_reference"] = matches_reference(weights, ids)
    # per_expert_scale is read at call time: an in-place update and a replaced
    # Parameter (weight reload) both reach the next call.
    with torch.no_grad():
        owner.per_expert_scale.mul_(2.0)
    weights2, ids2 = route(experts, release.vllm_config, hidden, logits)
    result["inplace_scale_seen"] = bool(torch.allclose(weights2, weights * 2.0)) and bool(
        matches_reference(weights2, ids2)
    )
    owner.per_expert_scale = torch.nn.Parameter(torch.rand(NUM_EXPERTS, generator=gen) + 3.0)
    weights3, ids3 = route(experts, release.vllm_config, hidden, logits)
    result["replaced_scale_seen"] = matches_reference(weights3, ids3) and bool(
        (weights3 > weights2).any()
    )
    result["op_calls"] = [rows for rows, _ in calls.take()]
    result["negative_ids"] = any(bool((i < 0).any()) for i in (ids, ids2, ids3))
    return owner, experts


def check_padding(release: Release, cpu_layer, result: dict) -> None:
    """The padding semantics (module docstring), into ``result["padding"]``."""
    import vllm.envs

    if not forward_context_has_padding():
        result["padding"] = {"padding_mask": NO_PADDING_MASK}
        return
    padding = {
        "padding_mask": "forward context",
        "skip_padding": getattr(vllm.envs, SKIP_PADDING_ENV, None),
    }
    result["padding"] = padding
    if result["layout"] in (None, "not installed"):
        padding["skipped"] = "the plugin is not installed"
        return
    padding.update(release.branches(cpu_layer))
    padding["skip_padding_off"] = run_skip_padding_off_child()


def run_skip_padding_off_child(timeout: int = 600) -> dict:
    """This script's ``--skip-padding-off-child`` with ``VLLM_MOE_SKIP_PADDING=0`` set at start."""
    env = {**os.environ, SKIP_PADDING_ENV: "0"}
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--skip-padding-off-child"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        child = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        return {"error": f"exit {proc.returncode}: {tail[-1][-200:] if tail else ''}"}
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
    return child


def skip_padding_off_child(result: dict, stage: list[str]) -> None:
    import vllm.envs

    release = Release(result, stage)
    stage[0] = "padding"
    result["skip_padding"] = getattr(vllm.envs, SKIP_PADDING_ENV, None)
    result.update(release.branches())
    import vllm.forward_context as fc

    mask = padding_masks()["rows_2_5"]
    get_mask = getattr(release.gemma4, "get_moe_padding_mask", None)
    if get_mask is not None:
        with fc.set_forward_context(None, release.vllm_config, is_padding=mask):
            result["vllm_mask"] = None if get_mask(TOKENS) is None else "mask"


def full_check(result: dict, stage: list[str]) -> None:
    release = Release(result, stage)
    stage[0] = "route"
    cpu_layer = check_routing(release, result)
    stage[0] = "padding"
    check_padding(release, cpu_layer, result)
    result["plugin_log"] = release.plugin_log


def _in_plugin(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return any("/vllm_gemma4_router/" in f.filename.replace("\\", "/") for f in frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--skip-padding-off-child",
        action="store_true",
        help="only the padding branches (run with VLLM_MOE_SKIP_PADDING=0)",
    )
    args = parser.parse_args(argv)
    result: dict = {}
    stage = ["start"]
    try:
        if args.skip_padding_off_child:
            skip_padding_off_child(result, stage)
        else:
            full_check(result, stage)
    except Exception as exc:
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"[:400]
        result["error_stage"] = stage[0]
        result["error_in_plugin"] = _in_plugin(exc)
        print(json.dumps(result))
        sys.stdout.flush()
        return 1
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
