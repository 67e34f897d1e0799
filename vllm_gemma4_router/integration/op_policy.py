"""Whether an opt-in op is on: the user's ``+``/``-``, else the op's measured policy.

Two ops have one: the fused router (``tables/fused_router_policy.json``) and the
gate's run-time tier (``tables/gate_tier_policy.json``). Each file (package
data) says, per platform family and vLLM release range, what turning the op on
gives against vLLM's own code (``gains``, ``within_noise``, ``loses`` or
``not_measured``), the op's default there, and which measurement (device,
versions, date, results under ``benchmarks/results/``) each verdict comes from.
They are read once, at import; a file that breaks its schema raises
:class:`OpPolicyError` naming the file.

The decision (:func:`fused_router_on`, :func:`gate_tier_on`):

* ``-<op>`` in ``custom_ops``: off;
* ``+<op>``: on, always; for the fused router, where its verdict for this
  platform and release is ``loses``, one warning line per process
  (``log_contract.fused_router_loses_line``);
* neither: the row's ``default_on``; a platform or release no row covers: off.

Where the fused router is on, a fused-router row may also say at which token counts
its own one-launch kernels run (``own_kernel_tokens``, :func:`fused_router_own_tokens`):
at every other count the router hands the GEMM to vLLM's gate, whose own tier (a
vendor kernel) was measured faster there, and the routing follows as in the
plugin's default chain. A row without it keeps the one-launch kernels at every count.

``default_on`` is true only where the verdict is ``gains`` (the loader refuses
anything else): an op stays off until a release is measured to gain.

Platform families: ``cuda-sm90`` (Hopper: H100, H200), ``cuda-other`` (any other
NVIDIA GPU), and vLLM's platform words ``rocm``, ``xpu``, ``cpu``; other
platforms (``tpu``, out-of-tree) have no row.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any, NamedTuple

from vllm_gemma4_router.log_contract import fused_router_loses_line, logger
from vllm_gemma4_router.routing.table_files import (
    LaunchTableError,
    Source,
    check_fields,
    check_provenance,
    check_sweeps,
    fail,
    read_json,
)

FUSED_ROUTER_TABLE = "fused_router_policy"
GATE_TIER_TABLE = "gate_tier_policy"
TABLES = (FUSED_ROUTER_TABLE, GATE_TIER_TABLE)
SCHEMA = 1
PLATFORM_FAMILIES = ("cuda-sm90", "cuda-other", "rocm", "xpu", "cpu")
VERDICTS = ("gains", "within_noise", "loses", "not_measured")
_RELEASE_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")

Release = tuple[int, int, int]


class OpPolicyError(LaunchTableError):
    """An op policy file that cannot be read or does not match its schema."""


class PolicyRow(NamedTuple):
    """One platform family's verdict over an inclusive range of vLLM releases."""

    platform: str
    first: Release
    last: Release
    verdict: str
    default_on: bool
    #: The provenance sweep's first result file (``None`` where not measured).
    evidence: str | None
    #: Fused router only: the token counts its own kernels take, as inclusive
    #: ``(first, last)`` ranges (``last`` ``None``: no bound); ``None``: every count.
    own_kernel_tokens: tuple[tuple[int, int | None], ...] | None = None


def release(version: str) -> Release | None:
    """The ``(X, Y, Z)`` release a vLLM version string starts with (``"0.26.0rc1"``,
    ``"0.34.0+cu130"`` -> ``(0, 26, 0)``, ``(0, 34, 0)``); ``None`` if it has none."""
    match = _RELEASE_RE.match(version.strip().lstrip("v"))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def platform_family(platform: str, capability: tuple[int, int] | None = None) -> str:
    """The policy's family for vLLM's platform word (``custom_ops.platform_name``) and,
    on CUDA, the device's compute capability: ``cuda-sm90`` for (9, 0)."""
    if platform != "cuda":
        return platform
    hopper = capability is not None and tuple(capability)[:2] == (9, 0)
    return "cuda-sm90" if hopper else "cuda-other"


def _token_ranges(name: str, where: str, value: Any) -> tuple[tuple[int, int | None], ...]:
    """``own_kernel_tokens``: inclusive ranges ``{"first": int, "last": int or null}``,
    ascending, apart, from 1 up; only the last may be unbounded (``null``)."""
    if not isinstance(value, list):
        fail(name, where, f"expected a list of token ranges, got {value!r}")
    ranges: list[tuple[int, int | None]] = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        span = check_fields(name, at, item, {"first": int}, {"last": object})
        first, last = span["first"], span.get("last")
        if last is not None and type(last) is not int:
            fail(name, f"{at}.last", f"expected an int or null, got {last!r}")
        if first < 1 or (last is not None and last < first):
            fail(name, at, f"expected 1 <= first <= last, got {span}")
        if ranges and (ranges[-1][1] is None or first <= ranges[-1][1]):
            fail(name, at, f"ranges must ascend without overlapping, got {span} after {ranges[-1]}")
        ranges.append((first, last))
    return tuple(ranges)


def _row(name: str, where: str, value: Any, ids: set[str], table: str) -> PolicyRow:
    required = {"platform": str, "vllm": dict, "verdict": str, "default_on": bool}
    optional = {"provenance": str, "notes": str}
    if table == FUSED_ROUTER_TABLE:
        optional.update(own_kernel_tokens=list, own_kernel_tokens_provenance=str)
    row = check_fields(name, where, value, required, optional)
    if row["platform"] not in PLATFORM_FAMILIES:
        fail(name, f"{where}.platform", f"expected one of {PLATFORM_FAMILIES}")
    if row["verdict"] not in VERDICTS:
        fail(name, f"{where}.verdict", f"expected one of {VERDICTS}")
    if row["default_on"] and row["verdict"] != "gains":
        fail(name, f"{where}.default_on", "may be true only where the verdict is 'gains'")
    measured = row["verdict"] != "not_measured"
    if measured != ("provenance" in row):
        fail(name, where, "a measured verdict names its sweep (provenance); not_measured none")
    if measured:
        check_provenance(name, where, row["provenance"], ids)
    span = check_fields(name, f"{where}.vllm", row["vllm"], {"first": str, "last": str})
    if not (_RELEASE_RE.fullmatch(span["first"]) and _RELEASE_RE.fullmatch(span["last"])):
        fail(name, f"{where}.vllm", f"expected X.Y.Z releases, got {span}")
    first, last = release(span["first"]), release(span["last"])
    if first > last:
        fail(name, f"{where}.vllm", f"first must not come after last, got {span}")
    own = row.get("own_kernel_tokens")
    if own is not None:
        if not measured:
            fail(name, f"{where}.own_kernel_tokens", "only a measured row splits the token counts")
        own = _token_ranges(name, f"{where}.own_kernel_tokens", own)
    if (own is None) == ("own_kernel_tokens_provenance" in row):
        fail(name, where, "own_kernel_tokens name their sweep (own_kernel_tokens_provenance)")
    if own is not None:
        check_provenance(name, where, row["own_kernel_tokens_provenance"], ids)
    return PolicyRow(row["platform"], first, last, row["verdict"], row["default_on"], None, own)


def load_policy(source: Source, table: str = FUSED_ROUTER_TABLE) -> tuple[PolicyRow, ...]:
    """The rows of the policy file ``source`` of ``table``, each with its evidence path;
    raises :class:`OpPolicyError` naming the file when it is missing, not JSON or
    breaks its schema (an unknown platform or verdict, a range backwards or
    overlapping another of its platform, a default on without a gain, a verdict
    without its sweep)."""
    try:
        name, data = read_json(source)
        top = {"schema": int, "table": str, "provenance": dict, "rows": list}
        check_fields(name, "top level", data, top)
        if data["schema"] != SCHEMA or data["table"] != table:
            fail(name, "top level", f"expected schema {SCHEMA} of table {table!r}")
        ids = check_sweeps(name, data["provenance"])
        results = {s["id"]: s["results"][0] for s in data["provenance"]["sweeps"]}
        rows = []
        for index, value in enumerate(data["rows"]):
            row = _row(name, f"rows[{index}]", value, ids, table)
            rows.append(row._replace(evidence=results.get(value.get("provenance"))))
        for a in rows:
            for b in rows:
                if a is not b and a.platform == b.platform and a.first <= b.last <= a.last:
                    fail(name, "rows", f"ranges of {a.platform} overlap: {a} and {b}")
    except OpPolicyError:
        raise
    except LaunchTableError as exc:
        what = str(exc).removeprefix("launch table ")
        raise OpPolicyError(f"op policy {what}") from exc
    return tuple(rows)


def policy_file(table: str = FUSED_ROUTER_TABLE) -> Source:
    """The packaged policy file of ``table``."""
    return files("vllm_gemma4_router.integration").joinpath("tables", f"{table}.json")


_POLICIES = {table: load_policy(policy_file(table), table) for table in TABLES}


def policy_row(
    platform: str,
    vllm_version: str,
    rows: tuple[PolicyRow, ...] | None = None,
    table: str = FUSED_ROUTER_TABLE,
) -> PolicyRow | None:
    """The row of ``rows`` (by default the packaged policy of ``table``) covering
    ``platform`` (a family) and the release ``vllm_version`` starts with, or ``None``
    (not measured)."""
    found = release(vllm_version)
    if found is None:
        return None
    for row in _POLICIES[table] if rows is None else rows:
        if row.platform == platform and row.first <= found <= row.last:
            return row
    return None


# Once per process, not per layer: every router's op asks.
_loses_warned = False


def fused_router_on(explicit: bool | None, platform: str, vllm_version: str) -> bool:
    """Whether the fused router runs: ``explicit`` (``+``: True, ``-``: False) wins;
    ``None`` takes the policy's default. ``+`` where the policy says it loses logs one
    warning line per process."""
    global _loses_warned
    row = policy_row(platform, vllm_version)
    if explicit is None:
        return row is not None and row.default_on
    if explicit and row is not None and row.verdict == "loses" and not _loses_warned:
        _loses_warned = True
        logger.warning(fused_router_loses_line(platform, vllm_version, row.evidence or ""))
    return explicit


def fused_router_own_tokens(
    platform: str, vllm_version: str
) -> tuple[tuple[int, int | None], ...] | None:
    """The token counts at which the fused router runs its own one-launch kernels on
    ``platform`` (a family) with ``vllm_version``, as inclusive ``(first, last)`` ranges
    (``last`` ``None``: unbounded); at every other count it hands the GEMM to vLLM's gate.
    ``None``: its own kernels at every count (no row, or a row that does not split)."""
    row = policy_row(platform, vllm_version)
    return None if row is None else row.own_kernel_tokens


def gate_tier_on(explicit: bool | None, platform: str, vllm_version: str) -> bool:
    """Whether Gemma 4's gate picks its tier per call: ``explicit`` (``+``: True, ``-``:
    False) wins; ``None`` takes the gate-tier policy's default."""
    if explicit is not None:
        return explicit
    row = policy_row(platform, vllm_version, table=GATE_TIER_TABLE)
    return row is not None and row.default_on
