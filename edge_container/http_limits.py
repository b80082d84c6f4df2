"""Connection hygiene on the edge's HTTP listeners: what a slow, oversized or numerous client may hold.

uvicorn's httptools protocol sets no limit on a request head's size or header count, no deadline for
receiving a head or a body (`timeout_keep_alive` runs only between requests) and no bound on connections:
one header line every 2 s kept a connection for good, and 200 connections each sending 1 MB of unfinished
headers took the process from 132 to 629 MB (issue 20). `LimitedHttpToolsProtocol` is that protocol with:

- a request head (request line and headers) of at most `max_header_bytes`, and at most `max_headers`
  headers: 431 and close. Bytes of a head still incomplete are counted as they arrive, so the parser holds
  at most the limit plus one socket read (256 KB) before the connection is refused;
- a deadline for a whole head, from the connection's opening (first request) or the head's first byte
  (later ones), and one for a whole body from the end of its head: 408 and close. A connection that never
  sent a byte is closed without an answer, as an idle keep-alive one is (what uvicorn does at
  `timeout_keep_alive`): a client could read a 408 there as the answer to a request it sends just then;
- at most `max_connections` open connections per listener and `max_connections_per_client` per client
  address: a new one above either gets a 503 with the service's error body, written at accept (it fits any
  socket's send buffer) and closed at once. A client that has sent its request by then may see a reset
  instead of the 503: the kernel resets a connection closed with unread data, and lingering on each one to
  avoid that would hand a flood the connections the cap protects.

A refusal after a request began (431, 408) half-closes the connection (not on TLS) and drops what the
client still sends for at most `LINGER_S`, so a client still writing its oversized head reads the 431
instead of a reset.

Per process: with EDGE_PROCESSES=N each child caps its own connections (N x the cap in all), and the memory
bound is per process anyway. The debug listener (TLS) is guarded the same way; its TLS handshake is
asyncio's, bounded by its own 60 s timeout, and a connection counts from the end of the handshake.

The cost on the hot path: a few integer additions per request and one attribute check per read; a deadline
timer only while a head or a body is incomplete at the end of a read (bench/results/http_limits.md).

Without httptools (no wheel for a platform) uvicorn's h11 protocol serves, with the header-size limit
only (`h11_max_incomplete_event_size`); `uvicorn_options` logs that deadlines and caps are then not applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from uvicorn.protocols.utils import get_remote_addr

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # pragma: no cover - the image pins httptools (tests/edge_container/test_packaging.py)
    httptools = None
    HttpToolsProtocol = asyncio.Protocol  # type: ignore[misc,assignment]  # the subclass is then never used

if TYPE_CHECKING:
    from edge_container.metrics import Metrics
    from edge_container.settings import Settings

log = logging.getLogger("edge_container.http_limits")

LINGER_S: Final = 1.0  # after a 431 / 408: how long what the client still sends is read and dropped
REASONS: Final = ("header_too_large", "too_many_headers", "head_timeout", "body_timeout", "no_request",
                  "connection_limit", "client_connection_limit")


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    code: str  # a stable error code, like edge_container.errors' (the service's error shape)
    message: str

    def response(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        body = json.dumps({"error": {"code": self.code, "message": self.message}}).encode()
        head = [STATUS_LINE[self.status], *(name + b": " + value + b"\r\n" for name, value in default_headers),
                b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body)]
        if self.status == 503:
            head.append(b"retry-after: 1\r\n")
        return b"".join([*head, b"\r\n", body])


_REFUSALS: Final = {
    "header_too_large": _Refusal(431, "HEADERS_TOO_LARGE", "the request head exceeds the size limit"),
    "too_many_headers": _Refusal(431, "HEADERS_TOO_LARGE", "the request has too many headers"),
    "head_timeout": _Refusal(408, "REQUEST_TIMEOUT", "the request head did not arrive in time"),
    "body_timeout": _Refusal(408, "REQUEST_TIMEOUT", "the request body did not arrive in time"),
    "connection_limit": _Refusal(503, "TOO_MANY_CONNECTIONS", "the server has too many open connections"),
    "client_connection_limit": _Refusal(503, "TOO_MANY_CONNECTIONS",
                                        "this client address has too many open connections"),
}


class ConnectionGate:
    """What one listener's connections share: the limits (EDGE_MAX_HEADER_BYTES, ... in `settings`), how many
    connections are open, in all and per client address, and how many were refused, by reason (read by the
    metrics at scrape time: nothing per request)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open = 0
        self.by_client: dict[str, int] = {}
        self.refused: Counter[str] = Counter(dict.fromkeys(REASONS, 0))

    @classmethod
    def for_listener(cls, settings: Settings, metrics: Metrics, listener: str) -> ConnectionGate:
        """The gate of one listener (`api`, `debug`), shown in `metrics` under that name."""
        gate = cls(settings)
        metrics.watch_listener(listener, gate.connections, gate.refusals)
        return gate

    def admit(self, client: str) -> str | None:
        """Count a new connection in, or say why not (a reason of REASONS)."""
        if self.open >= self.settings.max_connections:
            return "connection_limit"
        held = self.by_client.get(client, 0)
        if held >= self.settings.max_connections_per_client:
            return "client_connection_limit"
        self.open += 1
        self.by_client[client] = held + 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        held = self.by_client.pop(client) - 1
        if held:
            self.by_client[client] = held

    def refusals(self) -> Mapping[str, int]:
        return self.refused

    def connections(self) -> int:
        return self.open

    def uvicorn_options(self) -> dict[str, Any]:
        """The `uvicorn.Config` keywords that apply these limits."""
        if httptools is None:  # pragma: no cover - see the module's docstring
            log.warning("httptools is not installed: uvicorn's h11 protocol serves with a header-size limit "
                        "only; no head or body deadline, no connection cap")
            return {"http": "h11", "h11_max_incomplete_event_size": self.settings.max_header_bytes}
        return {"http": partial(LimitedHttpToolsProtocol, gate=self)}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; `data_received` answers it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# Where a connection is in its current request: the deadline and the byte count depend on it.
_IDLE, _HEAD, _BODY = 0, 1, 2


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of one `ConnectionGate` (see the module's docstring)."""

    def __init__(self, *args: Any, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        settings = gate.settings
        self._max_head, self._max_headers = settings.max_header_bytes, settings.max_headers
        self._head_timeout, self._body_timeout = settings.head_timeout_s, settings.body_timeout_s
        self._phase = _IDLE
        self._head_bytes = 0  # received while a head was incomplete: bounds what the parser buffers
        self._head_size = 0  # the current head's request line and headers, as parsed
        self._deadline: asyncio.TimerHandle | None = None
        self._admitted: str | None = None  # the client address this connection is counted under
        self._closing = False  # refused: what the client still sends is dropped

    # Connections ---------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        remote = get_remote_addr(transport)
        client = remote[0] if remote else ""
        reason = self.gate.admit(client)
        if reason is not None:
            self.transport, self._closing = transport, True
            self.gate.refused[reason] += 1
            transport.write(_REFUSALS[reason].response(self.server_state.default_headers))
            transport.close()
            return
        self._admitted = client
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self._head_timeout, self._on_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._admitted is not None:
            self.gate.release(self._admitted)
            self._admitted = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:  # pragma: no cover - the edge serves no WebSocket
        # The connection passes to another protocol, whose end this one never sees: uncount it now.
        self._cancel_deadline()
        if self._admitted is not None:
            self.gate.release(self._admitted)
            self._admitted = None
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the refusals raised by the callbacks below and the head/body deadlines armed
        if self._closing:
            return
        self._unset_keepalive_if_required()
        if self._phase != _BODY:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.reason)
            else:
                self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._phase == _HEAD:
            if self._head_bytes > self._max_head:  # the head is still incomplete and already too large
                self._refuse("header_too_large")
            elif self._deadline is None:
                self._deadline = self.loop.call_later(self._head_timeout, self._on_deadline)
        elif self._phase == _BODY and self._deadline is None:
            self._deadline = self.loop.call_later(self._body_timeout, self._on_deadline)

    def _invalid(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    # Parser callbacks ----------------------------------------------------------------------------------------
    # The base class is named, not super(): a super object per callback is measurable on the hot path.
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._phase, self._head_size = _HEAD, 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise _Refused("header_too_large")
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # "name: value\r\n"
        if self._head_size > self._max_head:
            raise _Refused("header_too_large")
        # uvicorn 0.54.0's on_header, inline: once per header, a call less is worth it
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if len(self.headers) > self._max_headers:  # their bytes are bounded above; their number, here
            raise _Refused("too_many_headers")
        self._phase, self._head_bytes = _BODY, 0
        if self._deadline is not None:
            self._cancel_deadline()
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._deadline is not None:
            self._cancel_deadline()
        HttpToolsProtocol.on_message_complete(self)

    # Refusals ------------------------------------------------------------------------------------------------
    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self._closing:  # the linger after a refusal is over
            self.transport.close()
        elif self._phase == _IDLE:  # a connection that never sent a request: closed quietly
            self.gate.refused["no_request"] += 1
            self._closing = True
            self.transport.close()
        else:
            self._refuse("head_timeout" if self._phase == _HEAD else "body_timeout")

    def _refuse(self, reason: str) -> None:
        """Answer `reason` unless an answer is already given or on its way on this connection; then close."""
        self.gate.refused[reason] += 1
        self._cancel_deadline()
        self._closing = True
        self.parser = None  # type: ignore[assignment]  # drop the partial head it buffers now, not at close
        cycle = self.cycle
        if self._phase == _BODY:
            # The app answered before the body ended (a 413 on the declared length), or this request waits
            # behind a pipelined one being answered: a 408 would follow or cut into that answer.
            if cycle is None or cycle.response_started or self.pipeline:
                self.transport.close()
                return
            cycle.disconnected = True  # the app waiting for this body sees a disconnect and writes nothing
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:  # a head behind a request being answered
            self.transport.close()
            return
        self.transport.write(_REFUSALS[reason].response(self.server_state.default_headers))
        if self.transport.can_write_eof():  # not TLS: the client reads an end at once, not after the linger
            self.transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_S, self._on_deadline)


def check_open_files(max_connections: int, *, headroom: int = 128) -> None:
    """Make room for `max_connections` sockets plus `headroom` other files (model, cloud connections, logs):
    raise the soft open-files limit up to the hard one if needed, and warn when even that is too low (the
    cap would never be reached: accept() fails with EMFILE first, and uvicorn then stops accepting for 1 s)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + headroom
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("the open-files limit (%d) is below EDGE_MAX_CONNECTIONS (%d) + %d: lower the cap or raise "
                    "`ulimit -n`", target, max_connections, headroom)
