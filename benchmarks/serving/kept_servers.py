"""Servers kept up between invocations of the side-by-side A/B (``--keep-servers``).

A device call ends after at most 10 minutes, and starting (compiling) both
26B-A4B servers takes most of that. A kept server is started detached, in its
own session, so it outlives the call and the next call, on the same warm
machine, attaches to it instead of starting it again. Each kept server has a
state file, ``KEEP_DIR/<arm>.json`` (process group, URL, log, and the settings
it was started with); a server whose settings differ from what is asked, or
that no longer answers, is stopped and started anew.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vllm_gemma4_router.harness.serving import VllmServer, stop_process_group


@dataclass(frozen=True)
class KeptServer:
    """One kept server, as its state file records it.

    Attributes:
        arm: the arm's name (the state file is ``<arm>.json``).
        pgid: the server's process group id (its leader's pid).
        base_url: ``http://127.0.0.1:<port>``.
        model_name: the name requests use.
        command: the shell-quoted command line it was started with.
        log_path: its log file (kept in the keep directory).
        startup_s: seconds its first start took until healthy.
        settings: what it was started with; another invocation reuses it only
            if it asks for exactly these.
    """

    arm: str
    pgid: int
    base_url: str
    model_name: str
    command: str
    log_path: str
    startup_s: float
    settings: dict


def state_path(keep_dir: Path, arm: str) -> Path:
    """The state file of ``arm``'s kept server."""
    return Path(keep_dir) / f"{arm}.json"


def load(keep_dir: Path, arm: str) -> KeptServer | None:
    """``arm``'s kept server from its state file; ``None`` if none (or unreadable)."""
    path = state_path(keep_dir, arm)
    try:
        return KeptServer(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def healthy(base_url: str, timeout_s: float = 5.0) -> bool:
    """Whether ``GET base_url/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def reusable(kept: KeptServer | None, settings: Mapping) -> bool:
    """Whether ``kept`` is up and was started with ``settings``."""
    return kept is not None and kept.settings == dict(settings) and healthy(kept.base_url)


def stop(keep_dir: Path, arm: str, timeout_s: float = 60.0) -> bool:
    """Stop ``arm``'s kept server (if any) and remove its state file; whether there was one."""
    kept = load(keep_dir, arm)
    path = state_path(keep_dir, arm)
    if kept is not None:
        stop_process_group(kept.pgid, timeout_s)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def stop_others(keep_dir: Path, arms: Sequence[str]) -> list[str]:
    """Stop every kept server whose arm is not in ``arms`` (two servers fill the GPU);
    the arms stopped."""
    stopped = []
    for path in sorted(Path(keep_dir).glob("*.json")):
        if path.stem not in arms:
            stop(keep_dir, path.stem)
            stopped.append(path.stem)
    return stopped


def keep(
    server: VllmServer, keep_dir: Path, arm: str, command: str, settings: Mapping
) -> KeptServer:
    """Start ``server`` (made with ``outlive_parent=True``), detach it and write its
    state file; stopped again if anything fails before the state is written."""
    server.start()
    try:
        kept = KeptServer(
            arm=arm,
            pgid=server.pid or 0,
            base_url=server.base_url,
            model_name=server.model_name,
            command=command,
            log_path=str(server.log_path),
            startup_s=server.startup_s or 0.0,
            settings=dict(settings),
        )
        path = state_path(keep_dir, arm)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(kept), indent=1) + "\n")
    except BaseException:
        server.stop()
        raise
    server.detach()
    return kept


def ensure(
    keep_dir: Path,
    arm: str,
    settings: Mapping,
    make_server: Callable[[Path], VllmServer],
    describe: Callable[[VllmServer], str],
) -> KeptServer:
    """``arm``'s kept server: the one a previous call kept, where it answers and was
    started with ``settings``; else (after stopping one that differs or is gone) a new
    one, ``make_server(log_path)`` (made with ``outlive_parent=True``), started and
    kept; ``describe(server)`` is its command line as recorded."""
    kept = load(keep_dir, arm)
    if reusable(kept, settings):
        assert kept is not None
        print(f"== {arm}: the kept server {kept.base_url} (pid {kept.pgid})", flush=True)
        return kept
    if kept is not None:
        print(f"== {arm}: the kept server is gone or differs: restarting", flush=True)
        stop(keep_dir, arm)
    server = make_server(Path(keep_dir) / f"server_{arm}.log")
    command = describe(server)
    print(f"== {arm}: starting (kept up) {command}", flush=True)
    kept = keep(server, keep_dir, arm, command, settings)
    print(f"== {arm}: server healthy after {kept.startup_s:.0f} s", flush=True)
    return kept
