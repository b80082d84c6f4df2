"""Several server processes on one port: `EDGE_PROCESSES=N` (a 4-core device runs four, not one).

Python runs one request at a time per process, so one process keeps one core busy however many interpreter
threads it has. `python -m edge_container serve` with `EDGE_PROCESSES=N > 1` becomes a small supervisor:

- it binds the port once (SO_REUSEPORT, not listening: a busy port fails here, before anything starts, and
  port 0 is resolved to one port for all), then starts N children `python -m edge_container serve` with
  `EDGE_PROCESS_INDEX=i` and a shared peers folder (`EDGE_PEERS_DIR`, made and removed by the supervisor);
- each child listens on that port with SO_REUSEPORT (the kernel spreads connections over the children) and
  on a loopback port of its own, which it records in the peers folder (`<index>.json`): the one a sibling
  uses to reach *it*, not whichever process the shared port picks;
- a child that dies (a signal, e.g. the OOM killer) is started again, with backoff; one that exits with a
  start-up failure (status 1: refused artifact, 2: bad configuration) stops the whole server with its status,
  since its siblings would fail the same way; SIGTERM / SIGINT stop every child gracefully.

What crosses processes (`edge_container.peers`): admin reload / rollback / model fan out to every child and
say which version each serves; `/metrics` gathers every child's metrics with a `process` label; `/readyz` is
ready only when every child is. Everything else is per process: the pacing policy paces a 1/N share of the
budget, and each process has its own client escalation buckets, breaker and batcher.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edge_container.processes")

INDEX_ENV = "EDGE_PROCESS_INDEX"
PEERS_DIR_ENV = "EDGE_PEERS_DIR"
_FATAL = (1, 2)  # a child's start-up failure (see __main__): the same configuration would fail again
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Peer:
    """One child process: its index, pid and private loopback port."""

    index: int
    pid: int
    port: int


def bind(host: str, port: int, *, reuse_port: bool, listen: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port); SO_REUSEPORT lets the siblings share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def register(peers_dir: Path, peer: Peer) -> None:
    """Record this child in the peers folder (atomically: a reader sees the old file or the new one)."""
    tmp = peers_dir / f".{peer.index}.{peer.pid}.tmp"
    tmp.write_text(json.dumps({"index": peer.index, "pid": peer.pid, "port": peer.port}))
    os.replace(tmp, peers_dir / f"{peer.index}.json")


def read_peers(peers_dir: Path) -> list[Peer]:
    """The children recorded so far, by index (a file being replaced is skipped, not an error)."""
    peers = []
    for path in sorted(peers_dir.glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            peers.append(Peer(int(raw["index"]), int(raw["pid"]), int(raw["port"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(peers, key=lambda p: p.index)


def child_sockets(host: str, port: int, index: int, peers_dir: Path) -> list[socket.socket]:
    """A child's two listeners: the shared port, and its own loopback port (recorded for its siblings)."""
    shared = bind(host, port, reuse_port=True)
    private = bind("127.0.0.1", 0, reuse_port=False)
    register(peers_dir, Peer(index, os.getpid(), private.getsockname()[1]))
    return [shared, private]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, so no orphan keeps the port (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own signal handling must do
        pass


class Supervisor:
    """Starts `processes` children on one port, restarts crashed ones, stops them all on SIGTERM/SIGINT."""

    def __init__(self, environ: Mapping[str, str], *, host: str, port: int, processes: int,
                 grace_s: float = 20.0, max_restarts: int = 5, restart_window_s: float = 60.0) -> None:
        self.environ, self.host, self.port, self.processes = dict(environ), host, port, processes
        self.grace_s, self.max_restarts, self.restart_window_s = grace_s, max_restarts, restart_window_s
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self._restarts: list[float] = []
        self._stopping = False

    def run(self) -> int:
        try:
            reserved = bind(self.host, self.port, reuse_port=True, listen=False)
        except OSError as exc:
            print(f"error: cannot bind {self.host}:{self.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        self.port = reserved.getsockname()[1]
        peers_dir = Path(tempfile.mkdtemp(prefix="edge-peers-"))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for index in range(self.processes):
                self.children[index] = self._spawn(index, peers_dir)
            log.info("edge supervisor %d: %d processes on %s:%d", os.getpid(), self.processes, self.host, self.port)
            return self._watch(peers_dir)
        finally:
            self._stop_all()
            reserved.close()
            shutil.rmtree(peers_dir, ignore_errors=True)

    def _spawn(self, index: int, peers_dir: Path) -> subprocess.Popen[bytes]:
        env = {**self.environ, INDEX_ENV: str(index), PEERS_DIR_ENV: str(peers_dir), "EDGE_PORT": str(self.port)}
        return subprocess.Popen([sys.executable, "-m", "edge_container", "serve"], env=env,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - the supervisor has no threads

    def _watch(self, peers_dir: Path) -> int:
        while not self._stopping:
            time.sleep(0.2)
            for index, child in list(self.children.items()):
                code = child.poll()
                if code is None or self._stopping:
                    continue
                if code in _FATAL:
                    log.error("edge process %d failed to start (exit %d): stopping", index, code)
                    return code
                if not self._may_restart():
                    log.error("edge process %d exited (%d); %d restarts within %.0f s: giving up", index, code,
                              self.max_restarts, self.restart_window_s)
                    return 1
                log.warning("edge process %d exited (%d): starting it again", index, code)
                self.children[index] = self._spawn(index, peers_dir)
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self.restart_window_s] + [now]
        if len(self._restarts) > self.max_restarts:
            return False
        time.sleep(min(5.0, 0.5 * 2 ** (len(self._restarts) - 1)))  # backoff: a crash loop must not spin
        return True

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
