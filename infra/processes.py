"""Child processes of the local stack: started in process groups of their own, logged to private files,
watched for a ready line, stopped with a grace period; and the ports they listen on, probed first.

    child = ChildProcess("moto", argv, env, logs / "moto.log")
    child.start(); url = child.ready_line("READY ", timeout_s=60)   # StackError if it exits or is silent
    child.stop(grace_s=10)                                           # SIGTERM to the group, then SIGKILL
    check_free("127.0.0.1", 8080, Port("the edge service", "--edge-port N"))
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.errors import StackError

REPO_ROOT = Path(__file__).resolve().parent.parent  # where every child runs


# --------------------------------------------------------------------------- one child process


class ChildProcess:
    """A subprocess in its own process group, its stdout and stderr appended to a log file.

    A file, not a pipe: an unread pipe fills up and blocks the child; a file also survives the child for
    troubleshooting. Readiness is read back from the part of the file this start wrote."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, list(argv), dict(env), log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        private_dir(self.log_path.parent)
        # 0600 from the start, and again if an older run left it readable to others.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            self._offset = log.tell()
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signals reach it and its children only
                preexec_fn=_die_with_parent if _in_main_thread() else None,  # noqa: PLW1509
            )

    def ready_line(self, prefix: str, timeout_s: float) -> str:
        """The rest of the first output line starting with `prefix`; StackError if the child exits first
        or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self._new_output().splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            self._fail_if_dead()
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} printed no {prefix.strip()!r} line within {timeout_s:.0f} s"
                                 + self.tail_note())
            time.sleep(0.05)

    def wait_http_ok(self, url: str, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                self._fail_if_dead()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise StackError(f"{self.name} was not ready ({url}) within {timeout_s:.0f} s"
                                     + self.tail_note())
                time.sleep(0.1)

    def stop(self, grace_s: float) -> None:
        """SIGTERM to the group, SIGKILL after `grace_s`; then SIGKILL whatever is left of the group, and
        wait until it is gone (the cloud's execution environments are grandchildren: init reaps them)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        signal_group(process.pid, signal.SIGKILL)  # stragglers the leader left behind, if any
        wait_group_gone(process.pid)

    def kill(self) -> None:
        """SIGKILL, no grace: what a crash looks like from outside."""
        process, self.process = self.process, None
        if process is not None:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            wait_group_gone(process.pid)

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def tail_note(self) -> str:
        tail = self.tail()
        return f"\n--- last lines of {self.log_path}:\n{tail}" if tail else ""

    def _new_output(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _fail_if_dead(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            signal_group(self.process.pid, signal.SIGKILL)  # anything it started and left behind
            self.process = None
            raise StackError(f"{self.name} exited with status {code} while starting" + self.tail_note())


def fake_aws_env(endpoint_url: str, region: str) -> dict[str, str]:
    """A child's environment: the parent's without any AWS/Powertools/EDGE settings of the user's, plus fake
    credentials and, once `endpoint_url` is known, every AWS endpoint pointed at it (the local moto)."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "EDGE_"))}
    python_path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **kept,
        "PYTHONPATH": os.pathsep.join(python_path),
        "PYTHONUNBUFFERED": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


def private_dir(path: Path) -> Path:
    """`path` created if missing, then 0700 (mkdir's mode is cut by the umask, and the folder may be old)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> Path:
    """`text` in a 0600 file in a 0700 folder: written, never first created readable to others."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait_group_gone(pgid: int, timeout_s: float = 5.0) -> bool:
    """Whether no process of the group is left (zombies included) within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's process now has that group id: ours are gone
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the launcher dies without cleaning up (e.g. kill -9).

    Only armed for children started from the main thread: the signal fires when the *thread* that
    started the child exits, which for the main thread means the launcher itself."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the clean shutdown paths still apply
        pass


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True, slots=True)
class Port:
    what: str
    flag: str  # how to choose another one


def check_free(host: str, port: int, about: Port) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"port {port} on {host} ({about.what}) is not free: {exc.strerror or exc}. "
                f"Stop what uses it (e.g. `lsof -i :{port}`), or choose another port with {about.flag} "
                "(0 picks a free one)"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
