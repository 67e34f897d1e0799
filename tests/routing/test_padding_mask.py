"""The optional padding mask (``is_padding``) of the routing: reference, Triton kernel
(under TRITON_INTERPRET=1 on the CPU) and the torch.library op.

A padding row (mask non-zero / True) gets ids -1 (no expert; vLLM's dispatch and
experts skip id -1) and weights 0.0; every other row is bit for bit what the
call without a mask gives, and matches the fp64 oracle. The mask is read on the
device: rewriting its buffer in place between calls (what a CUDA-graph replay
does) changes the result. The CUDA-graph test itself is tests/routing/test_gpu_padding.py.
"""

from __future__ import annotations

import pytest
import torch
from oracle import assert_ids_valid, assert_matches_oracle

import vllm_gemma4_router.routing.launcher as routing_launcher
from benchmarks.tuning.compile_specs import compile_spec
from vllm_gemma4_router import gemma4_routing_reference, gemma4_routing_triton
from vllm_gemma4_router.fused_router.reference import gemma4_fused_router_reference
from vllm_gemma4_router.routing import torch_library  # noqa: F401  (registers the op)
from vllm_gemma4_router.routing.launch_table import LaunchConfig

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MASKS = ["all", "none", "every_other", "random"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _op(logits, topk, scale=None, *, is_padding=None):
    return torch.ops.vllm_gemma4_router.routing(logits, topk, scale, is_padding)


ROUTERS = {
    "reference": gemma4_routing_reference,
    "triton": gemma4_routing_triton,
    "op": _op,
}


def _mask(kind: str, num_tokens: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "all":
        return torch.ones(num_tokens, dtype=torch.bool)
    if kind == "none":
        return torch.zeros(num_tokens, dtype=torch.bool)
    if kind == "every_other":
        return torch.arange(num_tokens) % 2 == 1
    return torch.rand(num_tokens, generator=gen) < 0.4


def _logits(num_tokens: int, num_experts: int, dtype: torch.dtype, gen) -> torch.Tensor:
    """Random rows (never zeros); every third row on a coarse grid, so exact ties occur."""
    logits = torch.randn(num_tokens, num_experts, generator=gen) * 2
    logits[::3] = (logits[::3] * 2).round() / 2 + 0.25
    return logits.to(dtype)


def _scale(num_experts: int, gen) -> torch.Tensor:
    return torch.rand(num_experts, generator=gen) + 0.5


def _check(weights, ids, logits, topk, scale, mask, unmasked=None, rtol=2e-6):
    """Padding rows -1 / 0.0; the others the oracle's and (if given) the unmasked call's bits."""
    weights, ids, mask = weights.cpu(), ids.cpu(), mask.cpu().bool()
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert tuple(weights.shape) == tuple(ids.shape) == (logits.shape[0], topk)
    assert bool((ids[mask] == -1).all()), "padding rows must have ids -1"
    assert bool((weights[mask] == 0.0).all()), "padding rows must have weights 0"
    keep = ~mask
    assert_ids_valid(ids[keep], logits.shape[1])
    assert_matches_oracle(
        weights[keep], ids[keep], logits.cpu()[keep], topk, scale, rtol=rtol, atol=1e-7
    )
    if unmasked is not None:
        ref_w, ref_ids = (t.cpu() for t in unmasked)
        assert torch.equal(ids[keep], ref_ids[keep])
        assert torch.equal(weights[keep], ref_w[keep])


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("num_tokens", [0, 1, 7, 4097])
def test_reference_padding_rows(dtype, kind, num_tokens, gen):
    logits = _logits(num_tokens, 128, dtype, gen)
    scale = _scale(128, gen)
    mask = _mask(kind, num_tokens, gen)
    weights, ids = gemma4_routing_reference(logits, 8, scale, is_padding=mask)
    _check(weights, ids, logits, 8, scale, mask, gemma4_routing_reference(logits, 8, scale))


def test_fused_router_reference_passes_the_mask_to_the_routing(gen):
    hidden = torch.randn(9, 64, generator=gen)
    norm_scale = torch.rand(64, generator=gen) + 0.5
    gate = torch.randn(32, 64, generator=gen)
    expert_scale = _scale(32, gen)
    mask = _mask("random", 9, gen)
    args = (hidden, norm_scale, gate, expert_scale, 1e-6, 4)
    logits, weights, ids = gemma4_fused_router_reference(*args, is_padding=mask)
    plain = gemma4_fused_router_reference(*args)
    assert torch.equal(logits, plain[0])  # the logits of every row, padding or not
    _check(weights, ids, logits, 4, expert_scale, mask, plain[1:])
    with pytest.raises(ValueError, match="is_padding"):
        gemma4_fused_router_reference(*args, is_padding=mask[:5])


# --------------------------------------------------------------------------- Triton


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("num_tokens", [0, 1, 7])
def test_triton_padding_rows(dtype, kind, num_tokens, gen):
    logits = _logits(num_tokens, 128, dtype, gen).to(DEVICE)
    scale = _scale(128, gen)
    mask = _mask(kind, num_tokens, gen).to(DEVICE)
    unmasked = gemma4_routing_triton(logits, 8, scale.to(DEVICE))
    weights, ids = gemma4_routing_triton(logits, 8, scale.to(DEVICE), is_padding=mask)
    _check(weights, ids, logits, 8, scale, mask, unmasked)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("register_picks", [True, False])
def test_triton_padding_rows_large_batch(dtype, register_picks, gen):
    # T=4097 in large tiles under the interpreter (1024 tokens a program: its cost is
    # per program; a GPU compile of that tile would take minutes, so a GPU runs 8), the
    # last program partial; masked and unmasked launches of one shape.
    logits = _logits(4097, 128, dtype, gen).to(DEVICE)
    scale = _scale(128, gen)
    mask = _mask("random", 4097, gen).to(DEVICE)
    config = LaunchConfig(1024 if DEVICE == "cpu" else 8, 4, register_picks=register_picks)
    outputs = []
    for is_padding in (None, mask):
        weights = torch.full((4097, 8), float("nan"), device=DEVICE)
        ids = torch.full((4097, 8), 7, dtype=torch.int32, device=DEVICE)
        routing_launcher.launch(
            logits, 8, scale.to(DEVICE), weights, ids, config, is_padding=is_padding
        )
        outputs.append((weights, ids))
    _check(*outputs[1], logits, 8, scale, mask, outputs[0])


VARIANTS = [
    # (LaunchConfig fields, tokens per program, per_expert_scale dtype)
    (dict(register_picks=True), 1, None),
    (dict(register_picks=False), 1, torch.bfloat16),
    (dict(register_picks=True), 4, torch.bfloat16),
    (dict(register_picks=False), 4, None),
    (dict(row_groups=4), 4, torch.float32),
    (dict(fp32_select="exact"), 4, torch.bfloat16),
    (dict(fp32_select="checked_rows", row_groups=4), 4, torch.float32),
    (dict(scale_pick="in_row", values_by_reduction=True), 4, torch.float32),
    (dict(scale_pick="per_pick"), 4, torch.float32),
]


@pytest.mark.parametrize(
    ("variant", "tokens_per_program", "scale_dtype"),
    VARIANTS,
    ids=[
        "-".join([*(f"{k}={x}" for k, x in v.items()), f"t{t}", str(d)[6:]]) for v, t, d in VARIANTS
    ],
)
def test_every_kernel_variant_masks_the_same_rows(variant, tokens_per_program, scale_dtype, gen):
    # Register and memory picks, pieces, exact and checked fp32 selection, every scale
    # pick: padding rows -1 / 0, the other rows the bits of the unmasked launch.
    logits = _logits(13, 128, torch.float32, gen)
    logits[3] = float("nan")  # a garbage padding row must not matter
    logits[4, ::2] = float("inf")
    mask = torch.zeros(13, dtype=torch.bool)
    mask[[0, 3, 4, 8, 12]] = True
    scale = None if scale_dtype is None else _scale(128, gen).to(scale_dtype)
    config = LaunchConfig(tokens_per_program, 1, **variant)
    outputs = []
    for is_padding in (None, mask.to(DEVICE)):
        weights = torch.full((13, 8), float("nan"), device=DEVICE)
        ids = torch.full((13, 8), 7, dtype=torch.int32, device=DEVICE)
        routing_launcher.launch(
            logits.to(DEVICE),
            8,
            None if scale is None else scale.to(DEVICE),
            weights,
            ids,
            config,
            is_padding=is_padding,
        )
        outputs.append((weights, ids))
    _check(*outputs[1], logits, 8, scale, mask, outputs[0])


def test_bool_and_uint8_masks_agree(gen):
    logits = _logits(7, 64, torch.bfloat16, gen).to(DEVICE)
    mask = _mask("random", 7, gen)
    mask[0], mask[1] = True, False
    as_bytes = mask.to(torch.uint8) * torch.randint(1, 256, (7,), generator=gen, dtype=torch.uint8)
    for router in ROUTERS.values():
        by_bool = router(logits, 6, None, is_padding=mask.to(DEVICE))
        by_bytes = router(logits, 6, None, is_padding=as_bytes.to(DEVICE))  # any non-zero byte
        assert torch.equal(by_bool[0], by_bytes[0]) and torch.equal(by_bool[1], by_bytes[1])
        _check(*by_bool, logits, 6, None, mask)


def test_preallocated_outputs_get_padding_rows_overwritten(gen):
    logits = _logits(7, 128, torch.float32, gen).to(DEVICE)
    mask = _mask("every_other", 7, gen).to(DEVICE)
    weights = torch.full((7, 8), float("nan"), device=DEVICE)
    ids = torch.full((7, 8), 5, dtype=torch.int32, device=DEVICE)
    out = gemma4_routing_triton(
        logits, 8, None, topk_weights=weights, topk_ids=ids, is_padding=mask
    )
    assert out[0] is weights and out[1] is ids
    _check(weights, ids, logits, 8, None, mask, gemma4_routing_triton(logits, 8, None))


@pytest.mark.parametrize("router", ROUTERS.values(), ids=ROUTERS.keys())
def test_mask_rewritten_in_place_gives_the_new_result(router, gen):
    # The CPU stand-in for a CUDA-graph replay: one mask tensor, its buffer rewritten
    # between calls, and no host-side copy of its values anywhere.
    logits = _logits(7, 128, torch.bfloat16, gen).to(DEVICE)
    scale = _scale(128, gen)
    buffer = torch.ones(7, dtype=torch.bool, device=DEVICE)
    unmasked = router(logits, 8, scale.to(DEVICE))
    first = router(logits, 8, scale.to(DEVICE), is_padding=buffer)
    _check(*first, logits, 8, scale, buffer, unmasked)
    new = _mask("random", 7, gen)
    new[0], new[-1] = False, True
    buffer.copy_(new)
    second = router(logits, 8, scale.to(DEVICE), is_padding=buffer)
    _check(*second, logits, 8, scale, new, unmasked)
    buffer.zero_()
    third = router(logits, 8, scale.to(DEVICE), is_padding=buffer)
    assert torch.equal(third[0], unmasked[0]) and torch.equal(third[1], unmasked[1])


def test_plans_and_compile_specs_distinguish_the_mask():
    config = LaunchConfig(4, 1)
    plain = routing_launcher._config_plan(config, 8, 128, torch.bfloat16, None)
    masked = routing_launcher._config_plan(config, 8, 128, torch.bfloat16, None, True)
    assert plain.constexprs["HAS_PADDING"] is False and masked.constexprs["HAS_PADDING"] is True
    assert plain.class_key != masked.class_key
    spec = compile_spec(0, 8, 128, torch.bfloat16, torch.bfloat16, "cuda")
    assert spec.arg_types["padding_ptr"] == "*i32" and spec.constexprs["HAS_PADDING"] is False
    spec = compile_spec(0, 8, 128, torch.bfloat16, torch.bfloat16, "cuda", has_padding=True)
    assert spec.arg_types["padding_ptr"] == "*u8" and spec.constexprs["HAS_PADDING"] is True
    names = routing_launcher.gemma4_routing_kernel.arg_names
    runtime = [n for n in names if n not in spec.constexprs]
    assert list(spec.arg_types) == runtime  # every runtime parameter, in kernel order


def test_cached_launches_key_every_pointers_alignment(monkeypatch, gen):
    # fast_launch with the kernel's five tensors: a mask 1 byte off 16-byte alignment is a
    # new launch class (Triton specialises on it), the same alignment a cache hit that
    # passes all five raw pointers.
    from triton.runtime import driver

    from vllm_gemma4_router.routing import compiled_launches

    class Compiled:
        function = packed_metadata = None

        def __init__(self):
            self.runs = []

        def run(self, *args):
            self.runs.append(args)

    class Jit:
        arg_names = ("a", "b", "c", "d", "e", "T", "S", "K")

        def __init__(self):
            self.compiled = []

        def __getitem__(self, grid):
            def launch(*args, **constexprs):
                self.compiled.append(Compiled())
                return self.compiled[-1]

            return launch

    class Driver:
        def get_current_stream(self, device_index):
            return 0

    monkeypatch.setattr(compiled_launches, "_launcher_api_present", lambda: True)
    monkeypatch.setattr(driver, "_active", Driver())
    jit = Jit()
    launches = compiled_launches.CompiledLaunches(jit)
    tensors = [torch.empty(64) for _ in range(4)]
    masks = torch.zeros(64, dtype=torch.uint8)
    for mask in (masks[:17], masks[16:33], masks[1:18]):
        launches.launch(1, 0, (*tensors, mask), (17, 1), {"K": 8}, "key")
    assert (len(jit.compiled), launches.hits) == (2, 1)
    [run] = jit.compiled[0].runs
    assert run[9:] == (*(t.data_ptr() for t in tensors), masks[16:33].data_ptr(), 17, 1, 8)


# --------------------------------------------------------------------------- torch.library op


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("num_tokens", [0, 1, 7])
def test_op_padding_rows(dtype, kind, num_tokens, gen):
    logits = _logits(num_tokens, 64, dtype, gen).to(DEVICE)
    scale = _scale(64, gen)
    mask = _mask(kind, num_tokens, gen).to(DEVICE)
    unmasked = _op(logits, 4, scale.to(DEVICE))
    weights, ids = _op(logits, 4, scale.to(DEVICE), is_padding=mask)
    _check(weights, ids, logits, 4, scale, mask, unmasked)


def test_op_schema_takes_the_mask_last_with_default_none():
    schema = torch.ops.vllm_gemma4_router.routing.default._schema
    last = schema.arguments[-1]
    assert last.name == "is_padding" and str(last.type) == "Optional[Tensor]"
    assert last.default_value is None and len(schema.arguments) == 4


def test_op_fake_impl_checks_the_mask():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        logits = torch.empty(11, 64)
        weights, ids = _op(logits, 4, None, is_padding=torch.empty(11, dtype=torch.bool))
        assert weights.shape == (11, 4) and ids.dtype == torch.int32
        with pytest.raises(ValueError, match="is_padding must have 11 elements"):
            _op(logits, 4, None, is_padding=torch.empty(10, dtype=torch.bool))
        with pytest.raises(TypeError, match="is_padding must be bool or uint8"):
            _op(logits, 4, None, is_padding=torch.empty(11, dtype=torch.int32))


def test_op_opcheck_with_a_mask(gen):
    logits = _logits(6, 32, torch.float32, gen).to(DEVICE)
    scale = _scale(32, gen).to(DEVICE)
    mask = _mask("every_other", 6, gen).to(DEVICE)
    torch.library.opcheck(
        torch.ops.vllm_gemma4_router.routing.default,
        (logits, 4, scale, mask),
        test_utils=("test_schema", "test_faketensor"),
    )


def _route_and_use(logits, mask):
    weights, ids = torch.ops.vllm_gemma4_router.routing(logits * 2.0, 8, None, mask)
    return weights * 3.0, ids + 1


def test_fullgraph_compile_with_a_mask_matches_eager(gen):
    torch._dynamo.reset()
    compiled = torch.compile(_route_and_use, fullgraph=True, backend="aot_eager")
    logits = _logits(5, 128, torch.bfloat16, gen).to(DEVICE)
    mask = torch.tensor([True, False, False, True, False], device=DEVICE)
    got, want = compiled(logits, mask), _route_and_use(logits, mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[1].cpu()[mask.cpu()].eq(0).all()  # -1 + 1
    mask.copy_(torch.tensor([False, True, True, False, False]))  # same tensor, new values
    got = compiled(logits, mask)
    assert got[1].cpu()[mask.cpu()].eq(0).all() and got[1].cpu()[0].ge(1).all()


# --------------------------------------------------------------------------- bad masks


def _bad_masks():
    num_tokens = 4
    return [
        ("too short", torch.zeros(num_tokens - 1, dtype=torch.bool), ValueError, "4 elements"),
        ("too long", torch.zeros(num_tokens + 1, dtype=torch.uint8), ValueError, "4 elements"),
        ("int32", torch.zeros(num_tokens, dtype=torch.int32), TypeError, "torch.int32"),
        ("int64", torch.zeros(num_tokens, dtype=torch.int64), TypeError, "torch.int64"),
        ("float", torch.zeros(num_tokens), TypeError, "torch.float32"),
        (
            "meta device",
            torch.zeros(num_tokens, dtype=torch.bool, device="meta"),
            ValueError,
            "meta",
        ),
        ("2-D", torch.zeros(num_tokens, 1, dtype=torch.bool), ValueError, "1-D"),
        ("2-D row", torch.zeros(1, num_tokens, dtype=torch.bool), ValueError, "1-D"),
        ("0-D", torch.tensor(True), ValueError, "1-D"),
        ("strided", torch.zeros(2 * num_tokens, dtype=torch.bool)[::2], ValueError, "contiguous"),
        ("a list", [False] * num_tokens, TypeError, "list"),
    ]


BAD_MASKS = _bad_masks()


@pytest.mark.parametrize("router", ROUTERS.values(), ids=ROUTERS.keys())
@pytest.mark.parametrize(
    ("what", "mask", "error", "fragment"), BAD_MASKS, ids=[m[0] for m in BAD_MASKS]
)
def test_bad_masks_raise_before_launch(router, what, mask, error, fragment, monkeypatch, gen):
    monkeypatch.setattr(routing_launcher, "gemma4_routing_kernel", None)  # a launch would fail
    monkeypatch.setattr(routing_launcher, "_LAUNCHES", None)
    logits = _logits(4, 16, torch.float32, gen)
    if router is _op and not isinstance(mask, torch.Tensor):
        error = RuntimeError  # the op's schema refuses it first, naming the argument too
    with pytest.raises(error) as info:
        router(logits, 2, None, is_padding=mask)
    message = str(info.value)
    assert "is_padding" in message and fragment in message, f"{what}: {message}"


def test_bad_mask_refused_by_launch_too(gen):
    logits = _logits(4, 16, torch.float32, gen)
    weights, ids = torch.empty(4, 2), torch.empty(4, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="is_padding must have 4 elements"):
        routing_launcher.launch(
            logits, 2, None, weights, ids, LaunchConfig(4, 1), is_padding=torch.zeros(3, dtype=bool)
        )


def test_single_row_mask_of_any_stride_is_accepted(gen):
    # One element: its stride says nothing about the layout (and the kernel reads element 0).
    logits = _logits(1, 16, torch.float32, gen).to(DEVICE)
    mask = torch.ones(2, dtype=torch.bool, device=DEVICE)[::2]
    for router in ROUTERS.values():
        weights, ids = router(logits, 2, None, is_padding=mask)
        assert ids.tolist() == [[-1, -1]] and weights.tolist() == [[0.0, 0.0]]
