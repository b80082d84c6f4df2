"""A Chat Completions server on loopback that speaks the OpenAI wire format, for the OpenAI-compatible backend.

It validates each request the way OpenAI does (a strict schema: unknown fields, wrong types and missing
fields are 400 with an OpenAI error object naming the `param`), checks the API key (401), and answers as
scripted: a classification of the utterances (`classify`), an error status with headers, a reply after a
delay, or a reply trickled byte by byte. `tests/cloud_functions/test_openai_backend.py` also drives it with
the official `openai` client, so the fake is held to the real client's reading of the format.
"""

from __future__ import annotations

import json
import math
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# What the server decides for one utterance: (label, stated confidence, probability of the label's tokens).
Decision = tuple[str, float, float]
Classify = Callable[[str], Decision]
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")
_ROLES = {"system", "user", "assistant", "developer"}


@dataclass
class Reply:
    """Answer with the classification (content from `classify`, or `content` verbatim)."""

    content: str | None = None
    delay_s: float = 0.0
    trickle_s: float = 0.0  # seconds between the body's bytes
    finish_reason: str = "stop"
    usage: bool = True


@dataclass
class Status:
    """Answer `status` with an OpenAI error body (or `body` verbatim) and `headers`."""

    status: int
    message: str = "error"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    param: str | None = None


@dataclass
class Drop:
    """Read the request, then close the connection without a word (a crashed or restarted server)."""


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    def __init__(self, classify: Classify, *, api_key: str | None = None, refuse: Sequence[str] = (),
                 drop_idle: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.classify = classify
        self.api_key = api_key
        self.refuse = set(refuse)  # optional fields this "model" does not support (400 naming the param)
        self.drop_idle = drop_idle  # close each connection after its answer, while advertising keep-alive
        self.plan: deque[Reply | Status | Drop] = deque()
        self.seen: list[Seen] = []
        self.connections = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._scheme, self._host = "http", "127.0.0.1"
        if tls is not None:  # HTTPS, as every hosted API: the certificate names localhost
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self._scheme, self._host = "https", "localhost"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        return f"{self._scheme}://{self._host}:{port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ the wire

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs

            def setup(self) -> None:
                super().setup()
                server.connections += 1

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = None
                server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()},
                                        body if isinstance(body, dict) else {}))
                if server.plan and isinstance(server.plan[0], Drop):
                    server.plan.popleft()
                    self.close_connection = True
                    return
                status, headers, payload, plan = server._respond(self.path, self.headers, body)
                delay = plan.delay_s if isinstance(plan, Reply) else 0.0
                trickle = plan.trickle_s if isinstance(plan, Reply) else 0.0
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                try:
                    if trickle:
                        for i in range(len(payload)):
                            self.wfile.write(payload[i : i + 1])
                            self.wfile.flush()
                            time.sleep(trickle)
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                if server.drop_idle:
                    self.close_connection = True

        return Handler

    def _respond(self, path: str, headers: Any, body: Any) -> tuple[int, Mapping[str, str], bytes, Reply | Status]:
        if path != "/v1/chat/completions":
            return (*_error(404, f"Invalid URL (POST {path})", "invalid_request_error"), Reply())
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return (*_error(401, "Incorrect API key provided", "invalid_request_error", code="invalid_api_key"),
                    Reply())
        problem = validate(body)
        if problem is not None:
            return (*_error(400, problem[1], "invalid_request_error", param=problem[0]), Reply())
        for name in sorted(self.refuse):
            if name in body:
                return (*_error(400, f"{name} is not supported with this model.", "invalid_request_error",
                                param=name), Reply())
        plan = self.plan.popleft() if self.plan else Reply()
        assert not isinstance(plan, Drop)
        if isinstance(plan, Status):
            if plan.body is not None:
                return plan.status, plan.headers, plan.body, plan
            status, _, payload = _error(plan.status, plan.message, "server_error", param=plan.param)
            return status, plan.headers, payload, plan
        return 200, {}, json.dumps(self._completion(body, plan)).encode(), plan

    def _completion(self, body: dict[str, Any], plan: Reply) -> dict[str, Any]:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        texts = json.loads(user[user.index("[") :])
        decisions = [self.classify(text) for text in texts]
        content = plan.content if plan.content is not None else json.dumps(
            {"answers": [{"label": label, "confidence": stated} for label, stated, _ in decisions]})
        tokens = _TOKEN.findall(content)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                                  "logprobs": None, "finish_reason": plan.finish_reason}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": _logprobs(tokens, content, [p for _, _, p in decisions]),
                                  "refusal": None}
        prompt_tokens = sum(len(_TOKEN.findall(m["content"])) for m in body["messages"]) + 7
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.seen)}", "object": "chat.completion", "created": 1773489600,
            "model": body["model"], "choices": [choice], "system_fingerprint": "fp_loopback",
        }
        if plan.usage:
            reply["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                              "total_tokens": prompt_tokens + len(tokens)}
        return reply


def validate(body: Any) -> tuple[str, str] | None:
    """(param, message) of what OpenAI would refuse in this Chat Completions body, or None."""
    if not isinstance(body, dict):
        return "", "We could not parse the JSON body of your request."
    known = {"model", "messages", "temperature", "max_tokens", "max_completion_tokens", "response_format",
             "logprobs", "top_logprobs", "top_p", "n", "stop", "seed", "stream", "user"}
    for name in body:
        if name not in known:
            return name, f"Unrecognized request argument supplied: {name}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model", "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "[] is too short - 'messages'"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return f"messages.[{i}].role", f"Invalid value for 'messages[{i}].role'"
        if not isinstance(message.get("content"), str):
            return f"messages.[{i}].content", f"Invalid type for 'messages[{i}].content': expected a string"
    temperature = body.get("temperature", 1)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        return "temperature", "Invalid 'temperature': expected a number between 0 and 2"
    max_tokens = body.get("max_tokens", 1)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens", "Invalid 'max_tokens': integer below minimum value"
    response_format = body.get("response_format", {"type": "text"})
    if not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object"):
        return "response_format.type", "Invalid value for 'response_format.type'"
    if response_format.get("type") == "json_object" and not any("json" in m["content"].lower() for m in messages):
        return "messages", "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
    if not isinstance(body.get("logprobs", False), bool):
        return "logprobs", "Invalid type for 'logprobs': expected a boolean"
    return None


def _error(status: int, message: str, kind: str, *, param: str | None = None,
           code: str | None = None) -> tuple[int, Mapping[str, str], bytes]:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return status, {}, json.dumps(body).encode()


def _logprobs(tokens: list[str], content: str, probabilities: list[float]) -> list[dict[str, Any]]:
    """Each token's log-probability: the label values' tokens share log(p) of their answer, the rest 0."""
    spans = [m.span(1) for m in re.finditer(r'"label"\s*:\s*"([^"]*)"', content)]
    out, offset = [], 0
    per_span = {}
    for (start, end), p in zip(spans, probabilities, strict=False):
        inside = [t for t in _positions(tokens) if t[0] < end and t[1] > start]
        per_span[(start, end)] = math.log(p) / max(1, len(inside))
    for token in tokens:
        start, end = offset, offset + len(token)
        logprob = next((lp for (a, b), lp in per_span.items() if start < b and end > a), 0.0)
        out.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []})
        offset = end
    return out


def _positions(tokens: list[str]) -> Iterator[tuple[int, int]]:
    offset = 0
    for token in tokens:
        yield offset, offset + len(token)
        offset += len(token)
