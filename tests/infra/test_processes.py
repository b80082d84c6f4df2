"""infra.processes: a child in a process group of its own, its log private, its ready line read back, and
the whole group gone after a stop; ports probed before anything starts."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from infra.errors import StackError
from infra.processes import ChildProcess, Port, check_free, fake_aws_env, free_port

# A child that starts a grandchild in its own group, says it is ready, and waits.
PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("READY here", flush=True)
time.sleep(60)
"""


def test_a_child_and_what_it_started_are_gone_after_stop(tmp_path: Path) -> None:
    child = ChildProcess("sleeper", [sys.executable, "-c", PARENT], fake_aws_env("", "us-east-1"),
                         tmp_path / "logs" / "sleeper.log")
    child.start()
    assert child.ready_line("READY ", timeout_s=30) == "here"
    pgid = child.pid
    assert pgid is not None and os.getpgid(pgid) == pgid  # a group of its own

    child.stop(grace_s=5)

    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert stat.S_IMODE(child.log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(child.log_path.parent.stat().st_mode) == 0o700


def test_a_child_that_exits_while_starting_is_an_error_with_its_log(tmp_path: Path) -> None:
    child = ChildProcess("broken", [sys.executable, "-c", "print('no luck'); raise SystemExit(3)"], {},
                         tmp_path / "broken.log")
    child.start()

    with pytest.raises(StackError, match=r"broken exited with status 3 while starting(.|\n)*no luck"):
        child.ready_line("READY ", timeout_s=30)


def test_a_port_in_use_is_named_with_the_flag_that_chooses_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} on 127.0.0.1 \(the edge\) is not free.*--edge-port"):
            check_free("127.0.0.1", port, Port("the edge", "--edge-port N"))
    check_free("127.0.0.1", 0, Port("anything", "--x"))  # 0: a free one is picked later
    assert 0 < free_port() < 65536


def test_children_get_fake_credentials_and_none_of_the_users_aws_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("EDGE_POLICY", "margin")

    env = fake_aws_env("http://127.0.0.1:5000", "us-east-1")

    assert "AWS_PROFILE" not in env and "EDGE_POLICY" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "testing" and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
