"""One kept-alive HTTP connection to one base URL, every request ending by its deadline: what
`cloud_functions.openai_backend` calls an OpenAI-compatible API through.

Every attempt ends within its `timeout_s` however the server behaves (silent, or trickling bytes): a
watchdog closes the socket at the deadline. A kept-alive connection the server closed while idle is tried
once more on a fresh one. Failures are `TransportError` (no answer: the connection failed or broke) and
`TransportTimeout` (no complete answer in time); any HTTP answer, whatever its status, is an `HttpReply`.

Why no HTTP library: the standard library's http.client does everything this needs (one kept-alive
connection per execution environment, TLS with the system's CAs, a hard deadline), so the Lambda package
gains no dependency, and the behaviour tested is this module's, not a library default.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MIN_ATTEMPT_S = 0.05  # below this, an attempt (or a connection) cannot succeed: do not start it
_BROKEN = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class TransportError(Exception):
    """No HTTP answer: the connection failed or broke."""


class TransportTimeout(TransportError):
    """No complete HTTP answer before the deadline."""


class HttpTransport:
    """POSTs to one base URL over one kept-alive connection, each request ending by its deadline.

    Not thread-safe: a Lambda execution environment runs one invocation at a time."""

    def __init__(self, base_url: str, *, connect_timeout_s: float = 3.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout_s = connect_timeout_s
        self._ssl_context = ssl_context
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> HttpReply:
        deadline = time.monotonic() + timeout_s
        for fresh in (self._connection is None, True):
            try:
                return self._post(path, body, headers, deadline)
            except _BROKEN as exc:
                # A kept-alive connection the server closed while idle fails at once: one fresh try.
                if fresh or time.monotonic() >= deadline - MIN_ATTEMPT_S:
                    raise TransportError(f"the connection broke: {type(exc).__name__}") from None
        raise AssertionError("unreachable")  # the second pass always returns or raises

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _post(self, path: str, body: bytes, headers: Mapping[str, str], deadline: float) -> HttpReply:
        aborted = threading.Event()
        connection = self._connect(deadline)
        sock = connection.sock

        def abort() -> None:  # the hard deadline: a server trickling bytes never resets it
            aborted.set()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.request("POST", self._prefix + path, body=body, headers=dict(headers))
            response = connection.getresponse()
            data = response.read()
            reply = HttpReply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
            if response.will_close:
                self.close()
            return reply
        except (TimeoutError, socket.timeout):
            self.close()
            raise TransportTimeout("no answer before the deadline") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if aborted.is_set():
                raise TransportTimeout("no complete answer before the deadline") from None
            if isinstance(exc, _BROKEN):
                raise
            raise TransportError(f"the request failed: {type(exc).__name__}") from None
        finally:
            watchdog.cancel()

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        left = deadline - time.monotonic()
        if left < MIN_ATTEMPT_S:
            raise TransportTimeout("no time left to connect")
        if self._connection is None:
            timeout = min(self._connect_timeout_s, left)
            connection: http.client.HTTPConnection
            if self._https:
                if self._ssl_context is None:  # the system's CAs, loaded once per execution environment
                    self._ssl_context = ssl.create_default_context()
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._ssl_context)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            try:
                connection.connect()
            except (TimeoutError, socket.timeout):
                connection.close()
                raise TransportTimeout(f"no connection within {timeout:.1f} s") from None
            except OSError as exc:
                connection.close()
                raise TransportError(f"cannot connect: {type(exc).__name__}") from None
            self._connection = connection
        assert self._connection.sock is not None
        self._connection.sock.settimeout(max(MIN_ATTEMPT_S, deadline - time.monotonic()))
        return self._connection
