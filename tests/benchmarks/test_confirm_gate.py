"""Issue #34 item 2 ("confirm the gate"), without a GPU: trace_summary's gate report on
synthetic torch-profiler traces of both GateLinear tiers, and benchmarks.serving.confirm_gate's
log scan and whole flow with a fake server.

The traces mimic vLLM's worker traces: step annotations
(``execute_context_0(0)_generation_<batch>(<batch>)``), the forward phase, CPU launches
tied to GPU kernels by ``correlation``. The compiled trace launches the forward as one
CUDA graph and its gate is cuBLAS (nvjet split-K + splitKreduce, tier 5); the eager
trace launches each kernel itself and its gate is the CuTe-DSL ``ll_bf16_gemm``: the
dot-product kernel at batch 1, the split-K one at batch 16 (tier 1). Kernel names of
the CuTe-DSL kernels follow the DSL's mangling (``kernel_cutlass_<fn>_<str(self)
stripped>_...``); expected numbers come from the generated kernels.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import statistics
from pathlib import Path

import pytest

from benchmarks.serving import confirm_gate, trace_summary

DOTPROD = (
    "kernel_cutlass_kernel_vllmmodel_executorkernelslinearcute_dsl_ll_bf16_dotprodLLBf16Dotprod"
    "_object_at__1_8_4_128_4_2816_0_2816_11_0_0_0_2_0_0"
)
SPLITK = (
    "kernel_cutlass_kernel_vllmmodel_executorkernelslinearcute_dsl_ll_bf16_splitkLLBf16SplitK"
    "_object_at__tensorptrbf16gmemalign16o1611_0"
)
NVJET = "nvjet_sm90_tss_64x16_64x16_2x1_v_bz_splitK_TNT"
REDUCE = "void cublasLt::splitKreduce_kernel<32, 16, int, float, float, float, float, false>(...)"
NORM_COMPILED = "triton_red_fused_add_moe_forward_mul_rms_norm_0"
NORM_EAGER = "void vllm::rms_norm_kernel<c10::BFloat16, 8, 3>(...)"
MUL = "void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<...>>(...)"
ROUTING = "_gemma4_routing_kernel"
SAMPLER_TOPK = "void at::native::sbtopk::gatherTopK<float, unsigned int, 1, false>(...)"


@pytest.fixture
def rng() -> random.Random:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return random.Random(seed)


def gate_names(mode: str, batch: int, gate: str | None = None) -> list[str]:
    """The gate GEMM's kernels of one layer."""
    if gate is not None:
        return [gate] if gate else []
    if mode == "compiled":
        return [NVJET, REDUCE]
    return [DOTPROD if batch <= 4 else SPLITK]


def build_trace(
    mode: str,
    rng: random.Random,
    *,
    batches=(1, 16),
    steps_per_batch: int = 5,
    layers: int = 3,
    gate: str | None = None,
    between: str | None = None,
):
    """A trace and, per batch, the expected gate time per decode step (one list entry
    per step). ``gate`` replaces the gate kernel's name ('' drops it); ``between`` puts
    one more kernel between the norm and the gate."""
    events: list[dict] = []
    state = {"corr": 100, "cpu": 0.0, "gpu": 0.0}

    def annotation(name, start, end):
        events.append(
            {"ph": "X", "cat": "user_annotation", "name": name, "pid": 7, "tid": 7}
            | {"ts": start, "dur": end - start}
        )

    def launch(name, category="cuda_runtime"):
        state["corr"] += 1
        state["cpu"] += 2.0
        events.append(
            {"ph": "X", "cat": category, "name": name, "pid": 7, "tid": 7, "ts": state["cpu"]}
            | {"dur": 1.0, "args": {"correlation": state["corr"]}}
        )
        return state["corr"]

    def kernel(name, corr):
        dur = rng.uniform(1.0, 30.0)
        events.append(
            {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": state["gpu"]}
            | {"dur": dur, "args": {"correlation": corr, "stream": 7}}
        )
        state["gpu"] += dur + 0.5
        return dur

    expected: dict[int, list[float]] = {}
    schedule = [("prefill", batches[0])]
    for batch in batches:
        schedule += [("decode", batch)] * steps_per_batch
    for kind, batch in schedule:
        start = state["cpu"]
        state["cpu"] += 3.0
        forward_start = state["cpu"]
        graph = launch("cudaGraphLaunch") if mode == "compiled" else None
        gate_us = 0.0
        for _ in range(layers):

            def run(name, driver=False, graph=graph):
                corr = graph or launch(
                    "cuLaunchKernelEx" if driver else "cudaLaunchKernel",
                    "cuda_driver" if driver else "cuda_runtime",
                )
                return kernel(name, corr)

            run("kernel_unified_attention_2d")
            run(NORM_COMPILED if mode == "compiled" else NORM_EAGER)
            if mode == "eager":
                run(MUL)
            if between:
                run(between)
            for name in gate_names(mode, batch, gate):
                gate_us += run(name, driver=name.startswith("kernel_cutlass"))
            run(ROUTING)
            run("fused_moe_kernel")
        state["cpu"] += 5.0
        annotation("gpu_model_runner: forward", forward_start, state["cpu"])
        sample_start = state["cpu"] + 1.0
        kernel(SAMPLER_TOPK, launch("cudaLaunchKernel"))
        state["cpu"] += 5.0
        annotation("gpu_model_runner: sample", sample_start, state["cpu"])
        name = (
            f"execute_context_{batch}({batch * 12})_generation_0(0)"
            if kind == "prefill"
            else f"execute_context_0(0)_generation_{batch}({batch})"
        )
        annotation(name, start, state["cpu"])
        state["cpu"] += 20.0
        if kind == "decode":
            expected.setdefault(batch, []).append(gate_us)
    rng.shuffle(events)
    return {"traceEvents": events}, expected


@pytest.mark.parametrize(
    ("name", "label"),
    [
        (DOTPROD, trace_summary.LL_DOTPROD),
        (SPLITK, trace_summary.LL_SPLITK),
        ("kernel_cutlass_kernel_LLBf16Dotprod_object_at__2_0", trace_summary.LL_DOTPROD),
        ("kernel_cutlass_kernel_somethingElse_object_at__0", trace_summary.CUTE_OTHER),
        (NVJET, trace_summary.CUBLAS_GEMM),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64", trace_summary.CUBLAS_GEMM),
        (
            "void gemv2T_kernel_val<int, int, float, float, float, float, 128>",
            "cuBLAS/CUTLASS GEMM",
        ),
        (REDUCE, trace_summary.CUBLAS_REDUCE),
        ("triton_tem_fused_mm_0", trace_summary.TRITON_GEMM),
        (NORM_COMPILED, trace_summary.FUSED_NORM),
        (NORM_EAGER, trace_summary.FUSED_NORM),
        (ROUTING, "routing: vLLM in-tree"),
        ("gemma4_routing_kernel", "routing: ours"),
        ("gemma4_fused_router_kernel", "routing: fused router"),
        ("fused_moe_kernel", None),
        (MUL, None),
    ],
)
def test_gate_class(name, label):
    assert trace_summary.gate_class(name) == label


@pytest.mark.parametrize("mode", ["compiled", "eager"])
def test_gate_report_names_the_tier_per_batch(mode, rng):
    trace, expected = build_trace(mode, rng)
    report = trace_summary.gate_report(trace)
    assert report["decode_steps"] == 10 and report["steps"] == 11
    assert sorted(report["batches"]) == ["1", "16"]
    for batch in (1, 16):
        row = report["batches"][str(batch)]
        names = gate_names(mode, batch)
        assert {k["name"] for k in row["gate_kernels"]} == set(names)
        want = trace_summary.TIER_CUBLAS if mode == "compiled" else trace_summary.TIER_LL_BF16
        assert row["tier"] == want
        assert row["decode_steps"] == 5
        assert row["gate_launches_per_step"] == 3 * len(names)
        assert row["routing_calls_per_step"] == 3
        assert row["gate_us_per_step_median"] == pytest.approx(statistics.median(expected[batch]))
        for kernel in row["gate_kernels"]:
            assert kernel["launches_per_step"] == 3
        # The class table counts every kernel of the class in the step.
        classes = row["classes"]
        assert classes["routing: vLLM in-tree"]["launches_per_step"] == 3
        assert classes[trace_summary.FUSED_NORM]["launches_per_step"] == 3
        # The sampler's top-k is outside the forward: not routing, not counted.
        assert SAMPLER_TOPK not in json.dumps(classes)
        near = row["near_gate"]
        assert [n["name"] for n in near if n["offset"] == 0] == [ROUTING]
        assert [n["name"] for n in near if n["offset"] == -1] == [names[-1]]
    if mode == "eager":
        assert report["batches"]["1"]["gate_kernels"][0]["class"] == trace_summary.LL_DOTPROD
        assert report["batches"]["16"]["gate_kernels"][0]["class"] == trace_summary.LL_SPLITK
        assert report["batches"]["1"]["unmatched_near_gate"][MUL] == 5 * 3
    text = trace_summary.format_gate_report(report, title=mode)
    assert ("tier 1: ll_bf16_gemm" in text) == (mode == "eager")
    assert ("tier 5: cuBLAS" in text) == (mode == "compiled")
    assert "UNMATCHED" in text  # attention / moe kernels around the routing call


def test_gate_report_unknown_and_missing_gates(rng):
    odd = "kernel_cutlass_kernel_RouterGemmNew_object_at__0"
    trace, _ = build_trace("eager", rng, gate=odd)
    row = trace_summary.gate_report(trace)["batches"]["1"]
    assert row["tier"].startswith("a CuTe-DSL kernel not named like ll_bf16")
    assert row["gate_kernels"][0]["name"] == odd
    # An unknown kernel between the norm and the gate is listed, and the gate still found.
    trace, expected = build_trace("eager", rng, between="my_new_cast_kernel")
    row = trace_summary.gate_report(trace)["batches"]["16"]
    assert row["tier"] == trace_summary.TIER_LL_BF16
    assert row["unmatched_near_gate"]["my_new_cast_kernel"] == 15
    # No GEMM before routing at all: said so, and the CLI fails.
    trace, _ = build_trace("eager", rng, gate="")
    report = trace_summary.gate_report(trace)
    assert report["batches"]["1"]["tier"] == "no gate GEMM found before the routing calls"
    assert report["batches"]["1"]["gate_kernels"] == []


def test_cli_gate_flag(rng, tmp_path, capsys):
    trace, _ = build_trace("compiled", rng)
    path = tmp_path / "rank0.1.pt.trace.json.gz"
    path.write_bytes(gzip.compress(json.dumps(trace).encode()))
    out = tmp_path / "gate.json"
    assert trace_summary.main([str(tmp_path), "--gate", "--json", str(out)]) == 0
    assert "tier 5: cuBLAS" in capsys.readouterr().out
    saved = json.loads(out.read_text())[str(path)]
    assert saved["batches"]["16"]["gate_kernels"][0]["name"] in (NVJET, REDUCE)
    trace, _ = build_trace("compiled", rng, gate="")
    path.write_bytes(gzip.compress(json.dumps(trace).encode()))
    assert trace_summary.main([str(path), "--gate"]) == 1


# -- the server log -------------------------------------------------------------

GATE = "/root/vllm026/site/vllm/model_executor/layers/fused_moe/router/gate_linear.py"
ENGINE = "(EngineCore pid=11) "
SHAPES = ENGINE + "I1206 10:00:21.200000 11 torch/fx/experimental/symbolic_shapes.py:7100] [0/0] "
GUARD = f"eval 16 < s72 [guard added] (at {GATE}:212 in forward), for more info run with "
LOG_LINES = [
    "(APIServer pid=10) INFO 12-06 10:00:00 [api_server.py:1] vLLM API server version 0.26.0",
    ENGINE + "INFO 12-06 10:00:05 [core.py:114] Initializing a V1 LLM engine (v0.26.0) with "
    "config: model='/m', enforce_eager=False, compilation_config={'mode': "
    "<CompilationMode.VLLM_COMPILE: 3>, 'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: "
    "(2, 1)>, 'cudagraph_capture_sizes': [1, 2, 4, 8, 16], 'dynamic_shapes_config': {'type': "
    "<DynamicShapesType.BACKED: 'backed'>, 'evaluate_guards': False}}",
    SHAPES + "create_symbol s72 = 8192 for L['input_ids'].size()[0]",
    SHAPES + GUARD + 'TORCHDYNAMO_EXTENDED_DEBUG_GUARDS="s72"',
    SHAPES.replace("21.2", "21.3") + GUARD + 'TORCHDYNAMO_EXTENDED_DEBUG_GUARDS="s72"',
    SHAPES + "eval Ne(s72, 1) [guard added] (at /x/vllm/model_executor/models/gemma4.py:700)",
    # torch 2.11+ as vLLM's CPU engine logged it: the rank prefix, the source line, then
    # "# <file>:<line> in <function>".
    ENGINE + "[rank0]:I1205 21:01:55.682000 25452 torch/fx/experimental/symbolic_shapes.py:8081] "
    "[0/0] eval [guard suppressed] 16 < s72 [guard added] if self.allow_ll_bf16_gemm and "
    "x.shape[0] <= 16 and x.dtype == torch.bfloat16:  # vllm/model_executor/layers/fused_moe/"
    "router/gate_linear.py:212 in forward (_dynamo/variables/tensor.py:1249 in evaluate_expr)",
    SHAPES.replace("I1206", "V1206") + f"eval 32 < s72 == True [statically known] at {GATE}:220",
    ENGINE + f"INFO 12-06 10:00:22 [gate_linear.py:1] imported from {GATE}",
    ENGINE + "INFO 12-06 10:01:00 [backends.py:393] Compiling a graph for compile range "
    "(1, 8192) takes 35.72 s",
    ENGINE + "INFO 12-06 10:01:30 [kernel_warmup.py:65] Warming up ll_bf16 router GEMM kernels.",
    ENGINE + "INFO 12-06 10:01:31 [gpu_model_runner.py:6656] Graph capturing finished in 7 secs",
]
LOG = "\n".join(LOG_LINES) + "\n"


def test_guard_lines_and_log_facts():
    lines = confirm_gate.guard_lines(LOG)
    assert [line["count"] for line in lines] == [2, 1, 1]
    assert lines[0]["message"].startswith("eval 16 < s72 [guard added] (at ")
    assert "gate_linear.py:212" in lines[0]["message"]
    assert lines[1]["message"].startswith("eval [guard suppressed] 16 < s72 [guard added] if ")
    assert lines[1]["line"].startswith("(EngineCore pid=11) [rank0]:I1205")
    assert "statically known" in lines[2]["message"]
    # The import line names the file but is not symbolic-shape reasoning.
    assert all("imported" not in line["line"] for line in lines)
    facts = confirm_gate.log_facts(LOG)
    assert facts["guards_added_total"] == 4
    assert facts["symbolic_shapes_lines"] == 6
    assert facts["engine"] == {
        "enforce_eager": "False",
        "compilation_mode": "VLLM_COMPILE",
        "cudagraph_mode": "FULL_AND_PIECEWISE",
        "cudagraph_capture_sizes": "[1, 2, 4, 8, 16]",
        "dynamic_shapes_config": "{'type': <DynamicShapesType.BACKED: 'backed'>, "
        "'evaluate_guards': False}",
    }
    assert facts["ll_bf16_lines"] == ["Warming up ll_bf16 router GEMM kernels."]
    assert len(facts["compile_lines"]) == 2
    assert confirm_gate.guard_lines(LOG, where="gemma4.py")[0]["message"].startswith("eval Ne(")
    assert confirm_gate.guard_lines("", where="gate_linear") == []


# -- the whole flow, with a fake server -------------------------------------------


class FakeServer:
    """Stands in for VllmServer: writes its log; its 'worker' writes a trace on
    /stop_profile (compiled or eager, by --enforce-eager)."""

    started: list[FakeServer] = []

    def __init__(self, model, *, extra_args, env, log_path, startup_timeout_s, fail=False):
        self.model_name = model
        self.extra_args = list(extra_args)
        self.env = env
        self.log_path = Path(log_path)
        self.base_url = f"fake://{len(FakeServer.started)}"
        self.command = ["python", "-m", "vllm.entrypoints.openai.api_server", *self.extra_args]
        self.startup_s = 12.0
        self.fail = fail
        self.requests: list[tuple[str, dict | None]] = []
        config = json.loads(self.extra_args[self.extra_args.index("--profiler-config") + 1])
        self.trace_dir = Path(config["torch_profiler_dir"])
        self.eager = "--enforce-eager" in self.extra_args

    def __enter__(self):
        if self.fail:
            raise RuntimeError("vLLM server exited with code 1 while starting")
        FakeServer.started.append(self)
        self.log_path.write_text("" if self.eager else LOG)
        return self

    def __exit__(self, *exc):
        return None

    def log_text(self):
        return self.log_path.read_text() if self.log_path.exists() else ""

    def post(self, route, body, rng):
        self.requests.append((route, body))
        if route == "/v1/completions":
            return json.dumps({"choices": [{"text": "x"}] * len(body["prompt"])}).encode()
        if route == "/stop_profile":
            trace, _ = build_trace("eager" if self.eager else "compiled", rng)
            name = "dp0_pp0_tp0_dcp0_ep0_rank0.1.pt.trace.json.gz"
            (self.trace_dir / name).write_bytes(gzip.compress(json.dumps(trace).encode()))
        return b""


def _fake(rng, fail_modes=()):
    servers: dict[str, FakeServer] = {}

    def make_server(model, **kwargs):
        server = FakeServer(
            model,
            **kwargs,
            fail="--enforce-eager" in kwargs["extra_args"] and "eager" in fail_modes,
        )
        servers[server.base_url] = server
        return server

    def post(base_url, route, body, timeout_s):
        return servers[base_url].post(route, body, rng)

    return make_server, post, servers


def test_run_mode_flow(rng, tmp_path):
    make_server, post, servers = _fake(rng)
    record = confirm_gate.run_mode(
        "eager",
        model="/m",
        server_args=["--max-model-len", "1024"],
        out_dir=tmp_path,
        batches=[1, 16],
        warm_tokens=4,
        warm_rounds=2,
        profile_tokens=8,
        where="gate_linear",
        make_server=make_server,
        post=post,
        trace_wait_s=5,
    )
    (server,) = servers.values()
    routes = [route for route, _ in server.requests]
    # Warm-up first (2 rounds x 2 batches), then the profiled window, one request per batch.
    assert routes == ["/v1/completions"] * 4 + ["/start_profile"] + ["/v1/completions"] * 2 + [
        "/stop_profile"
    ]
    bodies = [body for route, body in server.requests if route == "/v1/completions"]
    assert [len(b["prompt"]) for b in bodies] == [1, 16, 1, 16, 1, 16]
    assert all(b["ignore_eos"] and b["min_tokens"] == b["max_tokens"] for b in bodies)
    assert [b["max_tokens"] for b in bodies][-2:] == [8, 8]
    assert "--enforce-eager" in server.extra_args
    assert server.env["TORCH_LOGS"] == "+dynamic"
    assert "error" not in record
    (report,) = record["traces"].values()
    assert report["batches"]["1"]["tier"] == trace_summary.TIER_LL_BF16
    assert record["log"]["guard_lines"] == []
    assert confirm_gate.problems_of(record) == []
    assert (tmp_path / "eager" / "traces").is_dir()


def test_main_both_modes_table_and_budget(rng, tmp_path, capsys, monkeypatch):
    make_server, post, _ = _fake(rng)
    monkeypatch.setattr(confirm_gate, "post_route", post)
    monkeypatch.setattr(
        "vllm_gemma4_router.harness.model_profiles.build_profile", lambda name, progress: "/m"
    )
    out = tmp_path / "out"
    argv = ["--mode", "both", "--out", str(out), "--warm-rounds", "1"]
    # run_mode's default post is bound at definition: pass the fake through main's server.
    monkeypatch.setattr(
        confirm_gate,
        "run_mode",
        lambda mode, **kw: _real_run_mode(mode, post=post, trace_wait_s=5, **kw),
    )
    assert confirm_gate.main(argv, make_server=make_server) == 0
    printed = capsys.readouterr().out
    records = json.loads((out / "confirm_gate.json").read_text())
    assert [r["mode"] for r in records] == ["compiled", "eager"]
    table = printed.split("# Confirm the gate")[1]
    assert "tier 5: cuBLAS" in table and "tier 1: ll_bf16_gemm" in table
    assert "compiled guard: eval 16 < s72 [guard added]" in printed
    md = (out / "confirm_gate.md").read_text()
    assert "gate_linear.py:212" in md and "## eager" in md
    compiled = records[0]
    assert "--max-num-seqs" in compiled["command"] and "TORCH_LOGS=+dynamic" in compiled["command"]
    assert "--load-format dummy" in compiled["command"]  # the profile's own flags stay
    # Too little budget left for the second mode: skipped, said so, exit 1.
    out2 = tmp_path / "out2"
    argv = ["--mode", "both", "--out", str(out2), "--budget-s", "100"]
    assert confirm_gate.main(argv, make_server=make_server) == 1
    records = json.loads((out2 / "confirm_gate.json").read_text())
    assert records[1]["skipped"].endswith("run --mode eager as its own call")
    assert "WARNING: eager: skipped" in capsys.readouterr().err


def test_a_failed_start_is_recorded(rng, tmp_path):
    make_server, post, _ = _fake(rng, fail_modes=("eager",))
    record = _real_run_mode(
        "eager",
        model="/m",
        server_args=[],
        out_dir=tmp_path,
        batches=[1, 16],
        warm_tokens=2,
        warm_rounds=1,
        profile_tokens=2,
        where="gate_linear",
        make_server=make_server,
        post=post,
        trace_wait_s=1,
    )
    assert record["error"].startswith("RuntimeError: vLLM server exited")
    assert confirm_gate.problems_of(record) == [f"eager: {record['error']}"]
    rows = confirm_gate.table_rows([record])
    assert rows[0][2].startswith("- (RuntimeError")


_real_run_mode = confirm_gate.run_mode


def test_kernel_sources_are_copied_once_per_distinct_content(tmp_path):
    vllm_root, inductor = tmp_path / "vllm", tmp_path / "inductor"
    kernel = "triton_red_fused_add_mul_rms_norm_2"
    body = f"@triton.jit\ndef {kernel}(in_ptr0, out_ptr0, xnumel, r0_numel):\n    pass\n"
    (vllm_root / "a" / "b").mkdir(parents=True)
    (vllm_root / "a" / "b" / "c1.py").write_text(body)
    (vllm_root / "a" / "copy.py").write_text(body)  # same content: copied once
    (inductor / "x").mkdir(parents=True)
    (inductor / "x" / "c2.py").write_text(body.replace("pass", "return"))
    (inductor / "x" / "other.py").write_text(f"def {kernel}_3(x):\n    pass\n")  # another kernel
    out = tmp_path / "out"
    found = confirm_gate.copy_kernel_sources([kernel, "absent"], [vllm_root, inductor], out)
    assert len(found[kernel]) == 2 and found["absent"] == []
    assert sorted(p.name for p in out.iterdir()) == [f"{kernel}-0.py", f"{kernel}-1.py"]
    assert (out / f"{kernel}-1.py").read_text().endswith("return\n")


def test_cache_roots_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "v"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "i"))
    assert confirm_gate.cache_roots() == [tmp_path / "v", tmp_path / "i"]
    monkeypatch.delenv("VLLM_CACHE_ROOT")
    assert confirm_gate.cache_roots()[0].parts[-2:] == (".cache", "vllm")
