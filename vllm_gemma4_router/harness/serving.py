"""Start, query and always stop a vLLM OpenAI-compatible server (stdlib only).

Used by the demo, the end-to-end tests and the A/B benchmarks::

    with VllmServer(model_dir, plugin=True, extra_args=["--max-model-len", "512"]) as server:
        texts = server.complete(["Hello"], max_tokens=16)
        print(server.log_text())

The server runs as ``python -m vllm.entrypoints.openai.api_server`` in its own
session (process group) and listens on 127.0.0.1 only. It is stopped, group and
all (API server, engine core, workers), on ``stop()``, on leaving the ``with``
block for any reason (including Ctrl-C), at interpreter exit, on SIGTERM/SIGHUP
to this process, and (Linux) when the thread that started it dies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

HOST = "127.0.0.1"
_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
_LOG_TAIL_LINES = 60
_PROGRESS_EVERY_S = 10.0


class ServerStartError(RuntimeError):
    """The server exited, or did not become healthy in time, while starting."""


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


class VllmServer:
    """A vLLM OpenAI API server in a child process group; a context manager.

    Args:
        model: checkpoint directory or Hugging Face id (``--model``).
        plugin: ``False`` runs vLLM with no general plugins (``VLLM_PLUGINS=""``),
            so its in-tree Gemma4 routing is used. ``True`` drops ``VLLM_PLUGINS``
            from the child's environment (every installed plugin loads) unless
            ``env`` sets it explicitly.
        extra_args: more server arguments, e.g. ``["--max-model-len", "512"]``.
            ``--host`` is not allowed: the server only listens on 127.0.0.1.
        env: variables added to (overriding) this process's environment for the child.
        port: port to listen on; default a free one.
        log_path: file receiving the server's stdout and stderr; default a new
            temporary file (kept after ``stop()`` so it can be read).
        startup_timeout_s: how long ``start()`` waits for ``GET /health`` to answer 200.
        python: interpreter that runs the server (it must have vLLM installed).
        served_model_name: the name requests use; default ``str(model)``.
        progress: print a waiting line to stderr about every 10 s during ``start()``.
        outlive_parent: do not ask Linux to stop the server when the starting
            thread ends; with :meth:`detach` the server outlives this process
            (e.g. kept up between the calls of a benchmark).

    Attributes:
        port, base_url (``http://127.0.0.1:<port>``), log_path, model_name.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        plugin: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 900.0,
        python: str = sys.executable,
        served_model_name: str | None = None,
        progress: bool = False,
        outlive_parent: bool = False,
    ) -> None:
        extra_args = [str(arg) for arg in extra_args]
        if any(arg == "--host" or arg.startswith("--host=") for arg in extra_args):
            raise ValueError("VllmServer listens on 127.0.0.1 only; do not pass --host")
        self.model = str(model)
        self.plugin = plugin
        self.extra_args = extra_args
        self.port = port if port is not None else find_free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.model_name = served_model_name or self.model
        self.startup_timeout_s = startup_timeout_s
        self.python = python
        self.progress = progress
        self.outlive_parent = outlive_parent
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"vllm-server-{self.port}-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._env = self._child_env(env)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        self.startup_s: float | None = None

    def _child_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        child = dict(os.environ)
        child.update(env or {})
        if not self.plugin:
            child["VLLM_PLUGINS"] = ""
        elif env is None or "VLLM_PLUGINS" not in env:
            child.pop("VLLM_PLUGINS", None)
        return child

    @property
    def command(self) -> list[str]:
        """The server's command line."""
        return [
            self.python,
            "-m",
            _SERVER_MODULE,
            "--model",
            self.model,
            "--served-model-name",
            self.model_name,
            "--host",
            HOST,
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        """Process id of the server (also its process group id), or ``None`` before start."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> VllmServer:
        """Launch the server and wait until ``GET /health`` returns 200.

        Raises:
            ServerStartError: the process exited while starting (message: exit
                code, log path, last 60 log lines) or was not healthy within
                ``startup_timeout_s``. The server is stopped before raising, and
                also on any other exception or KeyboardInterrupt.
        """
        if self._proc is not None:
            raise RuntimeError("server already started")
        _install_safety_net()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,
            preexec_fn=(
                _die_with_parent_thread()
                if sys.platform == "linux" and not self.outlive_parent
                else None
            ),
        )
        _LIVE[id(self)] = self
        try:
            self._wait_healthy(started)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_healthy(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.startup_timeout_s
        next_progress = started + _PROGRESS_EVERY_S
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"vLLM server exited with code {code} while starting "
                    f"(log: {self.log_path})\n--- last {_LOG_TAIL_LINES} log lines ---\n"
                    f"{tail(self.log_text())}"
                )
            if self._health_ok():
                return
            now = time.monotonic()
            if now >= deadline:
                raise ServerStartError(
                    f"vLLM server not healthy after {self.startup_timeout_s:.0f} s "
                    f"(log: {self.log_path})\n--- last {_LOG_TAIL_LINES} log lines ---\n"
                    f"{tail(self.log_text())}"
                )
            if self.progress and now >= next_progress:
                print(
                    f"  ... vLLM server on :{self.port} starting, {now - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                next_progress += _PROGRESS_EVERY_S
            time.sleep(0.5)

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the whole process group: SIGTERM, wait up to ``timeout_s``, then SIGKILL.

        Idempotent; safe to call from signal handlers and at exit.
        """
        proc, self._proc = self._proc, None
        _LIVE.pop(id(self), None)
        if proc is not None:
            _stop_group(proc, timeout_s)
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def detach(self) -> int:
        """Leave the started server running beyond this object and this process.

        It is no longer stopped by :meth:`stop`, at exit or on signals; stop it
        later with :func:`stop_process_group` and the returned process group id.

        Raises:
            RuntimeError: the server is not running, or was started without
                ``outlive_parent`` (Linux would stop it with its starting thread).
        """
        if not self.running():
            raise RuntimeError("detach(): the server is not running")
        if not self.outlive_parent:
            raise RuntimeError("detach(): start the server with outlive_parent=True")
        assert self._proc is not None
        pgid = self._proc.pid
        _LIVE.pop(id(self), None)
        self._proc = None
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None
        return pgid

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything the server has written so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def complete(
        self,
        prompts: Sequence[str],
        max_tokens: int = 32,
        temperature: float = 0.0,
        timeout_s: float = 600.0,
    ) -> list[str]:
        """Completions for ``prompts`` from ``/v1/completions``, in prompt order.

        One batched request; ``temperature=0`` is greedy decoding.
        """
        body = {
            "model": self.model_name,
            "prompt": list(prompts),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        result = self.post_json("/v1/completions", body, timeout_s=timeout_s)
        choices = sorted(result["choices"], key=lambda choice: choice["index"])
        if len(choices) != len(prompts):
            raise RuntimeError(f"asked for {len(prompts)} completions, got {len(choices)}")
        return [choice["text"] for choice in choices]

    def post_json(self, route: str, body: Mapping[str, object], timeout_s: float = 600.0) -> dict:
        """POST ``body`` as JSON to ``route`` (e.g. ``/v1/completions``); the decoded reply."""
        request = urllib.request.Request(
            f"{self.base_url}{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise RuntimeError(f"POST {route} -> HTTP {err.code}: {detail}") from err


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` is running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # kill() also reaches zombies, which wait for a reaper that may be slow (or
    # absent in a container); on Linux, look for a member that is not one.
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    # The server is its group's leader (start_new_session), so its pid is the
    # group id; the group outlives the leader while engine/worker processes do.
    stop_process_group(proc.pid, timeout_s, leader=proc)


def stop_process_group(
    pgid: int, timeout_s: float = 30.0, leader: subprocess.Popen[bytes] | None = None
) -> None:
    """Stop a server's process group: SIGTERM, wait up to ``timeout_s`` for every
    member to end, then SIGKILL. A group already gone is fine. ``leader``: the
    group leader's ``Popen``, where this process started it (it is reaped too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    if leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=timeout_s)
    while _group_alive(pgid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-pgid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=10)


def _die_with_parent_thread():
    """A preexec_fn asking Linux to SIGTERM the child when the thread that forked it ends.

    The safety net for a parent killed with SIGKILL (e.g. a CI timeout), which
    runs no Python cleanup. Only set up when the server is started from the
    main thread: Linux ties the signal to the forking thread, not the process.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_LIVE: dict[int, VllmServer] = {}
_safety_net_lock = threading.Lock()
_safety_net_installed = False


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet."""
    for server in list(_LIVE.values()):
        server.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    # Unwind like an ordinary exit, so callers' finally blocks and atexit run too.
    raise SystemExit(128 + signum)


def _install_safety_net() -> None:
    global _safety_net_installed
    with _safety_net_lock:
        if _safety_net_installed:
            return
        _safety_net_installed = True
        atexit.register(stop_all)
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGHUP):
            # Only where nobody else handles the signal: their handler wins.
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _on_signal)
