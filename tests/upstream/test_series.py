"""The upstream patch series (``upstream/``) against vLLM 0.34.0's source distribution.

Its ``.patch`` files are exactly what ``upstream/series.py export`` writes, it
applies cleanly, stays small and signed off, adds vLLM code only where it is
new (the CustomOp sits beside the kernel it dispatches to: nothing is moved),
passes vLLM's offline pre-commit checks with vLLM's own configuration, and on
this CPU: vLLM's patched tests pass (Triton under the interpreter) and fail when
the kernel returns one wrong id; the patched ``gemma4.py`` routes real decoder
layers; this plugin still loads and routes, passing vLLM's padding mask.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from upstream_env import (
    DISPATCH_TESTS,
    KERNEL_TESTS,
    REPO,
    VLLM_TESTS_ON_CPU,
    Background,
    copy_tree,
    pytest_outcome,
    series,
    vllm_lint_failures,
    vllm_pytest,
)

GEMMA4 = "vllm/model_executor/models/gemma4.py"


def test_series_is_in_exported_form(sdist: Path):
    """Applied with ``git am`` and exported again, the series is byte-identical."""
    assert series.check(sdist), "edit in `make upstream-tree`, then `make upstream-series`"


def test_upstream_holds_the_series_and_our_texts_only():
    """No copy of vLLM's files is kept: the patches are the only stored form."""
    tracked = subprocess.run(
        ["git", "ls-files", "upstream"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked, "upstream/ is not tracked"
    # The gate_tier series has its own folder (test_gate_tier_series.py).
    tracked = [path for path in tracked if not path.startswith("upstream/gate_tier/")]
    ours = {"upstream/PR.md", "upstream/PLUGIN_ADAPTER.md", "upstream/series.py"}
    ours |= {"upstream/bench_dispatch.py"}
    patches = {p.relative_to(REPO).as_posix() for p in series.series_files()}
    assert set(tracked) == ours | patches


def _added_vllm_lines(patch: Path) -> list[str]:
    """The lines ``patch`` adds to files under ``vllm/``, stripped."""
    added, in_vllm = [], False
    for line in patch.read_text().splitlines():
        if line.startswith("diff --git "):
            in_vllm = line.split(" b/", 1)[1].startswith("vllm/")
        elif in_vllm and line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:].strip())
    return added


def test_series_moves_no_vllm_code(sdist: Path):
    """The lines the series adds to ``vllm/`` are new: none of vLLM's code (its
    kernel, its torch function) is moved or copied into the patches.

    Lines it may repeat from the pristine files: the forwards' signatures
    (the torch function's, three times) and the kernel call the ``if`` made,
    now in ``forward_cuda``: 13 lines. Moving the torch function (18 lines) or
    the kernel (~130) would exceed the bound."""
    pristine = {
        line.strip()
        for path in series.touched_files()
        if path.startswith("vllm/") and (sdist / path).is_file()
        for line in (sdist / path).read_text().splitlines()
    }
    repeated = [
        line
        for patch in series.series_files()
        for line in _added_vllm_lines(patch)
        if len(line) > 12 and line in pristine and not line.startswith(("from ", "import "))
    ]
    assert len(repeated) <= 20, repeated


def test_series_is_signed_off_small_and_based_on_0_34_0():
    patches = series.series_files()
    assert [p.name[:5] for p in patches] == ["0001-", "0002-"]
    for patch in patches:
        text = patch.read_text()
        assert text.count(f"\n{series.SIGN_OFF}\n") == 1, patch.name
        assert re.search(r"^Subject: \[PATCH\] \[", text, re.M), patch.name
    counts = series.changed_lines(patches)
    assert sum(n for area, n in counts.items() if area != "tests") <= 400, counts
    pr = (REPO / "upstream" / "PR.md").read_text()
    assert "v0.34.0" in pr and "rebased onto main" in pr
    assert "https://github.com/vllm-project/vllm/pull/39083" in pr


def test_series_applies_cleanly(sdist: Path, patched_tree: Path):
    # patched_tree applied every patch with `git apply --check` first.
    assert "is_cuda_alike" in (sdist / GEMMA4).read_text()  # the pristine copy is intact
    gemma4 = (patched_tree / GEMMA4).read_text()
    assert "is_cuda_alike" not in gemma4 and "self.routing = Gemma4Routing()" in gemma4
    assert '@CustomOp.register("gemma4_routing")' in gemma4
    docs = (patched_tree / "docs/design/custom_op.md").read_text()
    assert f'--8<-- "{GEMMA4}:gemma4_routing"' in docs
    assert "# --8<-- [start:gemma4_routing]" in gemma4 and "# --8<-- [end:gemma4_routing]" in gemma4
    # The kernel and the torch function stay where they were, unchanged.
    for name in ("def _gemma4_routing_kernel(", "def gemma4_fused_routing_kernel_triton("):
        assert gemma4.count(name) == 1 and name in (sdist / GEMMA4).read_text()


def test_vllm_lint_and_offline_hooks_pass(patched_tree: Path):
    """ruff (check, format) with vLLM's pyproject, and vLLM's offline hook scripts."""
    python_files = [f for f in series.touched_files() if f.endswith(".py")]
    assert not vllm_lint_failures(patched_tree, python_files)


def test_vllm_tests_pass_on_cpu(patched_tree: Path, route_runs: dict[str, Background]):
    """vLLM's patched kernel and dispatch tests: Triton under the interpreter, no skips.

    (``route_runs``: the real-layer runs start first and overlap with this one.)
    """
    proc = vllm_pytest(patched_tree, KERNEL_TESTS, DISPATCH_TESTS, "-k", VLLM_TESTS_ON_CPU)
    outcome = pytest_outcome(proc)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert outcome.get("passed", 0) >= 70 and set(outcome) == {"passed"}, outcome


def test_a_flipped_id_fails_the_oracle_test(sdist: Path, tmp_path: Path, patched_tree: Path):
    """Mutation check: the kernel's output with one id changed must fail the test."""
    mutant = copy_tree(patched_tree, tmp_path / "mutant")
    router = mutant / GEMMA4
    source = router.read_text()
    router.unlink()  # a hard link to the patched tree: write a new file
    router.write_text(
        source
        + "\n\n_unmutated = gemma4_fused_routing_kernel_triton\n\n\n"
        + "def gemma4_fused_routing_kernel_triton(gating_output, topk, *args, **kwargs):\n"
        + "    weights, ids = _unmutated(gating_output, topk, *args, **kwargs)\n"
        + "    ids[0, -1] = (ids[0, -1] + 1) % gating_output.shape[-1]\n"
        + "    return weights, ids\n"
    )
    proc = vllm_pytest(
        mutant, KERNEL_TESTS, "-k", "kernel_triton_matches_fp64_oracle and dtype2-128-8"
    )
    assert proc.returncode == 1 and pytest_outcome(proc) == {"failed": 2}, proc.stdout[-4000:]
    assert "Arrays are not equal" in proc.stdout


def _route(route_runs: dict[str, Background], patched_tree: Path, flag: str) -> dict:
    proc = route_runs[flag].wait()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["vllm_file"] == str(patched_tree / "vllm" / "__init__.py")
    return result


def test_patched_gemma4_routes_real_layers_on_cpu(
    route_runs: dict[str, Background], patched_tree: Path
):
    result = _route(route_runs, patched_tree, "")
    assert result["plugin_layout"] == "not installed"
    in_tree = "vllm.model_executor.models.gemma4.Gemma4Routing"
    for setting, forward in (("default", "forward_cpu"), ("-gemma4_routing", "forward_native")):
        layers = result["custom_ops"][setting]
        assert len(layers) == 2
        for layer in layers:
            # Eager here (compilation mode 0): nothing compiled.
            assert layer["in_tree_op"] == {"class": in_tree, "forward": forward, "compiled": False}
            assert layer["matches_oracle"] and layer["scale_update_seen"], setting


def test_plugin_still_loads_and_routes_on_the_patched_tree(
    route_runs: dict[str, Background], patched_tree: Path
):
    result = _route(route_runs, patched_tree, "--plugin")
    assert result["plugin_layout"] == "router_method"
    assert result["routing_function_module"] == "vllm_gemma4_router.integration.gemma4_layouts"
    ours = "vllm_gemma4_router.integration.custom_ops.Gemma4Routing"
    for layer in result["custom_ops"]["default"]:
        assert layer["plugin_op"]["class"] == ours
        assert layer["matches_oracle"] and layer["scale_update_seen"]
    # The override is registered when the plugin installs, before any router is
    # built: every layer's vLLM-built op is the plugin's class.
    classes = [layer["in_tree_op"]["class"] for layer in result["custom_ops"]["default"]]
    assert classes == [ours, ours]
    # The adapter reads the mask from vLLM's op (its forward_cuda): on CUDA-like and
    # XPU platforms the plugin passes vLLM's padding mask, as the op would.
    assert result["plugin_mask_helper"] == "get_moe_padding_mask"
    assert result["plugin_mask_module"] == "vllm.model_executor.models.gemma4"


def test_make_upstream_target_regenerates_the_series():
    makefile = (REPO / "Makefile").read_text()
    for target, command in (("upstream-tree", "tree"), ("upstream-series", "export")):
        rule = rf"^{target}:.*\n(\t.*\n)*\t.*upstream/series\.py {command}"
        assert re.search(rule, makefile, re.M), target
    assert shutil.which("git"), "git generates and applies the series"


@pytest.mark.parametrize("path", ["upstream/PR.md", "upstream/PLUGIN_ADAPTER.md"])
def test_upstream_docs_exist(path: str):
    assert (REPO / path).read_text().strip()


def test_readme_points_to_the_series():
    readme = (REPO / "README.md").read_text()
    assert "## Upstreaming" in readme and "(upstream/PR.md)" in readme


def test_the_kernel_behaves_as_pr_md_says(patched_tree: Path):
    """The routing contract upstream/PR.md states, probed on the in-tree kernel
    (Triton's interpreter): ties lowest id first, rows descending, +0.0 above
    -0.0, NaN (sign clear) above +inf, NaN (sign set) below -inf."""
    env = {**os.environ, "PYTHONPATH": str(patched_tree), "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "upstream" / "probe_kernel.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["ties"] == [3, 9, 10, 11]  # 1.0 at 3, then 0.5 at 9-12: lowest ids
    assert facts["descending"] == [7, 2, 14, 5]  # 0.9, 0.5, 0.3, 0.1
    assert facts["signed_zeros"] == [1, 2, 4, 6]  # +0.0 at 1 and 2 before -0.0 at 4, 6, 9
    assert facts["nan_above_inf"][:2] == [13, 8]  # NaN at 13 before +inf at 8
    assert facts["nan_above_inf_first_weight_is_nan"]
    assert facts["negative_nan_below_negative_inf"] == [0, 1, 2, 3]  # -inf at 0-11
    assert facts["inf_row_weights"] == ["nan", 0.0, 0.0, 0.0]
    pr = (REPO / "upstream" / "PR.md").read_text()
    assert "`3, 9, 10, 11`" in pr and "`+0.0` ranks above `-0.0`" in pr
