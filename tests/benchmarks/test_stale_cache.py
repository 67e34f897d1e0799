"""Issue #35 item 2's GPU check, without a GPU: benchmarks.serving.stale_cache's phases
(plugin hidden, then back), its log scan and its verdict, with confirm_gate replaced by
a fake vLLM whose compile-cache key covers the plugin (fixed) or not (stale)."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from benchmarks.serving import stale_cache, trace_summary
from vllm_gemma4_router import log_contract


def test_hidden_renames_and_restores_even_on_error(tmp_path):
    dirs = [tmp_path / "a.dist-info", tmp_path / "b.egg-info"]
    for path in dirs:
        path.mkdir()
        (path / "entry_points.txt").write_text("[vllm.general_plugins]\n")
    with pytest.raises(RuntimeError), stale_cache.hidden(dirs) as moved:
        assert [p.name for p in moved] == ["a.dist-info.hidden", "b.egg-info.hidden"]
        assert not any(p.exists() for p in dirs)
        raise RuntimeError("server failed")
    assert all((p / "entry_points.txt").is_file() for p in dirs)
    assert not list(tmp_path.glob("*.hidden"))


def test_the_installed_plugin_is_found_and_its_entry_point_seen():
    dirs = stale_cache.metadata_dirs()
    assert dirs, "the test environment installs the package (ci/setup_env.sh)"
    assert all(p.suffix in (".dist-info", ".egg-info") for p in dirs)
    assert stale_cache.plugin_entry_point_visible()


def _log(cache_dir: str, *, plugin: bool, loaded: str | None, saved: str | None) -> str:
    lines = [f"INFO backends.py:1094] Using cache directory: {cache_dir} for vLLM's torch.compile"]
    if plugin:
        prefix = "INFO [gemma4_layouts.py:369] "
        lines.insert(0, prefix + log_contract.install_line("router"))
        lines.append(prefix + log_contract.gate_tier_line(12, 12, 12, True))
    if loaded:
        lines.append(f"INFO decorators.py:311] Directly load AOT compilation from path {loaded}")
    else:
        lines.append("INFO] Compiling a graph for compile range (1, 8192) takes 30 s")
    if saved:
        lines.append(f"INFO decorators.py:708] saved AOT compiled function to {saved}")
    return "\n".join(lines) + "\n"


class FakeVllm:
    """confirm_gate.main's stand-in: one compiled serve. The plugin counts as installed
    when its metadata folder exists. ``keyed``: the cache key covers the plugin."""

    def __init__(self, dist: Path, keyed: bool):
        self.dist, self.keyed = dist, keyed
        self.env_seen: list[tuple[str | None, str | None]] = []

    def main(self, argv, make_server=None):
        out = Path(argv[argv.index("--out") + 1])
        root = Path(os.environ["VLLM_CACHE_ROOT"])
        self.env_seen.append(
            (os.environ.get("VLLM_CACHE_ROOT"), os.environ.get("VLLM_DISABLE_COMPILE_CACHE"))
        )
        plugin = self.dist.exists()
        key = "plugin" if plugin and self.keyed else "plain"
        artifact = root / "torch_compile_cache" / key / "model"
        loaded = str(artifact) if artifact.exists() else None
        if not loaded:
            artifact.parent.mkdir(parents=True, exist_ok=True)
            artifact.write_text(json.dumps({"plugin": plugin}))
        # What runs is what was compiled: a loaded artifact keeps its own gate.
        compiled_with_plugin = json.loads(artifact.read_text())["plugin"]
        tier = trace_summary.TIER_LL_BF16 if compiled_with_plugin else trace_summary.TIER_CUBLAS
        (out / "compiled").mkdir(parents=True)
        log = _log(
            str(artifact.parent),
            plugin=plugin,
            loaded=loaded,
            saved=None if loaded else str(artifact),
        )
        (out / "compiled" / "server.log").write_text(log)
        record = {
            "mode": "compiled",
            "timings_s": {"start": 150.0},
            "traces": {"t.json.gz": {"batches": {"1": {"tier": tier}}}},
        }
        (out / "confirm_gate.json").write_text(json.dumps([record]))
        return 0


def _run(tmp_path, monkeypatch, keyed: bool):
    dist = tmp_path / "site" / "vllm_gemma4_router-0.9.0.dist-info"
    dist.mkdir(parents=True)
    fake = FakeVllm(dist, keyed)
    monkeypatch.setattr(stale_cache.confirm_gate, "main", fake.main)
    monkeypatch.setenv("VLLM_DISABLE_COMPILE_CACHE", "1")
    out = tmp_path / f"out-{random.randrange(1 << 30)}"
    status = stale_cache.main(
        ["--cache-root", str(tmp_path / f"cache-{keyed}"), "--out", str(out)],
        entry_point_visible=dist.exists,
        find_metadata=lambda: [dist],
    )
    return status, json.loads((out / "stale_cache.json").read_text()), out, fake, dist


def test_a_keyed_cache_compiles_afresh_after_install_and_reuses_its_own(
    tmp_path, monkeypatch, capsys
):
    status, result, out, fake, dist = _run(tmp_path, monkeypatch, keyed=True)
    assert status == 0 and result["passed"], result["reasons"]
    before, after, again = (result["phases"][p] for p in stale_cache.PHASES)
    assert not before["log"]["plugin_loaded"] and not before["entry_point_visible"]
    assert before["log"]["aot_saved"] and before["tiers"] == {"1": trace_summary.TIER_CUBLAS}
    assert after["log"]["plugin_loaded"] and after["log"]["compiled"]
    assert after["log"]["gate_tier_used"] and not before["log"]["gate_tier_used"]
    assert after["log"]["aot_loaded"] == [] and after["tiers"] == {"1": trace_summary.TIER_LL_BF16}
    assert again["log"]["aot_loaded"] == after["log"]["aot_saved"]
    assert not again["log"]["compiled"]
    assert dist.is_dir()  # restored
    # Every phase: the cache on, in one root.
    assert set(fake.env_seen) == {(str((tmp_path / "cache-True").resolve()), None)}
    assert "**PASS**" in capsys.readouterr().out
    assert re.search(r"\| before +\| no +\|", (out / "stale_cache.md").read_text())


def test_an_unkeyed_cache_is_caught_loading_the_stale_artifact(tmp_path, monkeypatch):
    status, result, _, _, _ = _run(tmp_path, monkeypatch, keyed=False)
    assert status == 1 and not result["passed"]
    assert any("STALE" in reason for reason in result["reasons"])
    assert any("expected ll_bf16_gemm" in reason for reason in result["reasons"])


def test_the_check_refuses_to_prove_nothing():
    before = {
        "log": stale_cache.log_facts(_log("/c/a", plugin=False, loaded=None, saved=None)),
        "tiers": {1: trace_summary.TIER_CUBLAS},
    }
    after = {
        "log": stale_cache.log_facts(_log("/c/b", plugin=True, loaded=None, saved="/c/b/m")),
        "tiers": {1: trace_summary.TIER_LL_BF16},
    }
    passed, reasons = stale_cache.verdict({"before": before, "after": after})
    assert not passed and reasons == [
        "before: no AOT artifact saved, so there was nothing stale to load"
    ]
    assert stale_cache.verdict({"before": before}) == (False, ["before and after must both run"])


def test_a_used_cache_root_is_refused(tmp_path, capsys):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "old").write_text("x")
    assert stale_cache.main(["--cache-root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_the_table_names_the_cache_key_folder():
    path = "/root/sc/torch_compile_cache/6942b4d163/rank_0_0/backbone"
    assert stale_cache._cache_key(path) == "6942b4d163"
    assert stale_cache._cache_key("/elsewhere/backbone") == "backbone"
