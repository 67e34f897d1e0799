"""The gate_tier series (``upstream/gate_tier/``) against vLLM 0.34.0's source distribution.

It moves every num_tokens branch of ``GateLinear.forward`` into one custom op,
``ll_router_gemm_dispatch``. Checked here: the stored patches are what
``upstream/series.py export --series gate_tier`` writes, they apply to the
pristine sdist and touch only ``gate_linear.py`` and the new test, the patched
``forward`` has no branch on ``x.shape[0]`` left, vLLM's ruff and offline hooks
pass, and on this CPU vLLM's new test passes on the patched tree while, on the
pristine sdist, its compiled cases never reach the ll_bf16 tier.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

from upstream_env import (
    GATE_TIER_TEST,
    REPO,
    copy_tree,
    pytest_outcome,
    series,
    vllm_lint_failures,
    vllm_pytest,
)

GATE_LINEAR = "vllm/model_executor/layers/fused_moe/router/gate_linear.py"
PATCHES = series.series_files(series.GATE_TIER)


def _forward_source(tree: Path) -> str:
    """The source of ``GateLinear.forward`` in ``tree``."""
    source = (tree / GATE_LINEAR).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "GateLinear":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "forward":
                    return ast.get_source_segment(source, item) or ""
    raise AssertionError(f"no GateLinear.forward in {tree / GATE_LINEAR}")


def test_gate_tier_series_is_in_exported_form(sdist: Path):
    # To change it: `make upstream-tree SERIES=gate_tier`, edit, `make upstream-series SERIES=...`.
    assert series.check(sdist, series.GATE_TIER)


def test_gate_tier_folder_holds_its_patches_and_pr_only():
    tracked = subprocess.run(
        ["git", "ls-files", "upstream/gate_tier"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    patches = {p.relative_to(REPO).as_posix() for p in PATCHES}
    assert set(tracked) == patches | {"upstream/gate_tier/PR.md"}


def test_gate_tier_series_is_one_small_signed_off_patch():
    assert [p.name[:5] for p in PATCHES] == ["0001-"]
    text = PATCHES[0].read_text()
    assert text.count(f"\n{series.SIGN_OFF}\n") == 1
    assert re.search(r"^Subject: \[PATCH\] \[", text, re.M)
    assert series.touched_files(PATCHES) == [GATE_TIER_TEST, GATE_LINEAR]
    assert series.changed_lines(PATCHES)["vllm"] <= 100


def test_gate_tier_applies_and_leaves_no_num_tokens_branch(sdist: Path, gate_tier_tree: Path):
    # gate_tier_tree applied the series with `git apply --check` first.
    pristine = _forward_source(sdist)
    assert "x.shape[0] <= self.LL_BF16_MAX_TOKENS" in pristine  # the sdist is intact
    assert "x.shape[0] <= 32" in pristine
    forward = _forward_source(gate_tier_tree)
    assert "shape[0]" not in forward and "ll_bf16_gemm(" not in forward
    assert forward.count("torch.ops.vllm.ll_router_gemm_dispatch(") == 2
    source = (gate_tier_tree / GATE_LINEAR).read_text()
    assert 'op_name="ll_router_gemm_dispatch"' in source
    assert "fake_impl=ll_router_gemm_dispatch_fake" in source


def test_gate_tier_passes_vllm_lint_and_offline_hooks(gate_tier_tree: Path):
    python_files = [f for f in series.touched_files(PATCHES) if f.endswith(".py")]
    assert not vllm_lint_failures(gate_tier_tree, python_files)


def test_vllm_gate_tier_test_passes_on_cpu(gate_tier_tree: Path):
    """Both tiers, eager and the two compiled modes: all six cases, no skips."""
    proc = vllm_pytest(gate_tier_tree, GATE_TIER_TEST)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert pytest_outcome(proc) == {"passed": 6}


def test_without_the_op_compiled_gates_never_reach_the_tier(
    sdist: Path, gate_tier_tree: Path, tmp_path: Path
):
    """The new test on the pristine sdist: eager reaches ll_bf16_gemm; traced at 512
    tokens with the guards dropped, the branch stays as traced and no batch does.

    (The ll_fp32w cases fail there before that point on CPU: the pristine large-M
    path is vLLM's CPU linear, which needs weights processed by a model loader.)
    """
    pristine = copy_tree(sdist, tmp_path / "pristine")
    test = pristine / GATE_TIER_TEST
    shutil.copyfile(gate_tier_tree / GATE_TIER_TEST, test)
    proc = vllm_pytest(pristine, GATE_TIER_TEST, "-k", "ll_bf16")
    assert pytest_outcome(proc) == {"failed": 2, "passed": 1}, proc.stdout[-6000:]
    failed = re.findall(r"^FAILED \S+\[(\w+)-ll_bf16\]", proc.stdout, re.M)
    assert sorted(failed) == ["DYNAMO_TRACE_ONCE", "VLLM_COMPILE"], proc.stdout[-6000:]
    # Each failure's own section (pytest's "___ name ___" header up to the next one) holds
    # the assertion; how often its text appears elsewhere depends on pytest's width and logs.
    sections = re.split(r"^_{3,} (\S+) _{3,}$", proc.stdout, flags=re.M)
    reasons = dict(zip(sections[1::2], sections[2::2], strict=True))
    for mode in failed:
        [section] = [text for name, text in reasons.items() if name.endswith(f"[{mode}-ll_bf16]")]
        assert "assert [] == [1, 4, 16]" in section, section[-3000:]


def test_gate_tier_pr_cites_its_gpu_evidence_and_what_is_not_measured():
    pr = (REPO / "upstream" / "gate_tier" / "PR.md").read_text()
    assert "v0.34.0" in pr and "## Evidence on the GPU" in pr
    gpu = pr.split("## Evidence on the GPU", 1)[1].split("\n## ", 1)[0]
    cited = re.findall(r"`(benchmarks/results/[^`]+/)`", gpu)
    assert cited and all((REPO / path / "README.md").is_file() for path in cited)
    assert "-16.2 ± 11.2 %" in gpu and "not yet with this patch on 0.34.0" in gpu


def test_affected_models_in_pr_md_build_a_gate_where_cited(sdist: Path):
    """Each row of PR.md's affected table cites the sdist line that builds the
    ``GateLinear``; and its model file calls that gate (``self.<name>(``)."""
    pr = (REPO / "upstream" / "gate_tier" / "PR.md").read_text()
    table = pr.split("**Affected**", 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| [^|]+ \| `(vllm/model_executor/models/\w+\.py):(\d+)` \|", table, re.M)
    assert len(rows) >= 13 and rows[0][0].endswith("/gemma4.py")
    for path, line in rows:
        source = (sdist / path).read_text().splitlines()
        built = source[int(line) - 1]
        assert "GateLinear(" in built, f"{path}:{line}: {built}"
        name = built.split("=", 1)[0].strip()  # self.gate, self.proj, ...
        assert any(f"{name}(" in row for row in source[int(line) :]), f"{path}: {name} not called"


def test_make_targets_take_the_series():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^SERIES \?= routing$", makefile, re.M)
    for command in ("tree", "export", "check"):
        assert f"upstream/series.py {command} --series $(SERIES)" in makefile
