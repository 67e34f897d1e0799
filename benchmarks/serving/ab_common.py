"""Shared pieces of the serving A/B harnesses (``serve_ab``, ``gsm8k_ab``).

An A/B run serves one model once per arm, one server after the other:
"in-tree" with vLLM's own Gemma4 routing (``VLLM_PLUGINS=""``: no general plugin
loads), "plugin" with this package's routing op, and (serving A/B only)
"native": the plugin with ``custom_ops: ["-gemma4_routing"]``, i.e. the op's
compiled torch reference, which stands for routing before fused kernels. It
runs the same client workload against each and reports them with the relative
change. Any server can instead be one that is already running
(``--base-url-in-tree`` / ``--base-url-plugin`` / ``--base-url-native``).

Pure helpers (percent change, markdown table, argument splitting) are kept free
of I/O so the unit tests can check them with fixture data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.common import tables
from vllm_gemma4_router.harness import model_profiles
from vllm_gemma4_router.log_contract import install_line, parse_log

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "google/gemma-4-26B-A4B-it"
# The serving flags of vLLM PR #39083's end-to-end measurements.
PR_SERVER_ARGS = ("--attention-backend", "TRITON_ATTN", "--no-enable-prefix-caching")
# The tiny model on a CPU host: TRITON_ATTN is a GPU backend; vLLM's CPU worker
# otherwise reserves 92 % of a NUMA node for the KV cache, which fails when
# another process holds memory (1 GiB is plenty for a 4-layer model); and
# float32 (vLLM's CPU default is bf16) keeps the two arms' greedy answers
# comparable: in bf16 the random model's near-tied logits flip on rounding.
TINY_SERVER_ARGS = (
    "--no-enable-prefix-caching",
    "--max-model-len",
    "4096",
    "--kv-cache-memory-bytes",
    str(2**30),
    "--dtype",
    "float32",
)

# Environment settings that change what a server does; recorded with each run.
RECORDED_ENV = (
    "VLLM_DISABLE_COMPILE_CACHE",
    "VLLM_USE_FLASHINFER_SAMPLER",
    "NCCL_NVLS_ENABLE",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST",
    "CUDA_VISIBLE_DEVICES",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_GEMMA4_FUSED_PDL",
)

T = TypeVar("T")


def recorded_env() -> dict[str, str | None]:
    """:data:`RECORDED_ENV` as this process (hence every server it starts) sees it."""
    return {name: os.environ.get(name) for name in RECORDED_ENV}


@dataclass(frozen=True)
class Arm:
    """One side of the comparison.

    Attributes:
        name: column title, ``"in-tree"`` or ``"plugin"``.
        plugin: whether the server loads this package's plugin.
        base_url: an already running server to use instead of starting one.
        custom_ops: entries for the server's ``--compilation-config`` custom_ops.
        env: ``(name, value)`` pairs added to a started server's environment.
    """

    name: str
    plugin: bool
    base_url: str | None = None
    custom_ops: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def expected_forward(self) -> str | None:
        """The op forward the server log must name (``None``: whatever the platform picks)."""
        return "forward_native" if "-gemma4_routing" in self.custom_ops else None


# The arms a run can name in --order, in table column order.
ARM_NAMES = ("in-tree", "plugin", "native", "fused", "fused-pdl", "gate-tier", "gate-tier-twin")
# The native arm's compilation setting: the op stays, its torch reference runs.
NATIVE_CUSTOM_OPS = ("-gemma4_routing",)
# The fused arm's: the whole router (norm, scale, gate GEMM, routing) in one op.
FUSED_CUSTOM_OPS = ("+gemma4_fused_router",)
# The gate-tier arm's: the gate's GEMM tier chosen per call (issue #35).
GATE_TIER_CUSTOM_OPS = ("+gemma4_gate_tier",)
# The fused-pdl arm's environment: the fused op's decode launches with
# programmatic dependent launch (fused_router_launch.PDL_ENV, NVIDIA sm_90+).
FUSED_PDL_ENV = (("VLLM_GEMMA4_FUSED_PDL", "1"),)


@dataclass
class ArmServer:
    """What a workload needs to know about the server of one arm.

    Attributes:
        arm: the arm.
        base_url: ``http://host:port`` of the server.
        model_name: the name requests must use (the server's served model name).
        command: the server's command line, ``None`` for an external server.
        log_path: the server's log file, ``None`` for an external server.
        startup_s: seconds until the server was healthy, ``None`` if external.
        plugin_active: whether the server log shows the plugin patching Gemma4
            (set when a started server stops; ``None`` for an external one).
        dispatch: the op's "N layers dispatch to <forward>" lines from the log.
        forwards: the distinct forwards those lines name (e.g. ``["forward_cuda"]``).
        routed_processes: how many processes built routed layers (one per worker).
    """

    arm: Arm
    base_url: str
    model_name: str
    command: str | None = None
    log_path: Path | None = None
    startup_s: float | None = None
    plugin_active: bool | None = None
    dispatch: list[str] = field(default_factory=list)
    forwards: list[str] = field(default_factory=list)
    routed_processes: int | None = None


@dataclass(frozen=True)
class Row:
    """One row of a before/after table.

    Attributes:
        label: what the row measures, e.g. ``"Mean TTFT (ms)"``.
        before: the in-tree value (``None`` when missing).
        after: the plugin value (``None`` when missing).
        higher_is_better: direction of "better", for the reader's arrow.
        digits: decimals shown.
        before_err, after_err: optional standard errors shown as ``± x``.
    """

    label: str
    before: float | None
    after: float | None
    higher_is_better: bool
    digits: int = 2
    before_err: float | None = None
    after_err: float | None = None


def percent_change(before: float | None, after: float | None) -> float | None:
    """Relative change from ``before`` to ``after`` in percent, ``None`` if undefined.

    Undefined when either value is missing or not finite, or ``before`` is 0
    and ``after`` is not (a change from zero has no relative size); two equal
    values are a change of 0 %, zeros included.
    """
    if before is None or after is None:
        return None
    if not (math.isfinite(before) and math.isfinite(after)):
        return None
    if before == after:
        return 0.0
    if before == 0:
        return None
    return (after - before) / abs(before) * 100.0


def format_percent(change: float | None) -> str:
    """``+1.8 %`` / ``-0.4 %`` / ``0.0 %``; ``n/a`` when undefined."""
    if change is None:
        return "n/a"
    if abs(change) < 0.05:
        return "0.0 %"
    return f"{change:+.1f} %"


def format_value(value: float | None, digits: int, err: float | None = None) -> str:
    """A table cell: the value with ``digits`` decimals (``± err`` if given), ``-`` if missing."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if err is not None:
        text += f" ± {err:.{digits}f}"
    return text


def markdown_table(rows: Sequence[Row], first_column: str = "metric") -> str:
    """A before/after markdown table: in-tree, plugin, % change, and which way is better.

    The "better" column is ``plugin`` / ``in-tree`` when the change is at least
    0.05 %, ``=`` otherwise, ``n/a`` when the change is undefined.
    """
    cells = []
    for row in rows:
        change = percent_change(row.before, row.after)
        if change is None:
            better = "n/a"
        elif abs(change) < 0.05:
            better = "="
        else:
            better = "plugin" if (change > 0) == row.higher_is_better else "in-tree"
        before = format_value(row.before, row.digits, row.before_err)
        after = format_value(row.after, row.digits, row.after_err)
        cells.append([row.label, before, after, format_percent(change), better])
    header = [first_column, "in-tree", "plugin", "change", "better"]
    return tables.markdown_table(header, cells, ["left", *["right"] * 3, "center"]) + "\n"


def rows_as_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The table as JSON records, with the percent change computed."""
    return [
        {
            "metric": row.label,
            "in-tree": row.before,
            "plugin": row.after,
            "change_pct": percent_change(row.before, row.after),
            "higher_is_better": row.higher_is_better,
            **(
                {"in-tree_stderr": row.before_err, "plugin_stderr": row.after_err}
                if row.before_err is not None or row.after_err is not None
                else {}
            ),
        }
        for row in rows
    ]


@dataclass(frozen=True)
class ArmsRow:
    """One row of a table over several arms and repeated runs.

    Attributes:
        label: what the row measures.
        runs: arm name -> the value of each of its runs (``None`` where missing).
        higher_is_better: direction of "better".
        digits: decimals shown.
    """

    label: str
    runs: Mapping[str, Sequence[float | None]]
    higher_is_better: bool
    digits: int = 2


def finite_mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values, ``None`` if there are none."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def half_range_pct(values: Sequence[float | None]) -> float | None:
    """Half the range of the finite values, in percent of their mean (``None`` below 2 values)."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    mean = finite_mean(finite)
    if len(finite) < 2 or not mean:
        return None
    return (max(finite) - min(finite)) / 2 / abs(mean) * 100.0


def arms_table(rows: Sequence[ArmsRow], arms: Sequence[str], baseline: str = "in-tree") -> str:
    """A PR-style markdown table: each arm's mean, the % change of each other arm vs
    ``baseline``, the best arm, and (with repeats) the run-to-run noise.

    A cell with several runs reads ``mean ±h`` (``h``: half the range of the
    runs). ``noise`` is the largest such half-range over the arms, in percent of
    the arm's mean: a change smaller than it is not a result. ``best`` names the
    arm with the best mean, ``=`` when all means agree within 0.05 %.
    """
    if baseline not in arms:
        baseline = arms[0]
    others = [arm for arm in arms if arm != baseline]
    repeated = any(len(row.runs.get(arm, ())) > 1 for row in rows for arm in arms)
    header = ["metric", *arms, *(f"{arm} vs {baseline}" for arm in others), "best"]
    align = ["left", *["right"] * (len(header) - 2), "center"]
    if repeated:
        header.append("noise")
        align.append("right")
    table = []
    for row in rows:
        means = {arm: finite_mean(row.runs.get(arm, ())) for arm in arms}
        cells = [row.label]
        for arm in arms:
            text = format_value(means[arm], row.digits)
            spread = [v for v in row.runs.get(arm, ()) if v is not None]
            if len(spread) > 1 and means[arm] is not None:
                text += f" ±{(max(spread) - min(spread)) / 2:.{row.digits}f}"
            cells.append(text)
        cells += [format_percent(percent_change(means[baseline], means[arm])) for arm in others]
        cells.append(_best_arm(means, row.higher_is_better))
        if repeated:
            noise = [half_range_pct(row.runs.get(arm, ())) for arm in arms]
            known = [n for n in noise if n is not None]
            cells.append(f"{max(known):.1f} %" if known else "-")
        table.append(cells)
    return tables.markdown_table(header, table, align) + "\n"


def _best_arm(means: Mapping[str, float | None], higher_is_better: bool) -> str:
    known = {arm: value for arm, value in means.items() if value is not None}
    if len(known) < 2:
        return "n/a"
    best = max(known, key=lambda arm: known[arm] if higher_is_better else -known[arm])
    worst = min(known, key=lambda arm: known[arm] if higher_is_better else -known[arm])
    change = percent_change(known[worst], known[best])
    if change is None:
        return "n/a"
    return "=" if abs(change) < 0.05 else best


def arms_rows_as_json(
    rows: Sequence[ArmsRow], arms: Sequence[str], baseline: str = "in-tree"
) -> list[dict[str, Any]]:
    """:func:`arms_table` as JSON records: per arm the mean and the runs, and the changes."""
    if baseline not in arms:
        baseline = arms[0]
    records = []
    for row in rows:
        means = {arm: finite_mean(row.runs.get(arm, ())) for arm in arms}
        record: dict[str, Any] = {"metric": row.label, "higher_is_better": row.higher_is_better}
        for arm in arms:
            record[arm] = means[arm]
            record[f"{arm} runs"] = list(row.runs.get(arm, ()))
            record[f"{arm} noise_pct"] = half_range_pct(row.runs.get(arm, ()))
        for arm in arms:
            if arm != baseline:
                record[f"{arm} vs {baseline} change_pct"] = percent_change(
                    means[baseline], means[arm]
                )
        if "plugin" in means and baseline == "in-tree":
            record["change_pct"] = percent_change(means["in-tree"], means["plugin"])
        records.append(record)
    return records


def split_args(text: str | None) -> list[str]:
    """Shell-split a flag value such as ``"--max-model-len 4096"`` (``None``: no arguments)."""
    return shlex.split(text) if text else []


def shell_join(command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """``command`` as one copy-pasteable shell line, ``env`` assignments first."""
    prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in (env or {}).items())
    line = shlex.join([str(part) for part in command])
    return f"{prefix} {line}" if prefix else line


def arms_in_order(
    order: str,
    base_url_in_tree: str | None,
    base_url_plugin: str | None,
    base_url_native: str | None = None,
    base_url_fused: str | None = None,
    *,
    required: Sequence[str] | None = ("in-tree", "plugin"),
) -> list[Arm]:
    """The arms of one round, in run order, from ``--order`` (e.g. ``"in-tree,plugin"``).

    Args:
        order: comma-separated names from :data:`ARM_NAMES`, each at most once.
        base_url_in_tree, base_url_plugin, base_url_native: running servers to use.
        required: the exact set of names the order must hold (the gsm8k A/B
            compares in-tree with plugin); ``None``: any non-empty subset.
    """
    arms = {
        "in-tree": Arm("in-tree", plugin=False, base_url=base_url_in_tree),
        "plugin": Arm("plugin", plugin=True, base_url=base_url_plugin),
        "native": Arm(
            "native", plugin=True, base_url=base_url_native, custom_ops=NATIVE_CUSTOM_OPS
        ),
        "fused": Arm("fused", plugin=True, base_url=base_url_fused, custom_ops=FUSED_CUSTOM_OPS),
        "fused-pdl": Arm("fused-pdl", plugin=True, custom_ops=FUSED_CUSTOM_OPS, env=FUSED_PDL_ENV),
        "gate-tier": Arm("gate-tier", plugin=True, custom_ops=GATE_TIER_CUSTOM_OPS),
        # The gate-tier arm under another name (its own server and compile cache): an A/A
        # control, whose difference is the side-by-side set-up's own bias.
        "gate-tier-twin": Arm("gate-tier-twin", plugin=True, custom_ops=GATE_TIER_CUSTOM_OPS),
    }
    names = [name.strip() for name in order.split(",") if name.strip()]
    if required is not None:
        if sorted(names) != sorted(required):
            wanted = " and ".join(required)
            raise ValueError(f"--order must name {wanted} once each, got {order!r}")
    elif not names or len(set(names)) != len(names) or not set(names) <= set(arms):
        raise ValueError(
            f"--order must name arms from {', '.join(ARM_NAMES)}, each at most once, got {order!r}"
        )
    return [arms[name] for name in names]


def schedule(arms: Sequence[Arm], repeats: int, alternate: bool) -> list[tuple[int, Arm]]:
    """The runs of ``repeats`` rounds as ``(round, arm)``, rounds numbered from 1.

    With ``alternate`` every second round runs the arms in reverse order
    (``in-tree,plugin,native`` then ``native,plugin,in-tree``), so a drift of
    the machine over time does not always favour the same arm.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    runs = []
    for index in range(repeats):
        ordered = list(reversed(arms)) if alternate and index % 2 else list(arms)
        runs += [(index + 1, arm) for arm in ordered]
    return runs


def arm_server_args(arm: Arm, server_args: Sequence[str]) -> list[str]:
    """``server_args`` for ``arm``: its ``custom_ops`` merged into ``--compilation-config``.

    An existing ``--compilation-config JSON`` (or ``=JSON``) keeps its other
    keys and gets the arm's entries appended to its ``custom_ops``; without one,
    the flag is added.
    """
    args = [str(arg) for arg in server_args]
    if not arm.custom_ops:
        return args
    flag = "--compilation-config"
    for index, arg in enumerate(args):
        if arg == flag or arg.startswith(flag + "="):
            inline = arg != flag
            if not inline and index + 1 >= len(args):
                raise ValueError(f"{flag} without a value in server args {args!r}")
            text = arg.split("=", 1)[1] if inline else args[index + 1]
            try:
                config = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{flag} must be JSON to add custom_ops, got {text!r}") from error
            if not isinstance(config, dict):
                raise ValueError(f"{flag} must be a JSON object, got {text!r}")
            config["custom_ops"] = [*config.get("custom_ops", []), *arm.custom_ops]
            merged = json.dumps(config)
            if inline:
                args[index] = f"{flag}={merged}"
            else:
                args[index + 1] = merged
            return args
    return [*args, flag, json.dumps({"custom_ops": list(arm.custom_ops)})]


def add_common_args(
    parser: argparse.ArgumentParser, default_result_dir: str, *, native_arm: bool = False
) -> None:
    """Flags both harnesses share: model, servers, order, result directory.

    ``native_arm``: the harness also runs the native arm (``--base-url-native``).
    """
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or checkpoint dir")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="serve vllm_gemma4_router.harness.tiny_model.build_tiny_model() (built or "
        "reused from the cache) instead of --model, with CPU-friendly server args",
    )
    parser.add_argument(
        "--model-profile",
        default=None,
        choices=sorted(model_profiles.PROFILES),
        help="serve this checkpoint profile of vllm_gemma4_router.harness.model_profiles "
        "instead of --model (built or reused from the cache): 'tiny' is --tiny; "
        "'gemma-4-26b-a4b' is the real text config without weights, and always gets "
        "the profile's own server args (--load-format dummy --hf-overrides ...)",
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="name requests use (default: the model); must match external servers",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer id or dir for the client (default: model)"
    )
    parser.add_argument(
        "--server-args",
        default=None,
        help="extra vLLM server arguments, one shell-quoted string (default: "
        f"{shlex.join(PR_SERVER_ARGS)!r}; with --tiny {shlex.join(TINY_SERVER_ARGS)!r})",
    )
    parser.add_argument(
        "--order",
        default="in-tree,plugin",
        help="the arms in run order, comma-separated: 'in-tree,plugin' (default), "
        "'plugin,in-tree'" + ("; serve_ab also 'native' and 'fused'" if native_arm else ""),
    )
    parser.add_argument(
        "--base-url-in-tree",
        default=None,
        help="use this running server (started with VLLM_PLUGINS=) as the in-tree arm",
    )
    parser.add_argument(
        "--base-url-plugin",
        default=None,
        help="use this running server (plugin loaded) as the plugin arm",
    )
    if native_arm:
        parser.add_argument(
            "--base-url-native",
            default=None,
            help="use this running server (plugin loaded, custom_ops -gemma4_routing) "
            "as the native arm",
        )
        parser.add_argument(
            "--base-url-fused",
            default=None,
            help="use this running server (plugin loaded, custom_ops +gemma4_fused_router) "
            "as the fused arm",
        )
    parser.add_argument(
        "--startup-timeout", type=float, default=1800.0, help="seconds to wait for each server"
    )
    parser.add_argument(
        "--result-dir",
        default=default_result_dir,
        help="results go to RESULT_DIR/<UTC timestamp>/ (default: %(default)s)",
    )
    parser.add_argument(
        "--tag", default=None, help="name of the run directory instead of the timestamp"
    )


def resolve_model(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The model to serve and the server's extra arguments, after ``--tiny``,
    ``--model-profile`` and defaults.

    A config-only profile's own arguments (:func:`model_profiles.server_args`)
    come first and are kept even when ``--server-args`` replaces the defaults:
    without them vLLM cannot serve the directory.
    """
    profile = getattr(args, "model_profile", None)
    if args.tiny and profile not in (None, "tiny"):
        raise ValueError(f"--tiny and --model-profile {profile} name different models")
    if args.tiny or profile == "tiny":
        from vllm_gemma4_router.harness.extras import require_extra
        from vllm_gemma4_router.harness.tiny_model import build_tiny_model

        require_extra("demo", "--tiny (the tiny random Gemma 4 MoE)")

        model = str(build_tiny_model(progress=print))
        default_server_args = list(TINY_SERVER_ARGS)
        required: list[str] = []
    elif profile is not None:
        model = str(model_profiles.build_profile(profile, progress=print))
        default_server_args = list(PR_SERVER_ARGS)
        required = model_profiles.server_args(profile)
    else:
        model = args.model
        default_server_args = list(PR_SERVER_ARGS)
        required = []
    server_args = default_server_args if args.server_args is None else split_args(args.server_args)
    return model, [*required, *server_args]


def run_dir(result_dir: str | os.PathLike[str], tag: str | None) -> Path:
    """A fresh directory for this run's files: ``result_dir/<tag or UTC timestamp>``."""
    name = tag or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(result_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_logged(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> int:
    """Run ``command``, echoing its output to stdout and ``log_path``; its exit code.

    Raises:
        subprocess.TimeoutExpired: it ran longer than ``timeout_s`` (it is killed).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ)
    child_env.update(env or {})
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            [str(part) for part in command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env,
            text=True,
            errors="replace",
        ) as proc,
    ):

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)

        # The output is copied on a thread so that the timeout holds even
        # while the child prints nothing.
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            reader.join(timeout=10)
        return code


def run_client(command: Sequence[str], log_path: Path, timeout_s: float | None, what: str) -> None:
    """:func:`run_logged` for a benchmark client; ``RuntimeError`` naming ``what`` if it fails."""
    code = run_logged(command, log_path, None, timeout_s)
    if code != 0:
        raise RuntimeError(f"{what} exited with {code} (log: {log_path})")


@contextmanager
def arm_server(
    arm: Arm,
    model: str,
    *,
    served_model_name: str | None,
    server_args: Sequence[str],
    out_dir: Path,
    startup_timeout_s: float,
    log_name: str | None = None,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    python: str | None = None,
    keep_dir: Path | None = None,
) -> Iterator[ArmServer]:
    """The server of ``arm``: the external one, or a fresh ``VllmServer`` stopped on exit.

    With ``keep_dir``, the server is kept up after exit instead
    (:mod:`benchmarks.serving.kept_servers`): the one a previous call kept is
    reused where it was started with the same settings and still answers, else
    one is started detached; its log is copied to ``out_dir`` on exit.

    ``server_args`` get the arm's own settings (:func:`arm_server_args`), then
    ``extra_args``; ``extra_env`` is added to the server's environment (which
    inherits this process's, e.g. NCCL settings). The log goes to
    ``out_dir/server_<log_name or arm name>.log``. ``python``: the interpreter
    that runs the server (default: this one).

    For a started server, ``plugin_active``, ``dispatch``, ``forwards`` and
    ``routed_processes`` are set on exit from its log (``check_plugin_state``
    judges them).
    """
    name = served_model_name or model
    if arm.base_url is not None:
        yield ArmServer(arm, arm.base_url.rstrip("/"), name)
        return
    from vllm_gemma4_router.harness.serving import VllmServer

    env = {**dict(arm.env), **dict(extra_env or {})}
    if not arm.plugin:
        env["VLLM_PLUGINS"] = ""
    full_args = [*arm_server_args(arm, server_args), *extra_args]
    log_file = out_dir / f"server_{log_name or arm.name}.log"

    def make_server(log_path: Path, outlive_parent: bool) -> VllmServer:
        return VllmServer(
            model,
            plugin=arm.plugin,
            extra_args=full_args,
            env=env or None,
            log_path=log_path,
            startup_timeout_s=startup_timeout_s,
            served_model_name=served_model_name,
            progress=True,
            outlive_parent=outlive_parent,
            **({"python": python} if python else {}),
        )

    if keep_dir is not None:
        from benchmarks.serving import kept_servers

        settings = {
            "model": str(model),
            "served_model_name": served_model_name,
            "args": [str(arg) for arg in full_args],
            "env": {key: str(value) for key, value in env.items()},
            "python": python,
        }
        kept = kept_servers.ensure(
            keep_dir,
            arm.name,
            settings,
            lambda log_path: make_server(log_path, outlive_parent=True),
            lambda server: shell_join(server.command, env),
        )
        info = ArmServer(
            arm, kept.base_url, kept.model_name, command=kept.command, log_path=log_file
        )
        info.startup_s = kept.startup_s
        try:
            yield info
        finally:
            text = Path(kept.log_path).read_text(errors="replace")
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text(text)
            _set_plugin_state(info, text)
        return

    server = make_server(log_file, outlive_parent=False)
    info = ArmServer(
        arm,
        server.base_url,
        server.model_name,
        command=shell_join(server.command, env),
        log_path=server.log_path,
    )
    print(f"== {arm.name}: starting {info.command}", flush=True)
    with server:
        info.startup_s = server.startup_s
        print(f"== {arm.name}: server healthy after {server.startup_s:.0f} s", flush=True)
        try:
            yield info
        finally:
            _set_plugin_state(info, server.log_text())


def _set_plugin_state(info: ArmServer, log_text: str) -> None:
    plugin_log = parse_log(log_text)
    info.plugin_active = plugin_log.patched
    info.dispatch = plugin_log.dispatch_texts()
    info.forwards = plugin_log.forwards
    info.routed_processes = plugin_log.processes


def check_plugin_state(info: ArmServer, expect_workers: int | None = None) -> str | None:
    """A problem with the arm's plugin state (from its server log), or ``None`` if fine.

    Args:
        info: the arm's server, after it stopped.
        expect_workers: a plugin arm's log must show routed layers in at least
            this many processes (e.g. 2 with ``--tensor-parallel-size 2``).
    """
    if info.plugin_active is None:
        return None
    if info.arm.plugin and not info.plugin_active:
        return (
            f"{info.arm.name}: the server log ({info.log_path}) has no "
            f"{install_line('<layout>')!r} line: the plugin did not patch Gemma4"
        )
    if not info.arm.plugin and info.plugin_active:
        return f"{info.arm.name}: the plugin patched Gemma4 although VLLM_PLUGINS was empty"
    expected = info.arm.expected_forward
    if expected is not None and info.forwards and info.forwards != [expected]:
        return (
            f"{info.arm.name}: custom_ops {list(info.arm.custom_ops)} should route through "
            f"{expected}, the log says {info.forwards}"
        )
    if (
        info.arm.plugin
        and expect_workers is not None
        and (info.routed_processes or 0) < expect_workers
    ):
        return (
            f"{info.arm.name}: routed layers in {info.routed_processes} process(es) of the "
            f"server log, expected {expect_workers} workers"
        )
    return None


def run_schedule(
    runs: Sequence[tuple[int, Arm]],
    model: str,
    *,
    served_model_name: str | None,
    server_args: Sequence[str],
    out_dir: Path,
    startup_timeout_s: float,
    workload: Callable[[ArmServer, int], T],
    expect_workers: int | None = None,
    server_extras: Callable[[Arm, int], tuple[list[str], dict[str, str]]] | None = None,
) -> list[tuple[int, ArmServer, T]]:
    """Serve each ``(round, arm)`` of ``runs`` in turn (one server at a time) and run
    ``workload(info, round)`` against it; ``(round, info, outcome)`` per run.

    ``server_extras(arm, round)`` gives more server arguments and environment
    for that run (e.g. the profiler's). Server logs are ``server_<arm>.log`` for
    a single round, ``server_<arm>_r<round>.log`` otherwise.

    Raises:
        RuntimeError: an arm's server log contradicts its plugin setting.
    """
    rounds = {round_ for round_, _ in runs}
    results: list[tuple[int, ArmServer, T]] = []
    for round_, arm in runs:
        extra_args, extra_env = server_extras(arm, round_) if server_extras else ([], {})
        with arm_server(
            arm,
            model,
            served_model_name=served_model_name,
            server_args=server_args,
            out_dir=out_dir,
            startup_timeout_s=startup_timeout_s,
            log_name=run_name(arm.name, round_, len(rounds) > 1),
            extra_args=extra_args,
            extra_env=extra_env,
        ) as info:
            outcome = workload(info, round_)
        problem = check_plugin_state(info, expect_workers)
        if problem is not None:
            raise RuntimeError(problem)
        results.append((round_, info, outcome))
    return results


def run_name(arm: str, round_: int, several_rounds: bool) -> str:
    """The file-name stem of one run: ``<arm>``, or ``<arm>_r<round>`` when rounds repeat."""
    return f"{arm}_r{round_}" if several_rounds else arm


def run_arms(
    arms: Sequence[Arm],
    model: str,
    *,
    served_model_name: str | None,
    server_args: Sequence[str],
    out_dir: Path,
    startup_timeout_s: float,
    workload: Callable[[ArmServer], T],
) -> dict[str, tuple[ArmServer, T]]:
    """One round of :func:`run_schedule`: each arm once, results by arm name.

    Raises:
        RuntimeError: an arm's server log contradicts its plugin setting.
    """
    runs = run_schedule(
        [(1, arm) for arm in arms],
        model,
        served_model_name=served_model_name,
        server_args=server_args,
        out_dir=out_dir,
        startup_timeout_s=startup_timeout_s,
        workload=lambda info, _round: workload(info),
    )
    return {info.arm.name: (info, outcome) for _, info, outcome in runs}


@dataclass
class AbSetup:
    """What an A/B script derives from the common flags (``add_common_args``)
    before serving: the model, server arguments, client tokenizer, run
    directory and arms in run order."""

    args: argparse.Namespace
    model: str
    server_args: list[str]
    tokenizer: str
    out_dir: Path
    arms: list[Arm]

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, required_arms: Sequence[str] | None = ("in-tree", "plugin")
    ) -> AbSetup:
        """Resolve ``--tiny``/``--model-profile``/``--model``, ``--tokenizer``,
        ``--result-dir``/``--tag`` and ``--order`` (creates the run directory);
        ``required_arms`` as in :func:`arms_in_order`."""
        arms = arms_in_order(
            args.order,
            args.base_url_in_tree,
            args.base_url_plugin,
            getattr(args, "base_url_native", None),
            getattr(args, "base_url_fused", None),
            required=required_arms,
        )
        model, server_args = resolve_model(args)
        return cls(
            args=args,
            model=model,
            server_args=server_args,
            tokenizer=args.tokenizer or model,
            out_dir=run_dir(args.result_dir, args.tag),
            arms=arms,
        )

    def run_arms(self, workload: Callable[[ArmServer], T]) -> dict[str, tuple[ArmServer, T]]:
        """:func:`run_arms` with this setup's model, servers and flags."""
        return run_arms(
            self.arms,
            self.model,
            served_model_name=self.args.served_model_name,
            server_args=self.server_args,
            out_dir=self.out_dir,
            startup_timeout_s=self.args.startup_timeout,
            workload=workload,
        )

    def run_schedule(
        self,
        runs: Sequence[tuple[int, Arm]],
        workload: Callable[[ArmServer, int], T],
        *,
        expect_workers: int | None = None,
        server_extras: Callable[[Arm, int], tuple[list[str], dict[str, str]]] | None = None,
    ) -> list[tuple[int, ArmServer, T]]:
        """:func:`run_schedule` with this setup's model, servers and flags."""
        return run_schedule(
            runs,
            self.model,
            served_model_name=self.args.served_model_name,
            server_args=self.server_args,
            out_dir=self.out_dir,
            startup_timeout_s=self.args.startup_timeout,
            workload=workload,
            expect_workers=expect_workers,
            server_extras=server_extras,
        )


def server_record(info: ArmServer) -> dict[str, Any]:
    """The JSON record of one arm's server."""
    return {
        "base_url": info.base_url,
        "model_name": info.model_name,
        "external": info.command is None,
        "command": info.command,
        "log": str(info.log_path) if info.log_path else None,
        "startup_s": info.startup_s,
        "plugin_active": info.plugin_active,
        "routing_dispatch": info.dispatch,
        "routing_forwards": info.forwards,
        "routed_processes": info.routed_processes,
    }


def publish(out_dir: Path, stem: str, title: str, table: str, record: Mapping[str, Any]) -> None:
    """:func:`write_outputs`, then print the table and where the files went."""
    md_path, json_path = write_outputs(out_dir, stem, title, table, record)
    print()
    print(table)
    print(f"written: {md_path}, {json_path}")


def write_outputs(
    out_dir: Path, stem: str, title: str, table: str, record: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (title, stamp, table, commands) and ``<stem>.json``; both paths."""
    env = record["environment"]
    lines = [
        f"# {title}",
        "",
        f"{env['date']}, {env['device']}, "
        + ", ".join(f"{key} {value}" for key, value in env["versions"].items()),
        "",
        table,
    ]
    dispatch = [
        f"- {arm} server: " + "; ".join(server["routing_dispatch"])
        for arm, server in record.get("servers", {}).items()
        if server.get("routing_dispatch")
    ]
    if dispatch:
        lines += ["Routing forward, from the server logs:", "", *dispatch, ""]
    lines += ["Commands:", "", "```bash"]
    for arm, commands in record["commands"].items():
        for kind, command in commands.items():
            if command:
                lines.append(f"# {arm}: {kind}")
                lines.append(command)
    lines += ["```", ""]
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(lines))
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return md_path, json_path
