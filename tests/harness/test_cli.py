"""harness.cli, the ``vllm-gemma4-router`` command: selfcheck, demo hand-off, missing extras."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

import vllm_gemma4_router.harness.demo as demo
from vllm_gemma4_router import plugin
from vllm_gemma4_router.harness import cli, extras
from vllm_gemma4_router.routing import launcher as routing_launcher

REPO = Path(__file__).resolve().parents[2]


def _hide_modules(monkeypatch, *hidden: str) -> None:
    """Make ``hidden`` look uninstalled to the extras checks."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name)
    )


def test_selfcheck_passes_against_the_reference(capsys):
    assert cli.main(["selfcheck", "--tokens", "5", "--experts", "16", "--topk", "4"]) == 0
    out = capsys.readouterr().out
    assert "T=5, E=16, K=4" in out
    for dtype in ("torch.float32", "torch.bfloat16", "torch.float16"):
        assert any(
            line.strip().startswith(dtype) and line.endswith("PASS") for line in out.splitlines()
        )
    assert out.splitlines()[-1] == "PASS"


def test_selfcheck_fails_when_the_kernel_disagrees(monkeypatch, capsys):
    real = routing_launcher.gemma4_routing_triton

    def swapped_ids(logits, topk, scale):
        weights, ids = real(logits, topk, scale)
        return weights, ids.flip(-1)

    monkeypatch.setattr(routing_launcher, "gemma4_routing_triton", swapped_ids)
    assert cli.main(["selfcheck", "--tokens", "3", "--experts", "8", "--topk", "2"]) == 1
    out = capsys.readouterr().out
    assert "ids equal: False" in out and out.splitlines()[-1] == "FAIL"


def test_selfcheck_without_triton_says_where_triton_comes_from(monkeypatch):
    _hide_modules(monkeypatch, "triton")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["selfcheck"])
    message = str(exit_info.value.code)
    assert "needs triton" in message and "GPU build of torch" in message
    assert "\n" not in message


def test_demo_arguments_reach_the_demo(monkeypatch):
    seen = []
    monkeypatch.setattr(demo, "main", lambda args: seen.append(args) or 7)
    argv = ["demo", "--model", "/m", "--max-tokens", "3", "--extra-args=--dtype float32"]
    assert cli.main([*argv, "--seed", "5", "--startup-timeout", "12"]) == 7
    [args] = seen
    assert (args.model, args.max_tokens, args.extra_args) == ("/m", 3, "--dtype float32")
    assert (args.seed, args.startup_timeout, args.log_dir, args.prompts_file) == (
        5,
        12.0,
        None,
        None,
    )


@pytest.mark.parametrize("hidden", ["transformers", "tokenizers", "safetensors"])
def test_demo_without_its_extra_fails_with_one_line_naming_it(monkeypatch, hidden):
    _hide_modules(monkeypatch, hidden)
    monkeypatch.setattr(demo, "main", lambda args: pytest.fail("the demo must not start"))
    with pytest.raises(extras.MissingExtraError) as exit_info:
        cli.main(["demo"])
    message = str(exit_info.value.code)
    assert (
        message == f"vllm-gemma4-router demo needs {hidden}: pip install 'vllm-gemma4-router[demo]'"
    )


def test_demo_without_vllm_says_so(monkeypatch):
    _hide_modules(monkeypatch, "vllm")
    with pytest.raises(SystemExit, match="needs vllm: install vLLM"):
        cli.main(["demo"])


def test_require_extra_checks_its_arguments():
    with pytest.raises(ValueError, match="extra must be one of"):
        extras.require_extra("nope", "x")
    extras.require_extra("demo", "x", ["torch"])  # present: nothing happens
    assert extras.missing_modules(["torch", "surely_not_a_module_4f1c"]) == [
        "surely_not_a_module_4f1c"
    ]


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "selfcheck" in capsys.readouterr().err


def test_pyproject_entry_points_resolve_to_the_cli_and_the_plugin():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def resolve(target: str):
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    assert resolve(project["scripts"]["vllm-gemma4-router"]) is cli.main
    assert (
        resolve(project["entry-points"]["vllm.general_plugins"]["gemma4_router"]) is plugin.register
    )
    # every extra the harness checks for is declared, and brings those modules
    declared = project["optional-dependencies"]
    assert set(extras.EXTRA_MODULES) <= set(declared)
    for extra, modules in extras.EXTRA_MODULES.items():
        names = {Requirement(dep).name for dep in declared[extra]}
        assert {m.replace("_", "-") for m in modules} <= {n.replace("_", "-") for n in names}


def test_module_form_runs_like_the_console_script():
    # `python -m vllm_gemma4_router.harness.cli` is what the GPU job runs.
    done = subprocess.run(
        [sys.executable, "-m", "vllm_gemma4_router.harness.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "selfcheck" in done.stdout and "demo" in done.stdout
