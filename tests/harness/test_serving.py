"""VllmServer's lifecycle, against a fake server script (fast) and, once, real vLLM."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from vllm_gemma4_router.harness import serving
from vllm_gemma4_router.harness.serving import ServerStartError, VllmServer, find_free_port

FAKE_SERVER = Path(__file__).resolve().parents[1] / "scripts" / "fake_vllm_server.py"


@pytest.fixture
def fake_python(tmp_path) -> str:
    """An executable that runs the fake server with whatever VllmServer passes to python."""
    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _log_value(server: VllmServer, key: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in server.log_text().splitlines():
            if line.startswith(f"{key}="):
                return line.split("=", 1)[1]
        time.sleep(0.05)
    raise AssertionError(f"{key} not in log:\n{server.log_text()}")


def test_free_port_is_bindable_on_loopback():
    port = find_free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    server = VllmServer("m")
    assert server.base_url == f"http://127.0.0.1:{server.port}"
    assert "--host" in server.command and server.command[server.command.index("--host") + 1] == (
        "127.0.0.1"
    )


def test_only_loopback_host(tmp_path):
    for args in (["--host", "0.0.0.0"], ["--host=::"]):
        with pytest.raises(ValueError, match="127.0.0.1"):
            VllmServer("m", extra_args=args, log_path=tmp_path / "x.log")


def test_serves_completes_in_prompt_order_and_stops(fake_python, tmp_path):
    with VllmServer(
        "ok", python=fake_python, served_model_name="tiny", log_path=tmp_path / "s.log"
    ) as server:
        pid = server.pid
        assert server.running() and server.startup_s is not None
        assert server.complete(["a", "b", "c"], max_tokens=5) == [
            "tiny|a|5",
            "tiny|b|5",
            "tiny|c|5",
        ]
        assert "--served-model-name" in _log_value(server, "ARGV")
    assert not server.running() and _wait_dead(pid)
    assert server.log_path == tmp_path / "s.log" and "VLLM_PLUGINS" in server.log_text()


@pytest.mark.parametrize(
    ("plugin", "env", "expected"),
    [
        (True, {}, "None"),
        (True, {"VLLM_PLUGINS": "gemma4_router"}, "'gemma4_router'"),
        (False, {}, "''"),
        (False, {"VLLM_PLUGINS": "gemma4_router"}, "''"),
    ],
)
def test_plugin_switch_sets_vllm_plugins(plugin, env, expected, fake_python, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "from-parent")
    with VllmServer("ok", plugin=plugin, env=env or None, python=fake_python) as server:
        assert _log_value(server, "VLLM_PLUGINS") == expected
    server.log_path.unlink()  # the default log is a temporary file that outlives stop()


def test_exit_while_starting_raises_with_code_and_log_tail(fake_python, tmp_path):
    server = VllmServer("exit3", python=fake_python, log_path=tmp_path / "s.log")
    started = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        server.start()
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "exited with code 3" in message and str(tmp_path / "s.log") in message
    tail = message.split("log lines ---\n", 1)[1].splitlines()
    assert tail == [f"line {i}" for i in range(41, 101)]  # the last 60 lines
    assert not server.running()


def test_not_healthy_in_time_raises_and_kills(fake_python, tmp_path):
    server = VllmServer(
        "hang", python=fake_python, startup_timeout_s=1.5, log_path=tmp_path / "s.log"
    )
    with pytest.raises(ServerStartError, match="not healthy after 2 s"):
        server.start()
    assert "VLLM_PLUGINS" in str(server.log_text())
    assert not server.running()


def test_stop_kills_the_whole_process_group(fake_python, tmp_path):
    server = VllmServer("family", python=fake_python, log_path=tmp_path / "s.log").start()
    grandchild = int(_log_value(server, "GRANDCHILD"))
    leader = server.pid
    assert _alive(grandchild) and os.getpgid(grandchild) == leader
    server.stop()
    server.stop()  # idempotent
    assert _wait_dead(leader) and _wait_dead(grandchild)


def test_sigterm_ignored_escalates_to_sigkill(fake_python, tmp_path):
    server = VllmServer("stubborn", python=fake_python, log_path=tmp_path / "s.log").start()
    pid = server.pid
    started = time.monotonic()
    server.stop(timeout_s=1.0)
    assert _wait_dead(pid) and time.monotonic() - started < 10


def test_exception_and_ctrl_c_in_the_block_stop_the_server(fake_python, tmp_path):
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with (
            pytest.raises(type(exc)),
            VllmServer("family", python=fake_python, log_path=tmp_path / "s.log") as server,
        ):
            leader = server.pid
            grandchild = int(_log_value(server, "GRANDCHILD"))
            raise exc
        assert _wait_dead(leader) and _wait_dead(grandchild)
        assert not server.running()


def test_ctrl_c_while_starting_stops_the_server(fake_python, monkeypatch, tmp_path):
    server = VllmServer("hang", python=fake_python, log_path=tmp_path / "s.log")
    seen = []

    def interrupted(self):
        seen.append(self.pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(VllmServer, "_health_ok", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert seen and _wait_dead(seen[0]) and not server.running()


@pytest.mark.parametrize("ending", ["sigterm", "exit-without-stop"])
def test_safety_net_stops_servers_of_a_dying_parent(ending, fake_python, tmp_path):
    # A parent that is terminated, or simply exits, without stopping its server.
    parent = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from vllm_gemma4_router.harness.serving import VllmServer
        server = VllmServer("family", python={fake_python!r}).start()
        print(server.pid, flush=True)
        if {ending!r} == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, timeout=60
    )
    leader = int(proc.stdout.split()[0])
    assert proc.returncode == (128 + signal.SIGTERM if ending == "sigterm" else 0), proc.stderr
    deadline = time.monotonic() + 10
    while serving._group_alive(leader) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not serving._group_alive(leader)  # leader and grandchild


def test_a_detached_server_outlives_its_parent_until_its_group_is_stopped(fake_python, tmp_path):
    # The parent exits without stopping it (the safety net would stop an attached one).
    parent = textwrap.dedent(
        f"""
        from vllm_gemma4_router.harness.serving import VllmServer
        server = VllmServer("family", python={fake_python!r}, outlive_parent=True).start()
        print(server.detach(), server.base_url, flush=True)
        server.stop()  # no longer ours: does nothing
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pgid, base_url = proc.stdout.split()
    pgid = int(pgid)
    time.sleep(0.5)
    assert serving._group_alive(pgid)
    with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
        assert response.status == 200
    serving.stop_process_group(pgid, timeout_s=5)
    assert not serving._group_alive(pgid)
    serving.stop_process_group(pgid, timeout_s=1)  # gone already: fine


def test_detach_needs_a_running_server_started_to_outlive_its_parent(fake_python, tmp_path):
    server = VllmServer("ok", python=fake_python, log_path=tmp_path / "s.log")
    with pytest.raises(RuntimeError, match="not running"):
        server.detach()
    with server, pytest.raises(RuntimeError, match="outlive_parent=True"):
        server.detach()
    assert not server.running()


def test_real_vllm_with_a_bad_model_path_fails_fast_with_the_reason(tmp_path):
    missing = tmp_path / "no-such-model"
    server = VllmServer(missing, log_path=tmp_path / "s.log", startup_timeout_s=300)
    started = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        server.start()
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert "exited with code" in message and "log lines ---" in message
    assert str(missing) in message.split("log lines ---", 1)[1]  # vLLM's own complaint
    assert elapsed < 120
    assert serving._LIVE == {}


def test_demo_prompts_file_round_trips_and_rejects_bad_lines(tmp_path):
    import json
    from pathlib import Path

    from vllm_gemma4_router.harness.demo import load_prompts

    shipped = load_prompts(
        Path(__file__).parents[2] / "benchmarks" / "serving" / "prompts_mixed_18.jsonl"
    )
    lengths = sorted(len(p.encode()) for p in shipped)
    assert len(shipped) >= 16 and lengths[0] <= 2 and lengths[-1] >= 200
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps("two\nlines") + "\n\n" + json.dumps('a "quote"') + "\n")
    assert load_prompts(good) == ["two\nlines", 'a "quote"']
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(["not", "a string"]) + "\n")
    with pytest.raises(ValueError, match="one non-empty JSON string per line"):
        load_prompts(bad)
