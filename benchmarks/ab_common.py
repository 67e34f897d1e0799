"""Shared pieces of the A/B harnesses (``benchmarks.serve_ab``, ``benchmarks.gsm8k_ab``).

An A/B run serves one model twice, one server after the other: "in-tree" with
vLLM's own Gemma4 routing (``VLLM_PLUGINS=""``: no general plugin loads) and
"plugin" with this package's routing op, runs the same client workload against
each, and reports both with the relative change. Either server can instead be
one that is already running (``--base-url-in-tree`` / ``--base-url-plugin``).

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
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vllm_gemma4_router.log_contract import install_line, parse_log

REPO_ROOT = Path(__file__).resolve().parents[1]
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

T = TypeVar("T")


@dataclass(frozen=True)
class Arm:
    """One side of the comparison.

    Attributes:
        name: column title, ``"in-tree"`` or ``"plugin"``.
        plugin: whether the server loads this package's plugin.
        base_url: an already running server to use instead of starting one.
    """

    name: str
    plugin: bool
    base_url: str | None = None


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
    """

    arm: Arm
    base_url: str
    model_name: str
    command: str | None = None
    log_path: Path | None = None
    startup_s: float | None = None
    plugin_active: bool | None = None
    dispatch: list[str] = field(default_factory=list)


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
    lines = [
        f"| {first_column} | in-tree | plugin | change | better |",
        "| --- | ---: | ---: | ---: | :---: |",
    ]
    for row in rows:
        change = percent_change(row.before, row.after)
        if change is None:
            better = "n/a"
        elif abs(change) < 0.05:
            better = "="
        else:
            better = "plugin" if (change > 0) == row.higher_is_better else "in-tree"
        lines.append(
            f"| {row.label} | {format_value(row.before, row.digits, row.before_err)} "
            f"| {format_value(row.after, row.digits, row.after_err)} "
            f"| {format_percent(change)} | {better} |"
        )
    return "\n".join(lines) + "\n"


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


def split_args(text: str | None) -> list[str]:
    """Shell-split a flag value such as ``"--max-model-len 4096"`` (``None``: no arguments)."""
    return shlex.split(text) if text else []


def shell_join(command: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """``command`` as one copy-pasteable shell line, ``env`` assignments first."""
    prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in (env or {}).items())
    line = shlex.join([str(part) for part in command])
    return f"{prefix} {line}" if prefix else line


def arms_in_order(
    order: str, base_url_in_tree: str | None, base_url_plugin: str | None
) -> list[Arm]:
    """The two arms in run order (``"in-tree,plugin"`` or ``"plugin,in-tree"``)."""
    arms = {
        "in-tree": Arm("in-tree", plugin=False, base_url=base_url_in_tree),
        "plugin": Arm("plugin", plugin=True, base_url=base_url_plugin),
    }
    names = [name.strip() for name in order.split(",")]
    if sorted(names) != ["in-tree", "plugin"]:
        raise ValueError(f"--order must name in-tree and plugin once each, got {order!r}")
    return [arms[name] for name in names]


def add_common_args(parser: argparse.ArgumentParser, default_result_dir: str) -> None:
    """Flags both harnesses share: model, servers, order, result directory."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or checkpoint dir")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="serve vllm_gemma4_router.harness.tiny_model.build_tiny_model() (built or "
        "reused from the cache) instead of --model, with CPU-friendly server args",
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
        help="which server runs first: 'in-tree,plugin' (default) or 'plugin,in-tree'",
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
    """The model to serve and the server's extra arguments, after ``--tiny`` and defaults."""
    if args.tiny:
        from vllm_gemma4_router.harness.extras import require_extra
        from vllm_gemma4_router.harness.tiny_model import build_tiny_model

        require_extra("demo", "--tiny (the tiny random Gemma 4 MoE)")

        model = str(build_tiny_model(progress=print))
        default_server_args = list(TINY_SERVER_ARGS)
    else:
        model = args.model
        default_server_args = list(PR_SERVER_ARGS)
    server_args = default_server_args if args.server_args is None else split_args(args.server_args)
    return model, server_args


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
) -> Iterator[ArmServer]:
    """The server of ``arm``: the external one, or a fresh ``VllmServer`` stopped on exit.

    For a started server, ``plugin_active`` is set on exit from its log: whether
    the plugin reported patching Gemma4 (it must for the plugin arm, and must
    not for the in-tree arm; ``check_plugin_state`` enforces that).
    """
    name = served_model_name or model
    if arm.base_url is not None:
        yield ArmServer(arm, arm.base_url.rstrip("/"), name)
        return
    from vllm_gemma4_router.harness.serving import VllmServer

    server = VllmServer(
        model,
        plugin=arm.plugin,
        extra_args=list(server_args),
        log_path=out_dir / f"server_{arm.name}.log",
        startup_timeout_s=startup_timeout_s,
        served_model_name=served_model_name,
        progress=True,
    )
    env = None if arm.plugin else {"VLLM_PLUGINS": ""}
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
            plugin_log = parse_log(server.log_text())
            info.plugin_active = plugin_log.patched
            info.dispatch = plugin_log.dispatch_texts()


def check_plugin_state(info: ArmServer) -> str | None:
    """A problem with the arm's plugin state (from its server log), or ``None`` if fine."""
    if info.plugin_active is None:
        return None
    if info.arm.plugin and not info.plugin_active:
        return (
            f"{info.arm.name}: the server log ({info.log_path}) has no "
            f"{install_line('<layout>')!r} line: the plugin did not patch Gemma4"
        )
    if not info.arm.plugin and info.plugin_active:
        return f"{info.arm.name}: the plugin patched Gemma4 although VLLM_PLUGINS was empty"
    return None


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
    """Serve each arm in turn (one server at a time) and run ``workload`` against it.

    Raises:
        RuntimeError: an arm's server log contradicts its plugin setting.
    """
    results: dict[str, tuple[ArmServer, T]] = {}
    for arm in arms:
        with arm_server(
            arm,
            model,
            served_model_name=served_model_name,
            server_args=server_args,
            out_dir=out_dir,
            startup_timeout_s=startup_timeout_s,
        ) as info:
            outcome = workload(info)
        problem = check_plugin_state(info)
        if problem is not None:
            raise RuntimeError(problem)
        results[arm.name] = (info, outcome)
    return results


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
    def from_args(cls, args: argparse.Namespace) -> AbSetup:
        """Resolve ``--tiny``/``--model``, ``--tokenizer``, ``--result-dir``/``--tag``
        and ``--order`` (creates the run directory)."""
        model, server_args = resolve_model(args)
        return cls(
            args=args,
            model=model,
            server_args=server_args,
            tokenizer=args.tokenizer or model,
            out_dir=run_dir(args.result_dir, args.tag),
            arms=arms_in_order(args.order, args.base_url_in_tree, args.base_url_plugin),
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
