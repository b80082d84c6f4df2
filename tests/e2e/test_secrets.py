"""The local stack keeps its secrets (API keys, the admin token, the edge's client key) off every child's
command line (`ps` shows it to every user) and out of its log files, and the logs are readable by their
owner only. Real processes started by `infra.stack.LocalStack`, real /proc, real log files."""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest

from infra.stack import LocalStack
from tests.e2e.conftest import EDGE_ENV

pytestmark = pytest.mark.slow

UNSURE = "play music"  # the tiny edge model is unsure of it: escalated by the default policy too


def group_cmdlines(groups: Iterable[int]) -> dict[int, str]:
    """The command line of every process in these process groups (a child and whatever it started)."""
    wanted = set(groups)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # ended while we looked
            continue
        if int(fields[2]) in wanted:  # state, ppid, pgrp
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode("utf-8", errors="replace")
    return found


def test_no_secret_is_on_a_child_command_line_or_in_a_log_and_logs_are_private(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    # Given the local stack, and traffic through every child: answers from the edge and the cloud, a
    # refused key at the cloud, the admin API, and a cloud restart (its start is logged a second time)
    with LocalStack(tiny_artifact, work_dir=tmp_path, edge_env=EDGE_ENV) as stack:
        secrets = {"tenant API key": stack.api_key, "service API key": stack.service_api_key,
                   "admin token": stack.admin_token, "edge client key": stack.edge_client_key}
        edge = httpx.Client(base_url=stack.edge_url, headers=stack.edge_headers, timeout=60)
        with edge:
            for route in ("auto", "cloud"):
                answer = edge.post("/v1/predict", json={"text": UNSURE, "route": route})
                assert answer.status_code == 200, answer.text
                assert answer.json()["results"][0]["source"] == "cloud", answer.text
            assert edge.get("/admin/model", headers={"x-admin-token": stack.admin_token}).status_code == 200
            refused = httpx.post(f"{stack.cloud_url}/v1/infer", json={"texts": ["hi"]},
                                 headers={"x-api-key": stack.api_key[::-1]}, timeout=30)
            assert refused.status_code == 403
            stack.restart_cloud()
            again = edge.post("/v1/predict", json={"text": UNSURE, "route": "cloud"})
            assert again.status_code == 200, again.text
        # When every process of every child's group is looked at while running
        cmdlines = group_cmdlines(stack.pids.values())
        assert len(cmdlines) >= 3, cmdlines  # moto, cloud, edge
    # ... and every log file once the stack has stopped (stop messages included)
    logs_dir = tmp_path / "logs"
    log_files = sorted(path for path in logs_dir.rglob("*") if path.is_file())
    assert {path.name for path in log_files} >= {"moto.log", "cloud.log", "edge.log"}

    # Then no secret is on any command line
    on_command_lines = [(what, pid) for what, value in secrets.items()
                        for pid, cmdline in cmdlines.items() if value in cmdline]
    assert on_command_lines == [], on_command_lines

    # And no secret is in any log
    in_logs = [(what, path.name) for path in log_files for what, value in secrets.items()
               if value.encode() in path.read_bytes()]
    assert in_logs == [], in_logs

    # And only their owner can read the logs
    assert stat.S_IMODE(logs_dir.stat().st_mode) == 0o700, oct(logs_dir.stat().st_mode)
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in log_files}
    assert all(stat.S_IMODE(path.stat().st_mode) & 0o077 == 0 for path in log_files), modes
