"""Everything this package knows about vLLM's Gemma4 model code, by version.

vLLM has shipped two layouts of Gemma4 MoE routing (``ci/release_matrix.md``
lists every release from 0.19.0 to 0.34.0):

* ``moe_closure`` (vLLM 0.19.0 - 0.30.0): ``Gemma4MoE.__init__`` owns
  ``per_expert_scale`` and hands a local ``routing_function`` closure, as
  ``custom_routing_function``, to the fused MoE it builds: ``FusedMoE`` up to
  0.26.0, ``FusedMoEFactory`` from 0.27.0. The hand-over is found by what
  ``__init__`` calls, not by version.
* ``router_method`` (vLLM 0.31.0 - 0.34.0): ``Gemma4Router`` owns
  ``per_expert_scale`` and a ``routing_function`` method, which the decoder
  layer passes as ``custom_routing_function`` to the fused-MoE factory.

Before patching, the adapter reads what the release's own routing function
passes to its kernel (``read_routing_facts``): the arguments it knows (vLLM
0.19 - 0.33: none beyond the logits, top-K and scale; 0.34: the padding mask
``is_padding=get_moe_padding_mask(T)``, on the CUDA-like/XPU branch only), and
under which branch. Where the routing function calls vLLM's own
``gemma4_routing`` CustomOp instead (the upstream series in ``upstream/``), the
same is read from the op's per-platform forwards. Our routing then passes vLLM's
padding mask exactly where the release's does, and nowhere else. A routing that
passes anything else is refused: vLLM's routing stays, with one warning line.

Either way each owner gets a ``gemma4_routing`` op module, and the routing
callable handed to vLLM's fused MoE reads ``owner.per_expert_scale`` at call
time (so ``functional_call`` and weight reloads see the live tensor; vLLM's
own closure copied it into a local at ``__init__`` through 0.21.0). The
multimodal, MTP and other Gemma4 architectures build their layers from the
same module, so they are covered too.

The opt-in fused router (``+gemma4_fused_router`` in ``custom_ops``) patches
``Gemma4Router.forward`` in both layouts: a router linked, at decoder-layer
construction, to the module that owns ``per_expert_scale`` (the router itself,
or its sibling ``Gemma4MoE``) returns the logits view of the fused router op's
packed buffer, and that owner's routing function claims the routing in it
instead of routing again (``fused_router.handover``). Anything unsupported (a quantized or
biased gate, other dtypes, non-2-D input, no owner) runs vLLM's own forward.

Where the fused-router policy row of this platform and release names the token counts
the one-launch kernels win (``own_kernel_tokens``), the router computes the gate's
operand in traced code with vLLM's own lines (checked against the release's
``Gemma4Router.forward`` before use, ``ROUTER_OPERAND_SOURCE``) and calls
``fused_or_gate``'s op, which runs the fused router at those counts and vLLM's gate
(its own tier) at the others, the routing following as usual.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch

from vllm_gemma4_router.integration.compile_cache_key import key_compile_cache
from vllm_gemma4_router.log_contract import (
    fused_router_line,
    fused_router_split_line,
    gate_tier_line,
    gate_tier_warmup_failed_line,
    install_line,
    logger,
    nothing_patched_line,
    refused_line,
    simulated_routing_line,
    unrecognised_line,
)

GEMMA4_MODULE = "vllm.model_executor.models.gemma4"
OP_ATTRIBUTE = "gemma4_routing"
_INSTALLED_FLAG = "_vllm_gemma4_router_layout"
# On the same module: the RoutingFacts the install read (its routing function is ours then).
INSTALLED_FACTS_ATTRIBUTE = "_vllm_gemma4_router_routing_facts"
FUSED_OP_ATTRIBUTE = "gemma4_fused_router"
# On a router: its _FusedPlan (in __dict__, so nothing it holds is registered).
FUSED_PLAN_ATTRIBUTE = "_gemma4_fused_plan"
# On the per_expert_scale owner: True when a fused router feeds its routing.
FUSED_FEEDS_ATTRIBUTE = "_gemma4_fused_feeds"
FUSED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

#: ``GateLinear``'s eligibility flags for the tiers it picks with a plain Python branch
#: on the token count, which compiled code freezes at the first trace: the DSV3 kernel
#: (0.19 - 0.28; never Gemma 4's shapes), ll_bf16_gemm (0.26 on), ll_fp32w_gemm (0.33 on).
#: A gate with none of them set (no such tier for its shape in this release, or not on
#: this GPU) keeps vLLM's forward. tests/integration/test_gate_tier_releases.py reads the
#: releases' sources for these.
TOKEN_COUNT_TIER_FLAGS = ("allow_ll_bf16_gemm", "allow_ll_fp32w_gemm", "allow_dsv3_router_gemm")
#: Where 0.26 - 0.34 keep the CuTe-DSL ``ll_bf16_gemm`` and the token counts it serves.
LL_BF16_MODULE = "vllm.model_executor.kernels.linear.cute_dsl.ll_bf16"
LL_BF16_DEFAULT_MAX_TOKENS = 16
# (K, N) gate shapes whose ll_bf16 kernels this process compiled ahead of use.
_warmed_gate_shapes: set[tuple[int, int]] = set()

_ROUTING_SIGNATURE = ["self", "hidden_states", "gating_output", "topk", "renormalize"]
_HANDOVER_PARAMETER = "custom_routing_function"
# vLLM's router factory swaps any custom routing for a simulated router when set.
ROUTING_SIMULATION_ENV = "VLLM_MOE_ROUTING_SIMULATION_STRATEGY"
# On the per_expert_scale owner: the callable giving vLLM's padding mask for T rows,
# set only where the release's own routing passes one (in __dict__: a plain attribute).
PADDING_MASK_ATTRIBUTE = "_gemma4_padding_mask"

#: The calls vLLM's Gemma 4 routing functions make to routing code, by the global name
#: they call: (positional arguments, keywords). Any other call to a global of the
#: module, or any other argument, is something the plugin does not know.
KNOWN_ROUTING_CALLS: dict[str, tuple[int, frozenset[str]]] = {
    # 0.20 - 0.33: (gating_output, topk, per_expert_scale); 0.34 adds the mask.
    "gemma4_fused_routing_kernel_triton": (3, frozenset({"is_padding"})),
    "gemma4_routing_function_torch": (3, frozenset()),
}
#: The keyword a routing kernel takes vLLM's padding mask by (vLLM 0.34).
PADDING_KEYWORD = "is_padding"


class RoutingRefused(Exception):
    """The release's routing does something the plugin does not know (the message says what)."""


@dataclass(frozen=True)
class RoutingFacts:
    """What a release's own Gemma 4 routing function passes to its kernels.

    ``mask_helper``: the module global it calls for the padding mask
    (``get_moe_padding_mask`` in 0.34), or ``None`` (0.19 - 0.33: no mask).
    ``mask_branch``: the condition, in the module's namespace, under which the
    call with the mask runs (0.34: ``current_platform.is_cuda_alike() or
    current_platform.is_xpu()``); ``None`` means always.
    ``mask_module``: where the helper and the branch live when that is not the
    Gemma 4 module (vLLM's ``gemma4_routing`` CustomOp: its module, the branch
    over ``current_platform``).
    """

    mask_helper: str | None = None
    mask_branch: str | None = None
    mask_module: str | None = None

    def helper_module(self, module: ModuleType) -> ModuleType:
        """The module whose global ``mask_helper`` is."""
        return sys.modules[self.mask_module] if self.mask_module else module

    def passes_mask(self, module: ModuleType) -> bool:
        """Whether, on this process's platform, the release's routing passes its mask."""
        if self.mask_helper is None:
            return False
        if self.mask_branch is None:
            return True
        namespace = vars(self.helper_module(module))
        if self.mask_module:
            from vllm.platforms import current_platform

            namespace = {**namespace, "current_platform": current_platform}
        # vLLM's own test, evaluated where vLLM evaluates it (its module's globals).
        return bool(eval(self.mask_branch, namespace))  # noqa: S307


def _routing_function_node(module: ModuleType, layout: str) -> ast.FunctionDef:
    """The syntax tree of the release's own routing function for ``layout``."""
    if layout == "router_method":
        target = inspect.unwrap(module.Gemma4Router.routing_function)
    else:
        target = inspect.unwrap(module.Gemma4MoE.__init__)
    try:
        source = textwrap.dedent(inspect.getsource(target))
    except (OSError, TypeError) as exc:
        raise RoutingRefused(f"its routing function's source cannot be read ({exc})") from exc
    tree = ast.parse(source)
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    found = [n for n in nodes if n.name == "routing_function"]
    if len(found) != 1:
        raise RoutingRefused(f"found {len(found)} routing functions in its source, expected 1")
    return found[0]


def _branch_of(node: ast.AST, function: ast.FunctionDef) -> str | None:
    """The condition under which ``node`` runs in ``function``, as source (``None``: always)."""
    tests: list[str] = []

    def visit(body: list[ast.stmt], path: list[str]) -> bool:
        for statement in body:
            if statement is node or node in set(ast.walk(statement)):
                if isinstance(statement, ast.If) and statement.test is not node:
                    test = f"({ast.unparse(statement.test)})"
                    if visit(statement.body, [*path, test]):
                        return True
                    if visit(statement.orelse, [*path, f"not {test}"]):
                        return True
                tests.extend(path)
                return True
        return False

    visit(function.body, [])
    return " and ".join(tests) if tests else None


def read_routing_facts(module: ModuleType, layout: str) -> RoutingFacts:
    """What the release's own routing function in ``module`` passes to its kernels.

    Raises :class:`RoutingRefused` when it calls routing code the plugin does not
    know, or a known kernel with other arguments (a new keyword, ``*args``, a
    mask from anything but a module-level helper called with the row count), or
    when the branch that passes the mask cannot be evaluated in the module.
    """
    function = _routing_function_node(module, layout)
    op_cls = _in_tree_routing_op(module)
    if op_cls is not None and _calls_an_attribute(function):
        facts = _op_routing_facts(op_cls)
    else:
        facts = RoutingFacts(*_scan_routing_calls(function, vars(module)))
    try:
        facts.passes_mask(module)
    except Exception as exc:  # a branch on locals, or on something absent here
        raise RoutingRefused(
            f"its mask branch ({facts.mask_branch}) cannot be evaluated: {exc}"
        ) from exc
    return facts


#: The forward each CUDA-like or XPU platform runs, and vLLM's test for that platform.
_MASKED_PLATFORM_FORWARDS = {
    "forward_cuda": "current_platform.is_cuda()",
    "forward_hip": "current_platform.is_rocm()",
    "forward_xpu": "current_platform.is_xpu()",
}


def _in_tree_routing_op(module: ModuleType) -> type | None:
    """vLLM's own ``gemma4_routing`` CustomOp class, where its Gemma 4 module has one."""
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and getattr(value, "name", None) == "gemma4_routing"
            and not value.__module__.startswith("vllm_gemma4_router")
        ):
            return value
    return None


def _calls_an_attribute(function: ast.FunctionDef) -> bool:
    """Whether ``function`` calls a method of ``self`` (vLLM's op: ``self.routing(...)``)."""
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "self"
        for n in ast.walk(function)
    )


def _method_node(cls: type, name: str) -> ast.FunctionDef:
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(getattr(cls, name))))
    except (AttributeError, OSError, TypeError) as exc:
        raise RoutingRefused(f"its op's {name} cannot be read ({exc})") from exc
    return next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef))


def _forward_helper(cls: type, name: str, namespace: dict, seen: frozenset[str]) -> str | None:
    """The mask helper the op's forward ``name`` passes, following ``self.forward_*`` calls."""
    node = _method_node(cls, name)
    helper, branch = _scan_routing_calls(node, namespace)
    if helper is not None:
        if branch is not None:
            raise RoutingRefused(f"its op's {name} passes the mask under a branch ({branch})")
        return helper
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        target = call.func
        if (
            isinstance(target, ast.Attribute)
            and target.attr.startswith("forward_")
            and target.attr not in seen
        ):
            found = _forward_helper(cls, target.attr, namespace, seen | {target.attr})
            if found is not None:
                return found
    return None


def _op_routing_facts(op_cls: type) -> RoutingFacts:
    """What vLLM's ``gemma4_routing`` op passes, on which platforms (its forwards)."""
    namespace = vars(sys.modules[op_cls.__module__])
    helpers, branches = set(), []
    for forward, test in _MASKED_PLATFORM_FORWARDS.items():
        helper = _forward_helper(op_cls, forward, namespace, frozenset({forward}))
        if helper is not None:
            helpers.add(helper)
            branches.append(test)
    if len(helpers) > 1:
        raise RoutingRefused(f"its op's forwards take the mask from {sorted(helpers)}")
    if not helpers:
        return RoutingFacts()
    return RoutingFacts(helpers.pop(), " or ".join(branches), op_cls.__module__)


def _scan_routing_calls(
    function: ast.FunctionDef, namespace: dict
) -> tuple[str | None, str | None]:
    """The mask helper ``function``'s known routing calls pass, and under which branch."""
    helper = branch = None
    for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
        name = call.func.id if isinstance(call.func, ast.Name) else None
        if name is None or name not in namespace or name == helper:
            continue
        if name not in KNOWN_ROUTING_CALLS:
            if isinstance(namespace[name], type) or not callable(namespace[name]):
                continue
            if _is_mask_helper_call(call, function):
                continue
            raise RoutingRefused(f"it calls {name}(), which the plugin does not know")
        positional, keywords = KNOWN_ROUTING_CALLS[name]
        passed = {k.arg for k in call.keywords}
        if (
            len(call.args) != positional
            or any(isinstance(a, ast.Starred) for a in call.args)
            or None in passed
            or not passed <= keywords
        ):
            unknown = sorted(k or "**" for k in passed - keywords) or ["positional arguments"]
            raise RoutingRefused(
                f"it calls {name}() with arguments the plugin does not know ({', '.join(unknown)})"
            )
        mask = next((k.value for k in call.keywords if k.arg == PADDING_KEYWORD), None)
        if mask is None:
            continue
        if not (
            isinstance(mask, ast.Call)
            and isinstance(mask.func, ast.Name)
            and callable(namespace.get(mask.func.id))
            and len(mask.args) == 1
            and not mask.keywords
        ):
            raise RoutingRefused(
                f"it passes {PADDING_KEYWORD}={ast.unparse(mask)}, which the plugin does not know"
            )
        helper, branch = mask.func.id, _branch_of(call, function)
    return helper, branch


def _is_mask_helper_call(call: ast.Call, function: ast.FunctionDef) -> bool:
    """Whether ``call`` is the value of a known kernel's padding keyword."""
    return any(
        isinstance(n, ast.keyword) and n.arg == PADDING_KEYWORD and n.value is call
        for n in ast.walk(function)
    )


def _wrap_model_init(module: ModuleType) -> None:
    """Key vLLM's compile cache on the plugin before the model is built, and log, once it
    is built, which forward its routing ops run.

    Construction is the one moment every process passes through in Python:
    once vLLM compiles the model (CPU) or captures CUDA graphs, a call-time
    log may never run. Both layouts build through ``Gemma4ForCausalLM`` (the
    multimodal architectures wrap it), so that is where the key is written
    (once per model, before any of its layers can be compiled) and the ops are
    counted.
    """
    model_cls = getattr(module, "Gemma4ForCausalLM", None)
    if model_cls is None:
        return
    original_init = model_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        key_compile_cache()
        original_init(self, *args, **kwargs)
        from vllm_gemma4_router.integration.custom_ops import Gemma4Routing, dispatch_summary

        ops = [m for m in self.modules() if isinstance(m, Gemma4Routing)]
        for line in dispatch_summary(ops):
            logger.info(line)
        logger.info(_fused_router_summary(module, self))
        split = _fused_router_split_summary(module, self)
        if split is not None:
            logger.info(split)
        logger.info(_gate_tier_summary(module, self))
        _warm_kernels(self)

    model_cls.__init__ = __init__


def _warm_kernels(model) -> None:
    """Compile the plugin's Triton kernels for this model before vLLM serves it
    (``kernel_warmup``), up to vLLM's ``max_num_batched_tokens``."""
    from vllm.config import get_current_vllm_config

    from vllm_gemma4_router.integration.kernel_warmup import warm_model_kernels

    scheduler = getattr(get_current_vllm_config(), "scheduler_config", None)
    max_tokens = getattr(scheduler, "max_num_batched_tokens", None)
    if isinstance(max_tokens, int):
        warm_model_kernels(model, max_tokens)


def _attach_op(owner, module: ModuleType, facts: RoutingFacts) -> None:
    from vllm_gemma4_router.integration.custom_ops import Gemma4Routing

    owner.gemma4_routing = Gemma4Routing()
    if facts.passes_mask(module):
        helper, helper_module = facts.mask_helper, facts.helper_module(module)

        def padding_mask(num_tokens: int):
            # Looked up per call, as vLLM's routing does: the helper reads the
            # forward context of the batch being run.
            return getattr(helper_module, helper)(num_tokens)

        owner.__dict__[PADDING_MASK_ATTRIBUTE] = padding_mask
        # The fused router's op reads the same mask at run time (padding.py).
        from vllm_gemma4_router.routing.padding import set_padding_source

        set_padding_source(padding_mask)


def _route(owner, gating_output, topk):
    # Plain attributes: constants for Dynamo. Unfused layers never try a claim; a
    # claimed routing is already masked (the fused op reads the same source).
    if getattr(owner, FUSED_FEEDS_ATTRIBUTE, False):
        from vllm_gemma4_router.fused_router.handover import claim_fused_routing

        claimed = claim_fused_routing(gating_output, topk, owner.per_expert_scale)
        if claimed is not None:
            return claimed
    # Only layers whose release passes a padding mask ask vLLM for one.
    padding_mask = owner.__dict__.get(PADDING_MASK_ATTRIBUTE)
    is_padding = None if padding_mask is None else padding_mask(gating_output.shape[0])
    return getattr(owner, OP_ATTRIBUTE)(gating_output, topk, owner.per_expert_scale, is_padding)


@dataclass(frozen=True)
class _FusedPlan:
    """What a router's fused forward needs beyond its own parameters (fixed at construction).

    ``per_expert_scale`` reads the owner's Parameter at call time (not a copy).
    ``loaded_gate_weight`` is ``proj.weight`` as built and loaded: on the CPU,
    vLLM's linear method prepacks the gate after loading and replaces
    ``proj.weight`` with an empty placeholder; the fused op still needs [E, H].
    """

    eps: float
    topk: int
    per_expert_scale: Callable[[], torch.Tensor] = field(repr=False)
    loaded_gate_weight: torch.Tensor = field(repr=False)
    #: The gate's name in the static forward context where the router hands the GEMM
    #: to it outside its own kernels' token counts (``fused_or_gate``); else ``None``.
    gate_name: str | None = None


def _unquantized_gate(proj) -> bool:
    """True when ``proj`` is a plain unquantized linear without bias (set at construction)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    quant_method = getattr(proj, "quant_method", None)
    if quant_method is not None and not isinstance(quant_method, UnquantizedLinearMethod):
        return False
    weight = getattr(proj, "weight", None)
    return (
        getattr(proj, "bias", None) is None
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
    )


def _scale_owner(layer, router):
    """The module whose ``per_expert_scale`` the layer's routing reads, or ``None``.

    ``router_method``: the router itself; ``moe_closure``: the sibling ``.moe``.
    Either way it is the module the plugin's routing function belongs to.
    """
    for owner in (router, getattr(layer, "moe", None)):
        if (
            owner is not None
            and isinstance(getattr(owner, "per_expert_scale", None), torch.nn.Parameter)
            and hasattr(owner, OP_ATTRIBUTE)
        ):
            return owner
    return None


def _link_fused_router(layer, router, config) -> None:
    """Give ``router`` its fused-router op and, when it can use it, a plan."""
    from vllm_gemma4_router.fused_router.checks import fused_router_supports
    from vllm_gemma4_router.integration.custom_ops import Gemma4FusedRouter

    op = Gemma4FusedRouter()
    router.gemma4_fused_router = op
    owner = _scale_owner(layer, router)
    eps = getattr(getattr(router, "norm", None), "variance_epsilon", None)
    topk = getattr(config, "top_k_experts", None)
    proj = getattr(router, "proj", None)
    num_experts = getattr(config, "num_experts", None)
    if not (
        op.active
        and owner is not None
        and isinstance(eps, float)
        and isinstance(topk, int)
        and isinstance(num_experts, int)
        and fused_router_supports(num_experts, topk)
        and proj is not None
        and _unquantized_gate(proj)
    ):
        return
    plan = _FusedPlan(
        eps, topk, lambda: owner.per_expert_scale, proj.weight, _register_split_gate(router)
    )
    router.__dict__[FUSED_PLAN_ATTRIBUTE] = plan
    owner.__dict__[FUSED_FEEDS_ATTRIBUTE] = True


def _register_split_gate(router) -> str | None:
    """Register ``router.proj`` for ``fused_or_gate`` where this platform and release's
    policy splits the token counts, the release's router computes its operand as the
    plugin knows (``ROUTER_OPERAND_SOURCE``) and the gate is vLLM's fp32-out gate with
    the token-count tier the split was measured with (``gate_has_token_count_tier``:
    without it the gate is cuBLAS at every count, and the split's small counts would
    lose); its name, or ``None`` (the fused router's own kernels at every count)."""
    import vllm
    from vllm.config import get_current_vllm_config

    from vllm_gemma4_router.integration.custom_ops import running_platform_family
    from vllm_gemma4_router.integration.fused_or_gate import register_gate
    from vllm_gemma4_router.integration.op_policy import fused_router_own_tokens

    gate = router.proj
    own_tokens = fused_router_own_tokens(running_platform_family(), vllm.__version__)
    if (
        own_tokens is None
        or not getattr(type(router), OPERAND_KNOWN_ATTRIBUTE, False)
        or not isinstance(getattr(gate, "prefix", None), str)
        or not gate_has_token_count_tier(gate)
    ):
        return None
    context = get_current_vllm_config().compilation_config.static_forward_context
    name = register_gate(gate, context, own_tokens)
    _warm_token_count_tiers(gate)
    return name


#: vLLM's ``Gemma4Router.forward`` (every release 0.19.0 - 0.34.0): the gate's operand
#: is the three lines before ``self.proj``. The split router repeats them; a release
#: whose forward differs keeps the fused router's own kernels at every count.
ROUTER_OPERAND_SOURCE = """
def forward(self, x):
    x = self.norm(x)
    x = x * self.root_size.to(x.dtype)
    x = x * self.scale.to(x.dtype)
    router_logits, _ = self.proj(x)
    return router_logits
"""
# On Gemma4Router (the class): True when its forward is ROUTER_OPERAND_SOURCE.
OPERAND_KNOWN_ATTRIBUTE = "_gemma4_operand_known"


def _body_dump(function: ast.FunctionDef) -> list[str]:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return [ast.dump(statement) for statement in body]


def router_operand_known(forward: Callable) -> bool:
    """Whether ``forward`` (a release's ``Gemma4Router.forward``) computes its gate's
    operand and logits exactly as ``ROUTER_OPERAND_SOURCE`` (statement by statement)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(forward)))
    except (OSError, TypeError, SyntaxError):
        return False
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    return len(found) == 1 and operand_function_known(found[0])


def operand_function_known(function: ast.FunctionDef) -> bool:
    """Whether the parsed ``function`` has ``ROUTER_OPERAND_SOURCE``'s statements."""
    expected = ast.parse(ROUTER_OPERAND_SOURCE).body[0]
    return _body_dump(function) == _body_dump(expected)


def _split_logits(router, plan: _FusedPlan, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The logits of ``fused_or_gate``'s op: the operand computed as vLLM's forward does
    (``ROUTER_OPERAND_SOURCE``), in traced code, so Inductor fuses it as in vLLM's graph."""
    from vllm_gemma4_router.integration.fused_or_gate import fused_router_or_gate

    x_gate = router.norm(x)
    x_gate = x_gate * router.root_size.to(x_gate.dtype)
    x_gate = x_gate * router.scale.to(x_gate.dtype)
    return fused_router_or_gate(
        x, x_gate, router.scale, weight, plan.per_expert_scale(), plan.eps, plan.topk,
        plan.gate_name,
    )  # fmt: skip


def _fused_logits(router, plan: _FusedPlan, x: torch.Tensor) -> torch.Tensor | None:
    """The fused op's logits view ``[T, E]`` fp32 for ``x`` [T, H], or ``None`` when
    this call is unsupported. Metadata checks only (constants for Dynamo)."""
    from vllm_gemma4_router.fused_router.handover import logits_view

    weight = router.proj.weight
    if weight.dim() != 2:  # vLLM's CPU linear method prepacked it (see _FusedPlan)
        weight = plan.loaded_gate_weight
    if (
        x.dim() != 2
        or x.dtype not in FUSED_DTYPES
        or weight.dtype != x.dtype
        or weight.dim() != 2
        or weight.shape[1] != x.shape[1]
    ):
        return None
    if plan.gate_name is not None:
        return _split_logits(router, plan, x, weight)
    packed = router.gemma4_fused_router(
        x, router.scale, weight, plan.per_expert_scale(), plan.eps, plan.topk
    )
    return logits_view(packed, x.shape[0], weight.shape[0])


def _install_fused_router(module: ModuleType) -> None:
    """Patch ``Gemma4Router.forward`` and link routers at decoder-layer construction.

    The decoder layers are found structurally: every class of ``module`` whose
    ``__init__`` builds a ``Gemma4Router`` (``Gemma4DecoderLayer`` in 0.19 - 0.33).
    """
    router_cls = getattr(module, "Gemma4Router", None)
    original_forward = getattr(router_cls, "forward", None)
    if not isinstance(router_cls, type) or not callable(original_forward):
        return

    @functools.wraps(original_forward)
    def forward(self, x):
        plan = getattr(self, FUSED_PLAN_ATTRIBUTE, None)
        if plan is not None:
            logits = _fused_logits(self, plan, x)
            if logits is not None:
                return logits
        return original_forward(self, x)

    router_cls.forward = forward
    setattr(router_cls, OPERAND_KNOWN_ATTRIBUTE, router_operand_known(original_forward))
    for cls in list(vars(module).values()):
        init = getattr(cls, "__init__", None) if isinstance(cls, type) else None
        code = getattr(inspect.unwrap(init), "__code__", None) if callable(init) else None
        if code is None or cls is router_cls or "Gemma4Router" not in code.co_names:
            continue
        _wrap_layer_init(cls, router_cls)


def _wrap_layer_init(layer_cls, router_cls) -> None:
    original_init = layer_cls.__init__
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        router = getattr(self, "router", None)
        if isinstance(router, router_cls):
            bound = signature.bind_partial(self, *args, **kwargs)
            _link_fused_router(self, router, bound.arguments.get("config"))
            _link_gate_tier(router)

    layer_cls.__init__ = __init__


def gate_has_token_count_tier(gate) -> bool:
    """True when ``gate`` is vLLM's ``GateLinear`` (no bias, fp32 out) with a tier this
    release picks by the token count enabled on this GPU (``TOKEN_COUNT_TIER_FLAGS``)."""
    from vllm_gemma4_router.integration.gate_tier import RunTimeTierGate

    return (
        any(cls.__name__ == "GateLinear" for cls in type(gate).__mro__)
        and not isinstance(gate, RunTimeTierGate)
        and getattr(gate, "bias", None) is None
        and getattr(gate, "out_dtype", None) == torch.float32
        and any(getattr(gate, flag, False) is True for flag in TOKEN_COUNT_TIER_FLAGS)
    )


def _link_gate_tier(router) -> None:
    """Route ``router.proj`` through the ``gemma4_gate_tier`` op where the op is on and the
    gate has a token-count tier here; never for a fused router (it replaces the gate)."""
    from vllm.config import get_current_vllm_config

    from vllm_gemma4_router.integration.custom_ops import Gemma4GateTier
    from vllm_gemma4_router.integration.gate_tier import (
        REGISTERED_NAME_SUFFIX,
        run_time_tier_class,
    )

    gate = getattr(router, "proj", None)
    if getattr(router, FUSED_PLAN_ATTRIBUTE, None) is not None or not (
        gate is not None and gate_has_token_count_tier(gate)
    ):
        return
    op = Gemma4GateTier()
    if not op.active:
        return
    context = get_current_vllm_config().compilation_config.static_forward_context
    name = f"{gate.prefix}{REGISTERED_NAME_SUFFIX}"
    if name in context:
        # vLLM's own rule for the layers it registers: the op could find the wrong gate.
        raise ValueError(f"Duplicate layer name: {name}")
    _warm_token_count_tiers(gate)
    gate.__class__ = run_time_tier_class(type(gate))
    gate.gemma4_gate_tier = op
    gate.gate_tier_name = name
    context[name] = gate


def _gate_shape(gate) -> tuple[int, int]:
    """``(K, N)``: the gate's input and output sizes. From its weight when that is [N, K];
    else (vLLM's CPU linear method prepacks the weight and leaves an empty placeholder)
    from ``LinearBase``'s ``input_size`` and ``output_size``."""
    weight = getattr(gate, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1]), int(weight.shape[0])
    return int(gate.input_size), int(gate.output_size)


def _warm_token_count_tiers(gate) -> None:
    """Compile the gate shape's ``ll_bf16_gemm`` kernels now, at model construction.

    Through the op, each CUDA-graph capture size runs its own tier, and vLLM captures
    without eager warm-up runs: a kernel not compiled by then would compile during
    capture. vLLM 0.26 warms only other models' shapes. Once per shape and process;
    a failure logs one line and leaves the compile to the first call.
    """
    if getattr(gate, "allow_ll_bf16_gemm", False) is not True:
        return
    hidden, num_experts = _gate_shape(gate)
    if (hidden, num_experts) in _warmed_gate_shapes:
        return
    _warmed_gate_shapes.add((hidden, num_experts))
    max_tokens = getattr(type(gate), "LL_BF16_MAX_TOKENS", LL_BF16_DEFAULT_MAX_TOKENS)
    try:
        kernel = getattr(importlib.import_module(LL_BF16_MODULE), "ll_bf16_gemm_kernel", None)
        warmup = getattr(kernel, "warmup", None)
        if warmup is None:
            raise AttributeError(f"{LL_BF16_MODULE}.ll_bf16_gemm_kernel.warmup")
        warmup(shapes=((hidden, num_experts),), m_values=range(1, max_tokens + 1))
    except (ImportError, AttributeError, RuntimeError, ValueError) as exc:
        logger.warning(gate_tier_warmup_failed_line(hidden, num_experts, repr(exc)))


def _gate_tier_summary(module: ModuleType, model) -> str:
    from vllm_gemma4_router.integration.custom_ops import Gemma4GateTier
    from vllm_gemma4_router.integration.gate_tier import RunTimeTierGate

    gates = [getattr(m, "proj", None) for m in _routers(module, model)]
    tiered = sum(isinstance(g, RunTimeTierGate) for g in gates)
    eligible = tiered + sum(g is not None and gate_has_token_count_tier(g) for g in gates)
    return gate_tier_line(
        tiered, eligible, len(gates), Gemma4GateTier.enabled(), Gemma4GateTier.asked()
    )


def _routers(module: ModuleType, model) -> list:
    """The ``Gemma4Router`` modules (of ``module``'s class) in ``model``."""
    router_cls = getattr(module, "Gemma4Router", None)
    return [m for m in model.modules() if router_cls is not None and isinstance(m, router_cls)]


def _fused_router_summary(module: ModuleType, model) -> str:
    from vllm_gemma4_router.integration.custom_ops import Gemma4FusedRouter

    routers = _routers(module, model)
    fused = sum(getattr(r, FUSED_PLAN_ATTRIBUTE, None) is not None for r in routers)
    return fused_router_line(
        fused, len(routers), Gemma4FusedRouter.enabled(), Gemma4FusedRouter.asked()
    )


def _fused_router_split_summary(module: ModuleType, model) -> str | None:
    """The split line (``fused_router_split_line``) where some routers split, else None."""
    from vllm_gemma4_router.integration.fused_or_gate import OWN_TOKENS_ATTRIBUTE

    routers = _routers(module, model)
    fused = [getattr(r, FUSED_PLAN_ATTRIBUTE, None) for r in routers]
    split = [r for r, plan in zip(routers, fused, strict=True) if plan and plan.gate_name]
    if not split:
        return None
    own_tokens = getattr(split[0].proj, OWN_TOKENS_ATTRIBUTE)
    return fused_router_split_line(len(split), sum(p is not None for p in fused), own_tokens)


def _is_router_method_layout(module: ModuleType) -> bool:
    router = getattr(module, "Gemma4Router", None)
    method = getattr(router, "routing_function", None)
    if not callable(method):
        return False
    try:
        params = list(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return False
    return params == _ROUTING_SIGNATURE


def _handover_signature(target) -> inspect.Signature | None:
    """``target``'s signature if it takes a ``custom_routing_function``, else ``None``."""
    if not callable(target):
        return None
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    return signature if _HANDOVER_PARAMETER in signature.parameters else None


def closure_handover(module: ModuleType) -> str | None:
    """Name of the global that ``Gemma4MoE.__init__`` hands its routing closure to.

    Structural, not a version list: ``__init__`` must define a nested
    ``routing_function`` and read a module global that accepts a
    ``custom_routing_function`` argument (``FusedMoE`` in vLLM 0.19 - 0.26,
    ``FusedMoEFactory`` in 0.27 - 0.30). ``None`` when there is no such pair.
    """
    moe = getattr(module, "Gemma4MoE", None)
    init = getattr(moe, "__init__", None)
    # Unwrapped: after install, __init__ is our wrapper around vLLM's.
    init_code = getattr(inspect.unwrap(init), "__code__", None) if callable(init) else None
    if init_code is None or not any(
        getattr(const, "co_name", None) == "routing_function" for const in init_code.co_consts
    ):
        return None
    namespace = vars(module)
    candidates = [
        name
        for name in init_code.co_names
        if name in namespace and _handover_signature(namespace[name]) is not None
    ]
    # Two candidates would leave it open which one gets the closure.
    return candidates[0] if len(candidates) == 1 else None


def _is_moe_closure_layout(module: ModuleType) -> bool:
    return closure_handover(module) is not None


def _install_router_method(module: ModuleType, facts: RoutingFacts) -> None:
    router_cls = module.Gemma4Router
    original_init = router_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        _attach_op(self, module, facts)

    def routing_function(self, hidden_states, gating_output, topk, renormalize):
        """Gemma 4 routing through the ``gemma4_routing`` op (vllm-gemma4-router)."""
        return _route(self, gating_output, topk)

    router_cls.__init__ = __init__
    router_cls.routing_function = routing_function


def _install_moe_closure(module: ModuleType, facts: RoutingFacts) -> None:
    moe_cls = module.Gemma4MoE
    original_init = moe_cls.__init__
    handover_name = closure_handover(module)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        # The closure is born and handed over inside __init__, so swap it at
        # that hand-over: the fused MoE, and everything it passes the callable
        # on to, only ever sees ours.
        handover = getattr(module, handover_name)
        signature = _handover_signature(handover)

        def routing_function(hidden_states, gating_output, topk, renormalize):
            return _route(self, gating_output, topk)

        def handover_with_our_routing(*hargs, **hkwargs):
            bound = signature.bind(*hargs, **hkwargs)
            if bound.arguments.get(_HANDOVER_PARAMETER) is not None:
                bound.arguments[_HANDOVER_PARAMETER] = routing_function
            return handover(*bound.args, **bound.kwargs)

        setattr(module, handover_name, handover_with_our_routing)
        try:
            original_init(self, *args, **kwargs)
        finally:
            setattr(module, handover_name, handover)
        _attach_op(self, module, facts)

    moe_cls.__init__ = __init__


_LAYOUTS = (
    ("router_method", _is_router_method_layout, _install_router_method),
    ("moe_closure", _is_moe_closure_layout, _install_moe_closure),
)


def _log_if_routing_is_simulated() -> None:
    strategy = os.environ.get(ROUTING_SIMULATION_ENV, "")
    if strategy:
        logger.warning(simulated_routing_line(ROUTING_SIMULATION_ENV, strategy))


def detect_layout(module: ModuleType) -> str | None:
    """Name of the Gemma4 routing layout ``module`` has, or ``None`` if unknown."""
    for name, matches, _ in _LAYOUTS:
        if matches(module):
            return name
    return None


def install(module: ModuleType) -> str | None:
    """Route every Gemma4 MoE layer that ``module`` builds through ``gemma4_routing``.

    Idempotent. Returns the layout name, or ``None`` (after one warning, with
    nothing changed) when the module's Gemma4 code is not recognised.
    """
    if hasattr(module, _INSTALLED_FLAG):
        return getattr(module, _INSTALLED_FLAG)
    module_name = str(getattr(module, "__name__", module))
    for name, matches, apply in _LAYOUTS:
        if matches(module):
            try:
                facts = read_routing_facts(module, name)
            except RoutingRefused as refusal:
                setattr(module, _INSTALLED_FLAG, None)
                logger.warning(refused_line(module_name, str(refusal)))
                return None
            apply(module, facts)
            setattr(module, INSTALLED_FACTS_ATTRIBUTE, facts)
            if _in_tree_routing_op(module) is not None:
                # Registers the plugin's op over vLLM's own (register_oot) now, before
                # any router is built: every layer's ``router.routing`` is then ours.
                import vllm_gemma4_router.integration.custom_ops  # noqa: F401
            _install_fused_router(module)
            _wrap_model_init(module)
            setattr(module, _INSTALLED_FLAG, name)
            logger.info(install_line(name))
            _log_if_routing_is_simulated()
            return name
    setattr(module, _INSTALLED_FLAG, None)
    logger.warning(unrecognised_line(module_name))
    return None


#: Where vLLM keeps Gemma 4, relative to the ``vllm`` package: the file the plugin
#: patches, and the new model tree (``vllm/models/``, from 0.34) it does not know.
GEMMA4_FILE = ("model_executor", "models", "gemma4.py")
NEW_MODEL_TREE = "models"


def where_gemma4_lives(vllm_root: str | os.PathLike[str]) -> str | None:
    """Why nothing will be patched in the vLLM package at ``vllm_root``, or ``None``.

    Reads the file tree only (no import): Gemma 4 code under vLLM's new model
    tree, or no ``model_executor/models/gemma4.py``.
    """
    root = os.fspath(vllm_root)
    new_tree = os.path.join(root, NEW_MODEL_TREE)
    if os.path.isdir(new_tree):
        moved = sorted(n for n in os.listdir(new_tree) if n.startswith("gemma4"))
        if moved:
            return (
                f"this vLLM has Gemma 4 code in its new model tree "
                f"(vllm/{NEW_MODEL_TREE}/{moved[0]}), which the plugin does not patch"
            )
    if not os.path.isfile(os.path.join(root, *GEMMA4_FILE)):
        return f"this vLLM has no vllm/{'/'.join(GEMMA4_FILE)}; Gemma 4 routing stays vLLM's"
    return None


@functools.cache
def check_gemma4_location() -> str | None:
    """Log one warning when the installed vLLM's Gemma 4 is not where the plugin patches it.

    Returns the reason, or ``None`` when ``gemma4.py`` is in place. File checks
    only: cheap, and imports nothing of vLLM's model code. Once per process.
    """
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        return None
    reason = where_gemma4_lives(roots[0])
    if reason is not None:
        logger.warning(nothing_patched_line(reason))
    return reason
