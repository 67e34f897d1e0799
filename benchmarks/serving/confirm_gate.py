"""Confirm the gate (issue #34, item 2): which gate GEMM kernel vLLM's Gemma 4 runs.

vLLM 0.26's ``GateLinear.forward`` picks ``ll_bf16_gemm`` (CuTe DSL, tier 1) with
a plain Python ``if x.shape[0] <= 16``. Gemma 4 calls its gate inside the
``@support_torch_compile`` model, which Dynamo traces once at the largest token
count with its shape guards dropped, so compiled Gemma 4 is expected to run
tier 5 (``torch.mm(..., out_dtype=float32)``, cuBLAS) at every batch size, and
only ``--enforce-eager`` to reach ``ll_bf16``. This driver checks that on a GPU:
for each mode it serves the model (``compiled``: vLLM's default compilation and
CUDA graphs; ``eager``: ``--enforce-eager``) with ``TORCH_LOGS=+dynamic``,
warms it up at each batch size (the eager server's first steps compile the
CuTe-DSL dot-product kernels), traces decode steps at batch 1 and 16 with
vLLM's torch profiler (``/start_profile`` ... ``/stop_profile``), stops it, and
writes what it found::

    python -m benchmarks.serving.confirm_gate --model-profile gemma-4-26b-a4b \\
        --mode compiled --out OUT            # one H200; ci/device_e2e.sh confirm_gate
    python -m benchmarks.serving.confirm_gate --mode both --budget-s 540 ...
    python -m benchmarks.serving.confirm_gate --model-profile tiny --mode compiled \\
        --batches 1,4 --where gemma4.py ...  # CPU smoke: the flow and the log scan

Output under ``--out``: per mode ``<mode>/server.log[.gz]``, ``<mode>/traces/``
(the trace, dropped if larger than ``--keep-trace-mb``), then
``confirm_gate.json`` (per mode: the server command, timings, the guard lines,
the engine's compile settings from its log, and per trace
:func:`benchmarks.serving.trace_summary.gate_report`) and ``confirm_gate.md``,
whose table (mode, batch, GateLinear tier, gate kernel names, gate time per
decode step) is also printed last. Exit status: 0 if every mode ran and named a
gate GEMM at every batch, 1 otherwise (2: bad arguments).

The guard lines are the server log's lines that name ``--where`` (default
``gate_linear``, GateLinear's file) and look like symbolic-shape reasoning
(``eval``, ``guard``, ``evaluate_expr``, ...): with ``TORCH_LOGS=+dynamic`` Dynamo
logs the guard the ``if`` adds. vLLM 0.32's CPU engine, serving the tiny model
compiled with tier 1 forced eligible (an ad-hoc ``sitecustomize``, not in the
repository), logged ``eval s72 > 16 [guard added] and x.shape[0] <=
self.LL_BF16_MAX_TOKENS  # vllm/model_executor/layers/fused_moe/router/
gate_linear.py:234 in forward (_dynamo/variables/tensor.py:2606 in
evaluate_expr)``, once. An eager server traces nothing, so it has none.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import tables
from benchmarks.serving import ab_common, trace_summary

MODES: dict[str, tuple[str, ...]] = {"compiled": (), "eager": ("--enforce-eager",)}
# The device's serving flags (ci/device_e2e.sh): short prompts, 16 sequences at most.
GPU_SERVER_ARGS = (
    "--attention-backend",
    "TRITON_ATTN",
    "--no-enable-prefix-caching",
    "--max-model-len",
    "1024",
    "--max-num-seqs",
    "16",
)
# TORCH_LOGS=+dynamic: Dynamo's symbolic-shape log at DEBUG (every guard, with
# the source line that added it). The custom scopes let trace_summary tell the
# model's forward from the sampler.
SERVER_ENV = {"TORCH_LOGS": "+dynamic", "VLLM_CUSTOM_SCOPES_FOR_PROFILING": "1"}
_GUARD_WORDS = re.compile(
    r"guard|\beval\b|evaluate_expr|runtime_assert|size_oblivious|statically_known|"
    r"produce_guards|specializ"
)
# vLLM prefixes its child processes' lines: "(EngineCore pid=123) ".
_PROCESS_PREFIX = re.compile(r"^\([A-Za-z_]+(?: pid=\d+)?\)\s*")
# torch's glog-style header, after the worker's rank prefix:
# "[rank0]:I1205 21:01:55.682000 25452 torch/fx/experimental/symbolic_shapes.py:8081] [0/0] ".
_TORCH_HEADER = re.compile(r"^(?:\[rank\d+\]:)?[IWEDV]\d{4} [\d:.]+ \d+ \S+:\d+\] (?:\[[^\]]*\] )?")
# vLLM's own header: "INFO 12-06 10:01:30 [kernel_warmup.py:65] ".
_VLLM_HEADER = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) [\d-]+ [\d:.]+ \[[^\]]*\] ")
_LL_BF16_LINE = re.compile(r"ll_bf16|CuTeDSL|cutedsl|cute_dsl", re.IGNORECASE)
_COMPILE_LINE = re.compile(
    r"Compiling a graph for compile range|torch\.compile .*took|Graph capturing finished|"
    r"init engine .* took|Dynamo bytecode transform time"
)


def message_of(line: str) -> str:
    """A log line without vLLM's process prefix and vLLM's or torch's log header."""
    line = _PROCESS_PREFIX.sub("", line.strip())
    return _VLLM_HEADER.sub("", _TORCH_HEADER.sub("", line, count=1), count=1)


def guard_lines(text: str, where: str = "gate_linear") -> list[dict[str, Any]]:
    """The log's symbolic-shape lines that name ``where``: each distinct message once
    (first full line, count), in order of first appearance."""
    seen: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if where not in line or not _GUARD_WORDS.search(line):
            continue
        message = message_of(line)
        if message in seen:
            seen[message]["count"] += 1
        else:
            seen[message] = {"message": message, "line": line.strip(), "count": 1}
    return list(seen.values())


def _first_lines(text: str, pattern: re.Pattern[str], limit: int) -> list[str]:
    found: Counter[str] = Counter()
    order: list[str] = []
    for line in text.splitlines():
        # Dynamo's own lines quote source (``allow_ll_bf16_gemm``): they are guard lines.
        if pattern.search(line) and "symbolic_shapes" not in line:
            message = message_of(line)[:300]
            if message not in found:
                order.append(message)
            found[message] += 1
    return [
        f"{message} (x{found[message]})" if found[message] > 1 else message for message in order
    ][:limit]


def log_facts(text: str, where: str = "gate_linear") -> dict[str, Any]:
    """What the server log says about the gate: guard lines at ``where``, how many
    guards Dynamo added in all, whether the +dynamic log was on at all, the engine's
    compile settings and its ll_bf16 / CuTe-DSL and compile-time lines."""
    engine = {}
    for line in text.splitlines():
        if "Initializing a V1 LLM engine" in line:
            for key, regex in (
                ("enforce_eager", r"enforce_eager=(\w+)"),
                ("compilation_mode", r"'mode': <CompilationMode\.(\w+)"),
                ("cudagraph_mode", r"'cudagraph_mode': <CUDAGraphMode\.(\w+)"),
                ("cudagraph_capture_sizes", r"'cudagraph_capture_sizes': (\[[^\]]*\])"),
                ("dynamic_shapes_config", r"'dynamic_shapes_config': (\{[^}]*\})"),
            ):
                match = re.search(regex, line)
                if match:
                    engine[key] = match.group(1)
            break
    return {
        "where": where,
        "guard_lines": guard_lines(text, where),
        "guards_added_total": text.count("[guard added]"),
        "symbolic_shapes_lines": sum(1 for line in text.splitlines() if "symbolic_shapes" in line),
        "engine": engine,
        "ll_bf16_lines": _first_lines(text, _LL_BF16_LINE, 12),
        "compile_lines": _first_lines(text, _COMPILE_LINE, 12),
    }


def profiler_config(trace_dir: Path) -> str:
    """``--profiler-config``: the torch profiler, started and stopped by the endpoints
    (no delay, no step limit), no stacks, no front-end trace, no summary table."""
    return json.dumps(
        {
            "profiler": "torch",
            "torch_profiler_dir": str(Path(trace_dir).resolve()),
            "torch_profiler_with_stack": False,
            "torch_profiler_dump_cuda_time_total": False,
            "ignore_frontend": True,
        }
    )


def post_route(
    base_url: str, route: str, body: Mapping[str, Any] | None, timeout_s: float
) -> bytes:
    """POST ``body`` (JSON, or nothing) to ``base_url + route``; the raw reply."""
    request = urllib.request.Request(
        f"{base_url}{route}",
        data=json.dumps(body).encode() if body is not None else b"",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read()


Post = Callable[[str, str, "Mapping[str, Any] | None", float], bytes]


def generate(post: Post, base_url: str, model_name: str, batch: int, tokens: int) -> None:
    """One completion request of ``batch`` prompts, each exactly ``tokens`` tokens long
    (EOS ignored): vLLM decodes them together, a decode batch of ``batch``."""
    body = {
        "model": model_name,
        "prompt": [f"Request {i} of {batch}: the gate, first." for i in range(batch)],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    reply = json.loads(post(base_url, "/v1/completions", body, 600.0))
    if len(reply.get("choices", [])) != batch:
        raise RuntimeError(f"asked for {batch} completions, got {len(reply.get('choices', []))}")


def wait_for_traces(trace_dir: Path, timeout_s: float, poll_s: float = 2.0) -> list[Path]:
    """The traces in ``trace_dir`` once at least one exists and none grew since the last
    look (or what is there at timeout)."""
    deadline = time.monotonic() + timeout_s
    sizes: dict[Path, int] = {}
    while True:
        found = trace_summary.find_traces(trace_dir) if trace_dir.exists() else []
        now = {path: path.stat().st_size for path in found}
        if found and now == sizes:
            return found
        if time.monotonic() > deadline:
            return found
        sizes = now
        time.sleep(poll_s)


def _gzip_if_large(path: Path, limit_bytes: int) -> Path:
    if not path.exists() or path.stat().st_size <= limit_bytes:
        return path
    target = path.with_name(path.name + ".gz")
    with path.open("rb") as source, gzip.open(target, "wb") as sink:
        shutil.copyfileobj(source, sink)
    path.unlink()
    return target


def run_mode(
    mode: str,
    *,
    model: str,
    server_args: Sequence[str],
    out_dir: Path,
    batches: Sequence[int],
    warm_tokens: int,
    warm_rounds: int,
    profile_tokens: int,
    where: str,
    make_server: Callable[..., Any],
    post: Post = post_route,
    startup_timeout_s: float = 600.0,
    trace_wait_s: float = 180.0,
    keep_trace_mb: float = 6.0,
) -> dict[str, Any]:
    """Serve, warm up, trace, stop and summarize one mode; the mode's record.

    ``make_server(model, extra_args=..., env=..., log_path=..., startup_timeout_s=...)``
    returns a started-on-enter context manager with ``base_url``, ``model_name``,
    ``command``, ``startup_s`` and ``log_text()`` (:class:`VllmServer`, or a fake).
    """
    mode_dir = out_dir / mode
    trace_dir = mode_dir / "traces"
    trace_dir.mkdir(parents=True, exist_ok=True)
    extra = [*server_args, *MODES[mode], "--profiler-config", profiler_config(trace_dir)]
    server = make_server(
        model,
        extra_args=extra,
        env=dict(SERVER_ENV),
        log_path=mode_dir / "server.log",
        startup_timeout_s=startup_timeout_s,
    )
    record: dict[str, Any] = {
        "mode": mode,
        "command": ab_common.shell_join(server.command, SERVER_ENV),
        "batches": list(batches),
        "warm": {"rounds": warm_rounds, "tokens": warm_tokens},
        "profile_tokens": profile_tokens,
        "timings_s": {},
        "traces": {},
    }
    clock = time.monotonic()
    try:
        with server:
            record["timings_s"]["start"] = server.startup_s
            clock = time.monotonic()
            for _ in range(warm_rounds):
                for batch in batches:
                    generate(post, server.base_url, server.model_name, batch, warm_tokens)
            record["timings_s"]["warm"] = time.monotonic() - clock
            clock = time.monotonic()
            post(server.base_url, "/start_profile", None, 120.0)
            try:
                for batch in batches:
                    generate(post, server.base_url, server.model_name, batch, profile_tokens)
            finally:
                post(server.base_url, "/stop_profile", None, 600.0)
            traces = wait_for_traces(trace_dir, trace_wait_s)
            record["timings_s"]["profile"] = time.monotonic() - clock
            clock = time.monotonic()
    except Exception as error:  # noqa: BLE001 - the record says what failed; the next mode runs
        record["error"] = f"{type(error).__name__}: {error}"
        traces = trace_summary.find_traces(trace_dir)
    record["timings_s"]["stop"] = time.monotonic() - clock
    log = server.log_text()
    record["log"] = log_facts(log, where)
    record["server_log"] = str(_gzip_if_large(mode_dir / "server.log", 2 << 20))
    for path in traces:
        try:
            record["traces"][path.name] = trace_summary.gate_report(trace_summary.load_trace(path))
        except (OSError, ValueError) as error:
            record["traces"][path.name] = {"error": str(error), "batches": {}}
        size_mb = path.stat().st_size / 2**20
        if size_mb > keep_trace_mb:
            path.unlink()
            record.setdefault("dropped_traces", []).append(f"{path.name} ({size_mb:.1f} MB)")
    if not traces and "error" not in record:
        record["error"] = f"no trace in {trace_dir} after {trace_wait_s:.0f} s"
    return record


def problems_of(record: Mapping[str, Any]) -> list[str]:
    """Why a mode's record does not answer the question (empty: it does)."""
    mode = record["mode"]
    if record.get("skipped"):
        return [f"{mode}: skipped ({record['skipped']})"]
    problems = [f"{mode}: {record['error']}"] if record.get("error") else []
    reports = [r for r in record.get("traces", {}).values() if r.get("batches")]
    if not reports and not record.get("error"):
        problems.append(f"{mode}: no decode steps in the trace")
    for batch in record.get("batches", []):
        rows = [r["batches"].get(str(batch)) for r in reports]
        if reports and not any(row and row["gate_kernels"] for row in rows):
            problems.append(f"{mode}: no gate GEMM found at batch {batch}")
    return problems


def table_rows(records: Sequence[Mapping[str, Any]], name_width: int = 70) -> list[list[str]]:
    """One row per mode and batch: tier, gate kernels, time and launches per decode step."""

    def short(name: str) -> str:
        return name if len(name) <= name_width else name[: name_width - 3] + "..."

    rows = []
    for record in records:
        guards = len(record.get("log", {}).get("guard_lines", []))
        reports = [r for r in record.get("traces", {}).values() if r.get("batches")]
        for batch in record.get("batches", []):
            found = [r["batches"][str(batch)] for r in reports if str(batch) in r["batches"]]
            if not found:
                note = record.get("skipped") or record.get("error") or "no decode step"
                rows.append([record["mode"], str(batch), f"- ({note[:60]})", "-", "-", "-", "-"])
                continue
            row = found[0]
            names = "; ".join(short(k["name"]) for k in row["gate_kernels"]) or "-"
            rows.append(
                [
                    record["mode"],
                    str(batch),
                    row["tier"],
                    names,
                    f"{row['gate_us_per_step_median']:.2f}",
                    f"{row['gate_launches_per_step']:.1f}",
                    f"{row['decode_steps']} steps, {guards} guard line(s)",
                ]
            )
    return rows


def render(records: Sequence[Mapping[str, Any]]) -> str:
    """``confirm_gate.md``: the table, then per mode its guard lines, settings and reports."""
    head = ["mode", "batch", "GateLinear tier", "gate kernel(s)", "gate us / step"]
    head += ["launches / step", "evidence"]
    align = ["left", "right", "left", "left", "right", "right", "left"]
    parts = [
        "# Confirm the gate (issue #34 item 2)",
        "",
        tables.markdown_table(head, table_rows(records), align),
    ]
    for record in records:
        parts += ["", f"## {record['mode']}", ""]
        if record.get("skipped"):
            parts.append(f"Skipped: {record['skipped']}")
            continue
        parts.append(f"Server: `{record['command']}`")
        timings = ", ".join(f"{k} {v:.0f} s" for k, v in record["timings_s"].items() if v)
        parts += ["", f"Timings: {timings or '-'}"]
        if record.get("error"):
            parts += ["", f"Error: {record['error']}"]
        log = record.get("log", {})
        parts += [
            "",
            f"Engine: {json.dumps(log.get('engine', {}))}",
            "",
            f"Guard lines naming `{log.get('where')}` ({log.get('guards_added_total', 0)} "
            f"'[guard added]' lines in all, {log.get('symbolic_shapes_lines', 0)} "
            "symbolic_shapes lines):",
            "",
        ]
        parts += [f"- `{g['message'][:400]}` (x{g['count']})" for g in log.get("guard_lines", [])]
        if not log.get("guard_lines"):
            parts.append("- none")
        for key, label in (("ll_bf16_lines", "ll_bf16 / CuTe-DSL"), ("compile_lines", "compile")):
            if log.get(key):
                parts += ["", f"Log lines, {label}:", ""] + [f"- `{x}`" for x in log[key]]
        for name, report in record.get("traces", {}).items():
            if report.get("error"):
                parts += ["", f"Trace {name}: {report['error']}"]
            else:
                parts += ["", trace_summary.format_gate_report(report, title=f"trace {name}")]
        if record.get("dropped_traces"):
            parts += ["", f"Traces not kept (size): {', '.join(record['dropped_traces'])}"]
    return "\n".join(parts) + "\n"


def _batches(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"batches must be positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.confirm_gate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=[*MODES, "both"], default="compiled")
    parser.add_argument(
        "--model-profile",
        default="gemma-4-26b-a4b",
        help="vllm_gemma4_router.harness.model_profiles name (tiny: the CPU smoke)",
    )
    parser.add_argument(
        "--server-args",
        default=None,
        help="replace the default server flags (GPU: TRITON_ATTN, max-model-len 1024, "
        "max-num-seqs 16; tiny: the CPU flags of ab_common); the profile's own stay",
    )
    parser.add_argument("--plugin", action="store_true", help="load this plugin (default: in-tree)")
    parser.add_argument(
        "--custom-op",
        action="append",
        default=[],
        help="a custom_ops entry for the server, e.g. +gemma4_gate_tier (repeatable)",
    )
    parser.add_argument("--batches", type=_batches, default=[1, 16], help="e.g. 1,16")
    parser.add_argument("--warm-rounds", type=int, default=2, help="warm-up requests per batch")
    parser.add_argument("--warm-tokens", type=int, default=16, help="tokens per warm-up request")
    parser.add_argument(
        "--profile-tokens", type=int, default=24, help="tokens per profiled request (decode steps)"
    )
    parser.add_argument("--where", default="gate_linear", help="guard lines must name this")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="with --mode both: skip the eager mode if less than --eager-estimate-s is left",
    )
    parser.add_argument("--eager-estimate-s", type=float, default=240.0)
    parser.add_argument("--keep-trace-mb", type=float, default=6.0)
    parser.add_argument("--python", default=sys.executable, help="the server's interpreter")
    parser.add_argument(
        "--kernel-source",
        action="append",
        default=[],
        metavar="NAME",
        help="copy the generated source of this Inductor kernel (as the trace names it, "
        "e.g. triton_red_fused_add_mul_rms_norm_2) from the compile caches to "
        "OUT/kernel_sources/ after the runs (repeatable)",
    )
    return parser


def cache_roots() -> list[Path]:
    """Where a served model's generated kernels land: vLLM's cache root
    (``VLLM_CACHE_ROOT``, default ``~/.cache/vllm``) and Inductor's
    (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_<user>``)."""
    import getpass

    vllm_root = os.environ.get("VLLM_CACHE_ROOT") or str(Path.home() / ".cache" / "vllm")
    inductor = (
        os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{getpass.getuser()}"
    )
    return [Path(vllm_root), Path(inductor)]


def copy_kernel_sources(
    names: Sequence[str], roots: Sequence[Path], out_dir: Path, per_name: int = 4
) -> dict[str, list[str]]:
    """Copy the ``.py`` files under ``roots`` that define each kernel of ``names``
    (``def NAME(``) to ``out_dir/NAME-<n>.py``, at most ``per_name`` distinct
    contents each; per name, the source paths copied."""
    found: dict[str, list[str]] = {name: [] for name in names}
    seen: dict[str, set[str]] = {name: set() for name in names}
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for name in names:
                if f"def {name}(" not in text or len(found[name]) >= per_name:
                    continue
                if text in seen[name]:
                    continue
                seen[name].add(text)
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / f"{name}-{len(found[name])}.py").write_text(text)
                found[name].append(str(path))
    return found


def main(argv: Sequence[str] | None = None, make_server: Callable[..., Any] | None = None) -> int:
    """Run the mode(s), write ``confirm_gate.{json,md}``, print the table last."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    from vllm_gemma4_router.harness import model_profiles

    model = str(model_profiles.build_profile(args.model_profile, progress=print))
    if args.server_args is not None:
        defaults = ab_common.split_args(args.server_args)
    elif args.model_profile == "tiny":
        defaults = list(ab_common.TINY_SERVER_ARGS)
    else:
        defaults = list(GPU_SERVER_ARGS)
    server_args = [*model_profiles.server_args(args.model_profile), *defaults]
    if args.custom_op:
        server_args += ["--compilation-config", json.dumps({"custom_ops": args.custom_op})]
    if make_server is None:
        from vllm_gemma4_router.harness.serving import VllmServer

        def make_server(model: str, **kwargs: Any) -> VllmServer:
            return VllmServer(
                model, plugin=args.plugin, python=args.python, progress=True, **kwargs
            )

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    records: list[dict[str, Any]] = []
    for index, mode in enumerate(modes):
        left = args.budget_s - (time.monotonic() - started)
        if index and left < args.eager_estimate_s:
            records.append(
                {
                    "mode": mode,
                    "batches": args.batches,
                    "skipped": f"{left:.0f} s of --budget-s left, {mode} needs about "
                    f"{args.eager_estimate_s:.0f} s: run --mode {mode} as its own call",
                }
            )
            continue
        print(f"== {mode}: serving {model}", flush=True)
        record = run_mode(
            mode,
            model=model,
            server_args=server_args,
            out_dir=out_dir,
            batches=args.batches,
            warm_tokens=args.warm_tokens,
            warm_rounds=args.warm_rounds,
            profile_tokens=args.profile_tokens,
            where=args.where,
            make_server=make_server,
            startup_timeout_s=max(60.0, min(600.0, left - 90.0)),
            keep_trace_mb=args.keep_trace_mb,
        )
        record["model_profile"] = args.model_profile
        record["plugin"] = args.plugin
        record["custom_ops"] = args.custom_op
        records.append(record)
        print(f"== {mode}: {record.get('error') or 'done'}", flush=True)
    if args.kernel_source:
        sources = copy_kernel_sources(args.kernel_source, cache_roots(), out_dir / "kernel_sources")
        for name, paths in sources.items():
            print(f"kernel source {name}: {len(paths)} file(s) {paths}", flush=True)
        for record in records:
            record["kernel_sources"] = sources
    (out_dir / "confirm_gate.json").write_text(json.dumps(records, indent=2) + "\n")
    text = render(records)
    (out_dir / "confirm_gate.md").write_text(text)
    problems = [problem for record in records for problem in problems_of(record)]
    for record in records:
        for guard in record.get("log", {}).get("guard_lines", [])[:6]:
            print(f"{record['mode']} guard: {guard['message'][:300]}")
    print(text.split("\n## ")[0])
    for problem in problems:
        print(f"WARNING: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
