"""The OpenAI-compatible backend against a real HTTP server on loopback speaking the Chat Completions wire
format (tests/cloud_functions/chat_server.py): the label contract, log-probabilities, the API key, the
retries the official client makes (429 with Retry-After, 5xx, x-should-retry), a server refusing an
optional field, and replies slower than the timeout, silent or trickled."""

from __future__ import annotations

import json
import math
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cloud_functions.http_transport import HttpTransport
from cloud_functions.inference import BackendError
from cloud_functions.openai_backend import OpenAIBackend
from cloud_functions.pricing import TokenPrices
from cloud_functions.secrets import CachedSecret

from .chat_server import ChatServer, Decision, Drop, Reply, Status

LABELS = ("balance", "greeting", "timer", "weather", "oos")
KEY = "sk-loopback-key"
MODEL = "gpt-4o-mini"
PRICES = TokenPrices(Decimal("0.15"), Decimal("0.60"))  # USD per million tokens


def decide(text: str) -> Decision:
    """(label, stated confidence, probability the "model" gives the label's tokens)."""
    if "balance" in text:
        return "balance", 0.9, 0.8
    if "timer" in text:
        return "timer", 0.95, 0.7
    if "hello" in text:
        return "greeting", 0.99, 0.99
    return "recipes", 0.6, 0.55  # not a label: out of scope


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(decide, api_key=KEY) as running:
        yield running


MakeBackend = Callable[..., OpenAIBackend]


@pytest.fixture
def make_backend(server: ChatServer) -> Iterator[MakeBackend]:
    transports: list[HttpTransport] = []

    def make(*, base_url: str | None = None, key: str | Callable[[], str] = KEY, **options: Any) -> OpenAIBackend:
        transport = HttpTransport(base_url or server.base_url)
        transports.append(transport)
        fetch = key if callable(key) else (lambda: key)
        options.setdefault("sleep", lambda _s: None)
        return OpenAIBackend(transport, model=MODEL, labels=LABELS, oos_label="oos", prices=PRICES,
                             api_key=CachedSecret(fetch, ttl_s=300), **options)

    yield make
    for transport in transports:
        transport.close()


TEXTS = ["what is my account balance", "set a timer for five minutes", "how do I bake bread"]


# --------------------------------------------------------------------------- the contract


def test_a_batch_is_classified_in_one_call_with_the_models_own_probabilities(
    server: ChatServer, make_backend: MakeBackend
) -> None:
    backend = make_backend()

    inference = backend.infer(TEXTS)

    assert [r.label for r in inference.results] == ["balance", "timer", "oos"]
    # Log-probabilities given: the confidence is the probability of the label's tokens, not the stated one.
    assert [r.confidence for r in inference.results] == pytest.approx([0.8, 0.7, 0.55])
    assert [r.top_k[0].label for r in inference.results] == ["balance", "timer", "oos"]
    (seen,) = server.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["content-type"] == "application/json"
    body = seen.body
    assert (body["model"], body["temperature"], body["logprobs"]) == (MODEL, 0, True)
    assert body["response_format"] == {"type": "json_object"}
    assert body["max_tokens"] == 32 + 32 * len(TEXTS)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert json.dumps(list(LABELS)) in body["messages"][0]["content"]
    assert json.dumps(TEXTS) in body["messages"][1]["content"]
    assert backend.model_version == f"openai:{MODEL}"


def test_the_usage_is_priced_and_never_above_the_bound_reserved_for_it(make_backend: MakeBackend) -> None:
    backend = make_backend()

    usage = backend.infer(TEXTS).usage

    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    expected = (usage.input_tokens * Decimal("0.15") + usage.output_tokens * Decimal("0.60")) / 1_000_000
    assert usage.cost_usd == expected
    assert 0 < usage.cost_usd <= backend.max_cost_usd(TEXTS)


def test_without_log_probabilities_the_stated_confidence_is_reported(
    server: ChatServer, make_backend: MakeBackend
) -> None:
    backend = make_backend(logprobs=False)

    results = backend.infer(TEXTS).results

    assert [r.confidence for r in results] == [0.9, 0.95, 0.6]
    assert "logprobs" not in server.seen[0].body


def test_a_server_that_refuses_log_probabilities_is_asked_without_them_from_then_on(
    make_backend: MakeBackend,
) -> None:
    with ChatServer(decide, api_key=KEY, refuse=["logprobs"]) as strict:
        backend = make_backend(base_url=strict.base_url)

        first = backend.infer(TEXTS[:1])
        second = backend.infer(TEXTS[1:2])

    assert (first.results[0].label, second.results[0].label) == ("balance", "timer")
    assert ["logprobs" in s.body for s in strict.seen] == [True, False, False]


def test_an_answer_outside_the_labels_without_an_oos_label_breaks_the_contract(server: ChatServer) -> None:
    transport = HttpTransport(server.base_url)
    backend = OpenAIBackend(transport, model=MODEL, labels=LABELS[:-1], oos_label=None,
                            api_key=CachedSecret(lambda: KEY, ttl_s=300))

    with pytest.raises(BackendError, match="not one of the labels"):
        backend.infer(["how do I bake bread"])
    transport.close()


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (Reply(finish_reason="length"), "cut off"),
        (Reply(content="Sure! The first one is balance."), "not a JSON object with 1 answers"),
        (Reply(finish_reason="content_filter"), "content filter"),
    ],
    ids=["cut-off", "prose", "filtered"],
)
def test_replies_that_break_the_contract_are_backend_errors(
    server: ChatServer, make_backend: MakeBackend, reply: Reply, problem: str
) -> None:
    server.plan.append(reply)

    with pytest.raises(BackendError, match=problem):
        make_backend().infer(TEXTS[:1])


def test_a_reply_without_usage_is_charged_its_bound(server: ChatServer, make_backend: MakeBackend) -> None:
    server.plan.append(Reply(usage=False))
    backend = make_backend()

    usage = backend.infer(TEXTS).usage

    assert usage is not None and usage.cost_usd == backend.max_cost_usd(TEXTS)


def test_one_connection_is_kept_alive_across_calls(server: ChatServer, make_backend: MakeBackend) -> None:
    backend = make_backend()

    for text in TEXTS:
        backend.infer([text])

    assert (len(server.seen), server.connections) == (3, 1)


def test_a_kept_alive_connection_the_server_closed_is_replaced_at_no_attempts_cost(make_backend: MakeBackend) -> None:
    with ChatServer(decide, api_key=KEY, drop_idle=True) as closing:
        backend = make_backend(base_url=closing.base_url, max_attempts=1)

        labels = [backend.infer([text]).results[0].label for text in TEXTS[:2]]

    assert labels == ["balance", "timer"] and closing.connections == 2


def test_over_https_the_servers_certificate_is_verified(make_backend: MakeBackend, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    with ChatServer(decide, api_key=KEY, tls=tls) as secure:
        transport = HttpTransport(secure.base_url, ssl_context=ssl.create_default_context(cafile=cert))
        trusted = OpenAIBackend(transport, model=MODEL, labels=LABELS, oos_label="oos",
                                api_key=CachedSecret(lambda: KEY, ttl_s=60))
        untrusted = make_backend(base_url=secure.base_url)  # the system's CAs: this certificate is no one's

        assert trusted.infer(TEXTS[:1]).results[0].label == "balance"
        transport.close()
        with pytest.raises(BackendError, match="could not be reached"):
            untrusted.infer(TEXTS[:1])
    assert secure.base_url.startswith("https://localhost:")


# --------------------------------------------------------------------------- errors and retries


def test_a_server_that_hangs_up_is_a_backend_error_on_a_kept_alive_connection_too(
    server: ChatServer, make_backend: MakeBackend
) -> None:
    """The fresh connection tried after a broken kept-alive one broke too: that was an unexpected
    RemoteDisconnected (a 500 INTERNAL_ERROR), not the LLM failing (503, the edge answers)."""
    backend = make_backend(max_attempts=2)
    assert backend.infer(TEXTS[:1]).results[0].label == "balance"  # the connection is now kept alive
    server.plan.extend([Drop(), Drop(), Drop()])

    with pytest.raises(BackendError, match="could not be reached"):
        backend.infer(TEXTS[:1])

    assert len(server.seen) == 1 + 3


def test_a_request_the_server_refuses_is_not_retried(server: ChatServer, make_backend: MakeBackend) -> None:
    server.plan.append(Status(400, "Invalid 'messages': too long", param="messages"))

    with pytest.raises(BackendError, match="400: Invalid 'messages'"):
        make_backend().infer(TEXTS)

    assert len(server.seen) == 1


@pytest.mark.parametrize(
    ("headers", "wait"),
    [({"retry-after": "0.25"}, 0.25), ({"retry-after-ms": "120", "retry-after": "9"}, 0.12)],
    ids=["retry-after", "retry-after-ms"],
)
def test_a_429_is_retried_after_the_wait_it_asks_for(
    server: ChatServer, make_backend: MakeBackend, headers: dict[str, str], wait: float
) -> None:
    server.plan.append(Status(429, "Rate limit reached for requests", headers=headers))
    slept: list[float] = []

    results = make_backend(sleep=slept.append).infer(TEXTS[:1]).results

    assert results[0].label == "balance"
    assert slept == [pytest.approx(wait)] and len(server.seen) == 2


def test_retries_are_bounded(server: ChatServer, make_backend: MakeBackend) -> None:
    server.plan.extend([Status(503, "overloaded"), Status(500, "boom"), Status(502, "bad gateway")])
    slept: list[float] = []

    with pytest.raises(BackendError, match="500: boom"):
        make_backend(max_attempts=2, sleep=slept.append, rng=lambda: 1.0).infer(TEXTS[:1])

    assert len(server.seen) == 2 and slept == [0.5]  # the openai client's first backoff


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(server: ChatServer, make_backend: MakeBackend) -> None:
    server.plan.append(Status(429, "slow down", headers={"retry-after": "30"}))
    slept: list[float] = []

    with pytest.raises(BackendError, match="no time left to retry"):
        make_backend(timeout_s=5, sleep=slept.append).infer(TEXTS[:1])

    assert slept == [] and len(server.seen) == 1


def test_x_should_retry_false_is_obeyed(server: ChatServer, make_backend: MakeBackend) -> None:
    server.plan.append(Status(503, "not now", headers={"x-should-retry": "false"}))

    with pytest.raises(BackendError, match="503"):
        make_backend().infer(TEXTS[:1])

    assert len(server.seen) == 1


def test_a_rotated_key_is_read_again_once(make_backend: MakeBackend) -> None:
    keys = iter(["sk-old", KEY])
    reads: list[str] = []

    def fetch() -> str:
        reads.append(key := next(keys))
        return key

    with ChatServer(decide, api_key=KEY) as rotated:
        results = make_backend(base_url=rotated.base_url, key=fetch).infer(TEXTS[:1]).results

    assert results[0].label == "balance" and reads == ["sk-old", KEY]


def test_a_wrong_key_fails_after_one_fresh_read(server: ChatServer, make_backend: MakeBackend) -> None:
    with pytest.raises(BackendError, match="401: Incorrect API key") as caught:
        make_backend(key="sk-wrong").infer(TEXTS[:1])

    assert len(server.seen) == 2 and "sk-wrong" not in str(caught.value)


def test_a_server_that_is_not_there_fails_at_once(make_backend: MakeBackend) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again before the call: connection refused
    started = time.monotonic()

    with pytest.raises(BackendError, match="could not be reached"):
        make_backend(base_url=f"http://127.0.0.1:{port}/v1", max_attempts=2).infer(TEXTS[:1])

    assert time.monotonic() - started < 2


# --------------------------------------------------------------------------- slow replies


@pytest.mark.parametrize("reply", [Reply(delay_s=3.0), Reply(trickle_s=0.05)], ids=["silent", "trickled"])
def test_a_reply_slower_than_the_timeout_fails_at_the_deadline(
    server: ChatServer, make_backend: MakeBackend, reply: Reply
) -> None:
    """A trickling server resets a socket's read timeout with every byte: only the watchdog ends it."""
    server.plan.extend([reply, reply])
    started = time.monotonic()

    with pytest.raises(BackendError, match="no answer from the LLM"):
        make_backend(timeout_s=1.0, max_attempts=2, sleep=time.sleep).infer(TEXTS[:1])

    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.6, elapsed  # every attempt inside the one deadline, then no more


def test_after_a_timeout_the_next_call_gets_a_fresh_connection(server: ChatServer, make_backend: MakeBackend) -> None:
    backend = make_backend(timeout_s=1.0, max_attempts=1)
    server.plan.append(Reply(delay_s=2.0))
    with pytest.raises(BackendError):
        backend.infer(TEXTS[:1])

    assert backend.infer(TEXTS[:1]).results[0].label == "balance"


# --------------------------------------------------------------------------- the official client


def test_the_official_openai_client_reads_this_server_as_the_real_api(server: ChatServer,
                                                                      make_backend: MakeBackend) -> None:
    """Holds the fake to the official client's reading of the format: our request is one it accepts as
    its own arguments, the reply parses into its types, and its errors into its exception classes."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=5)
    request = make_backend().request(TEXTS)

    completion = client.chat.completions.create(**request)

    answers = json.loads(completion.choices[0].message.content)["answers"]
    assert [a["label"] for a in answers] == ["balance", "timer", "recipes"]
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    tokens = completion.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == completion.choices[0].message.content
    assert math.isclose(sum(t.logprob for t in tokens if t.logprob), math.log(0.8 * 0.7 * 0.55))
    server.plan.append(Status(429, "Rate limit reached", headers={"retry-after": "1"}))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == 429
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0).chat.completions.create(**request)
