"""Slow, oversized and numerous clients cannot exhaust the edge (issue 20, #3 and #4): the real edge app and
its uvicorn listener on loopback with `edge_container.http_limits`, driven by raw sockets.

Deadlines are set small here (0.5 s) and every wait for an answer is bounded (`ANSWER_S`): on a listener
without the limits these tests fail by getting no answer in time, not by hanging.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from edge_container.app import create_app
from edge_container.errors import ConfigurationError
from edge_container.http_limits import ConnectionGate
from edge_container.settings import Settings
from edge_container.wiring import EdgeStack
from tests.edge_container.conftest import CLIENT_KEY, ServerThread, edge_settings, serve_edge

DEADLINE_S = 0.5  # EDGE_HEAD_TIMEOUT_S / EDGE_BODY_TIMEOUT_S in these tests
ANSWER_S = 5.0  # how long a test waits for an answer: ten deadlines
pytestmark = pytest.mark.timeout(120)


class LimitedServer(ServerThread):
    """conftest's server thread, configured the way `python -m edge_container serve` configures uvicorn."""

    def __init__(self, settings: Settings) -> None:
        stack = EdgeStack.create(settings)
        self.gate = ConnectionGate.for_listener(settings, stack.metrics, "api")
        self.stack = stack
        app = create_app(settings, stack=stack)
        super().__init__(app)
        self.server.config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                            timeout_graceful_shutdown=5, timeout_keep_alive=settings.keep_alive_s,
                                            **self.gate.uvicorn_options())

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_S, source_address=(source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def wait_open(self, count: int) -> None:
        """Until the listener holds `count` open connections (accept runs in the server's own thread)."""
        deadline = time.monotonic() + ANSWER_S
        while (held := len(self.server.server_state.connections)) != count:
            assert time.monotonic() < deadline, f"{held} connections open, not {count}"
            time.sleep(0.01)

    def rejected(self) -> dict[str, float]:
        text = self.stack.metrics.exposition().decode()
        return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "edge_http_rejected" for s in f.samples if s.labels["listener"] == "api"}


@contextmanager
def limited_edge(model_dir: Path, **overrides: Any) -> Iterator[LimitedServer]:
    limits = {"head_timeout_s": DEADLINE_S, "body_timeout_s": DEADLINE_S, **overrides}
    with LimitedServer(edge_settings(model_dir, **limits)) as server:
        yield server


def get(path: str = "/healthz", *extra: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "host: edge", *extra, "", ""]).encode()


def post(body: bytes, *, length: int | None = None) -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nhost: edge\r\nx-api-key: {CLIENT_KEY}\r\ncontent-type: application/json"
            f"\r\ncontent-length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def status_of(responses: BinaryIO) -> int:
    """The status of the next response on a keep-alive connection (`sock.makefile("rb")`), read whole."""
    status = int(responses.readline().split()[1])
    length = 0
    while (line := responses.readline()) != b"\r\n":
        assert line, "closed in the middle of a response"
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    assert len(responses.read(length)) == length
    return status


def ask(sock: socket.socket, request: bytes) -> int:
    """Send one request, read its whole response: the status."""
    sock.sendall(request)
    with sock.makefile("rb") as responses:
        return status_of(responses)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def refusal(data: bytes) -> tuple[int, dict[str, str], str]:
    """(status, headers, error code) of the one response a refused connection got."""
    assert data, "closed without an answer"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    return int(lines[0].split()[1]), headers, json.loads(body)["error"]["code"]


def trickle(sock: socket.socket, lines: list[bytes], every_s: float) -> tuple[bytes, float]:
    """Send one line every `every_s` until the server answers or closes: what it sent until it closed, and
    how long after the connection opened it closed."""
    opened = time.monotonic()
    sock.settimeout(every_s)
    for line in lines:
        try:
            sock.sendall(line)
            first = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            first = b""
        sock.settimeout(ANSWER_S)
        data = first + (read_until_closed(sock) if first else b"")
        return data, time.monotonic() - opened
    raise AssertionError(f"no answer after {len(lines) * every_s:.1f} s")


# --- #3: slow clients ----------------------------------------------------------------------------------------

def test_a_slow_header_sender_gets_408_and_is_closed_within_the_deadline(tiny_artifact: Path) -> None:
    with limited_edge(tiny_artifact) as server, closing(server.connect()) as sock:
        lines = [b"GET /healthz HTTP/1.1\r\n"] + [b"x-slow-%d: 1\r\n" % i for i in range(50)]  # 10 s of lines
        data, closed_after = trickle(sock, lines, every_s=0.2)
        status, _, code = refusal(data)
        assert (status, code) == (408, "REQUEST_TIMEOUT")
        assert DEADLINE_S * 0.9 <= closed_after < DEADLINE_S + 2.0
        assert server.rejected()["head_timeout"] == 1
        server.wait_open(0)


def test_a_body_that_stops_is_closed_with_408(tiny_artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    with limited_edge(tiny_artifact) as server, closing(server.connect()) as sock:
        sock.sendall(post(b'{"text": "w', length=1000))  # 11 of the 1,000 announced bytes, then nothing
        started = time.monotonic()
        status, _, code = refusal(read_until_closed(sock))
        assert (status, code) == (408, "REQUEST_TIMEOUT")
        assert time.monotonic() - started < DEADLINE_S + 2.0
        assert server.rejected()["body_timeout"] == 1
        deadline = time.monotonic() + ANSWER_S  # the handler sees the disconnect once the connection is gone
        while 'code="CLIENT_DISCONNECTED"' not in server.stack.metrics.exposition().decode():
            assert time.monotonic() < deadline, "the handler never saw the client leave"
            time.sleep(0.01)
    # A client leaving mid-body is not a bug: no ERROR, no traceback (a flood of them would flood the log)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_body_that_stops_after_its_answer_is_closed_without_a_second_one(tiny_artifact: Path) -> None:
    with limited_edge(tiny_artifact) as server, closing(server.connect()) as sock:
        sock.sendall(post(b'{"text": "w', length=2 << 20))  # over EDGE_MAX_BODY_BYTES: 413 on the length
        with sock.makefile("rb") as responses:
            assert status_of(responses) == 413
            assert responses.read() == b""  # the body never comes: closed at its deadline, nothing more
        assert server.rejected()["body_timeout"] == 1


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(tiny_artifact: Path) -> None:
    with limited_edge(tiny_artifact) as server, closing(server.connect()) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # as an idle keep-alive connection is: no 408 to misread
        assert DEADLINE_S * 0.9 <= time.monotonic() - started < DEADLINE_S + 2.0
        assert server.rejected()["no_request"] == 1


def test_a_keep_alive_client_is_unaffected(tiny_artifact: Path) -> None:
    """Not a defect's test (it passes without the limits too): what the deadlines must leave alone."""
    with limited_edge(tiny_artifact) as server, closing(server.connect()) as sock:
        for i in range(300):
            assert ask(sock, post(b'{"text": "what is the weather today"}') if i % 2 else get()) == 200
        time.sleep(2 * DEADLINE_S)  # idle between requests: the keep-alive limit's (75 s), not a head deadline
        sock.sendall(get() * 3)  # pipelined
        with sock.makefile("rb") as responses:
            assert [status_of(responses) for _ in range(3)] == [200, 200, 200]
        sock.sendall(get()[:10])  # a head in two parts, the second well within the deadline
        time.sleep(DEADLINE_S / 5)
        assert ask(sock, get()[10:]) == 200
        assert sum(server.rejected().values()) == 0


# --- #4: oversized heads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("finished", [True, False], ids=["whole", "unfinished"])
def test_a_megabyte_of_headers_gets_431(tiny_artifact: Path, finished: bool) -> None:
    big = b"x-big: " + b"a" * (1 << 20)
    head = get("/healthz")[:-2] + big + (b"\r\n\r\n" if finished else b"")
    with limited_edge(tiny_artifact) as server, closing(server.connect()) as sock:
        sock.sendall(head)  # the server keeps reading (and dropping) for a moment after it answers
        status, _, code = refusal(read_until_closed(sock))
        assert (status, code) == (431, "HEADERS_TOO_LARGE")
        assert server.rejected()["header_too_large"] == 1


def test_a_head_just_under_the_limit_is_served(tiny_artifact: Path) -> None:
    with limited_edge(tiny_artifact, max_header_bytes=4096) as server, closing(server.connect()) as sock:
        assert ask(sock, get("/healthz", "x-pad: " + "a" * 3900)) == 200
        sock.sendall(get("/healthz", "x-pad: " + "a" * 4100))
        assert refusal(read_until_closed(sock))[0] == 431


def test_too_many_headers_get_431(tiny_artifact: Path) -> None:
    with limited_edge(tiny_artifact, max_headers=20) as server:
        with closing(server.connect()) as sock:
            assert ask(sock, get("/healthz", *(f"x-h{i}: 1" for i in range(19)))) == 200  # with host: 20
        with closing(server.connect()) as sock:
            sock.sendall(get("/healthz", *(f"x-h{i}: 1" for i in range(20))))
            status, _, code = refusal(read_until_closed(sock))
            assert (status, code) == (431, "HEADERS_TOO_LARGE")
        assert server.rejected()["too_many_headers"] == 1


# --- #3: how many connections --------------------------------------------------------------------------------

def test_a_connection_flood_is_refused_while_a_good_client_is_served(tiny_artifact: Path) -> None:
    with limited_edge(tiny_artifact, head_timeout_s=30.0, max_connections=8) as server, \
            closing(server.connect()) as good:
        assert ask(good, get()) == 200
        flood = [server.connect(source=f"127.0.0.{2 + i % 3}") for i in range(7)]  # idle: they hold a place
        try:
            server.wait_open(8)
            for _ in range(5):
                with closing(server.connect(source="127.0.0.9")) as extra:
                    status, headers, code = refusal(read_until_closed(extra))
                    assert (status, code, headers["retry-after"]) == (503, "TOO_MANY_CONNECTIONS", "1")
            for _ in range(20):  # the client already in keeps being served
                assert ask(good, post(b'{"text": "what is the weather today"}')) == 200
        finally:
            for sock in flood:
                sock.close()
        server.wait_open(1)  # the places come back
        with closing(server.connect(source="127.0.0.9")) as later:
            assert ask(later, get()) == 200
        assert server.rejected()["connection_limit"] == 5


def test_one_client_address_is_capped_and_others_still_get_in(tiny_artifact: Path) -> None:
    with limited_edge(tiny_artifact, head_timeout_s=30.0, max_connections=64,
                      max_connections_per_client=4) as server:
        held = [server.connect() for _ in range(4)]
        try:
            server.wait_open(4)
            with closing(server.connect()) as fifth:
                status, _, code = refusal(read_until_closed(fifth))
                assert (status, code) == (503, "TOO_MANY_CONNECTIONS")
            with closing(server.connect(source="127.0.0.2")) as other:
                assert ask(other, get()) == 200
            assert ask(held[0], get()) == 200
        finally:
            for sock in held:
                sock.close()
        assert server.rejected()["client_connection_limit"] == 1


# --- settings ------------------------------------------------------------------------------------------------

def test_the_limits_have_device_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.max_header_bytes, settings.max_headers, settings.head_timeout_s, settings.body_timeout_s,
            settings.max_connections, settings.max_connections_per_client) == (16384, 100, 10.0, 30.0, 1024, 256)
    small = Settings.from_env({"EDGE_MAX_CONNECTIONS": "100"})
    assert small.max_connections_per_client == 100  # never above the total


@pytest.mark.parametrize(("key", "value"), [
    ("EDGE_MAX_HEADER_BYTES", "100"), ("EDGE_MAX_HEADER_BYTES", "16k"), ("EDGE_MAX_HEADERS", "0"),
    ("EDGE_HEAD_TIMEOUT_S", "0"), ("EDGE_BODY_TIMEOUT_S", "-1"), ("EDGE_MAX_CONNECTIONS", "0"),
    ("EDGE_MAX_CONNECTIONS_PER_CLIENT", "2000"),
])
def test_bad_limits_fail_start_up_naming_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({key: value})
    assert caught.value.key == key and key in str(caught.value)


# --- every listener: the entry point (and its EDGE_PROCESSES children), the debug listener -------------------

def test_the_entry_points_processes_apply_the_limits(tiny_artifact: Path) -> None:
    import httpx

    from tests.edge_container.test_processes import _free_port, _launch, _stop, _wait_ready

    port = _free_port()
    proc = _launch(port, tiny_artifact, processes=2, EDGE_HEAD_TIMEOUT_S=str(DEADLINE_S))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _wait_ready(client, proc)
            for _ in range(4):  # a fresh connection each: the kernel spreads them over both children
                with closing(socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S)) as sock:
                    data, _ = trickle(sock, [b"GET /healthz HTTP/1.1\r\n"] + [b"x: 1\r\n"] * 50, every_s=0.2)
                    assert refusal(data)[0] == 408
                with closing(socket.create_connection(("127.0.0.1", port), timeout=ANSWER_S)) as sock:
                    sock.sendall(get("/healthz", "x-big: " + "a" * 100_000))
                    assert refusal(read_until_closed(sock))[0] == 431
            rejected = [s for f in text_string_to_metric_families(client.get("/metrics").text)
                        if f.name == "edge_http_rejected" for s in f.samples if s.value]
            assert {s.labels["reason"] for s in rejected} == {"head_timeout", "header_too_large"}
    finally:
        assert _stop(proc)[0] == 0


def test_the_debug_listener_applies_the_limits(tiny_artifact: Path, tmp_path: Path) -> None:
    from tests.edge_container.test_debug import CA

    operators, devices = CA(tmp_path, "operators"), CA(tmp_path, "devices")
    server_cert, operator = devices.issue("edge-1", server=True), operators.issue("alice")
    settings = edge_settings(tiny_artifact, debug_port=0, debug_tls_cert=server_cert.cert,
                             debug_tls_key=server_cert.key, debug_tls_client_ca=operators.pem,
                             head_timeout_s=DEADLINE_S)
    context = ssl.create_default_context(cafile=str(devices.pem))
    context.load_cert_chain(str(operator.cert), str(operator.key))
    with serve_edge(settings) as (_, stack):
        raw = socket.create_connection(("127.0.0.1", stack.debug_port), timeout=ANSWER_S)
        with closing(context.wrap_socket(raw, server_hostname="127.0.0.1")) as sock:
            data, _ = trickle(sock, [b"GET /debug/model HTTP/1.1\r\n"] + [b"x: 1\r\n"] * 50, every_s=0.2)
            status, _, code = refusal(data)
            assert (status, code) == (408, "REQUEST_TIMEOUT")
        raw = socket.create_connection(("127.0.0.1", stack.debug_port), timeout=ANSWER_S)
        with closing(context.wrap_socket(raw, server_hostname="127.0.0.1")) as sock:
            sock.sendall(get("/debug/model", "x-big: " + "a" * 100_000))
            assert refusal(read_until_closed(sock))[0] == 431
