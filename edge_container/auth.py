"""Who is calling, and how much of the cloud budget they may spend.

Client keys (`EDGE_CLIENT_KEYS`) authenticate the inference routes. A key is looked up by comparing it with
*every* configured key in constant time (`hmac.compare_digest`, no early exit), so neither a prefix nor the
position of a match leaks through timing. Without keys the inference routes are open (a device on a private
network), but nobody may force the cloud: the escalation decision stays the edge's.

`EscalationLimiter` is a token bucket per client (its id, or its address when anonymous) on escalated
*texts*: over its share a client's low-confidence texts are answered by the edge (`rate_limited`) instead
of spending the tenant's budget. The table of buckets is bounded (least recently used client dropped).
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge_container.errors import ClientUnauthorized


@dataclass(frozen=True, slots=True)
class ClientKey:
    client_id: str
    key: str

    def __repr__(self) -> str:  # never print a secret, not even in a traceback's locals
        return f"ClientKey(client_id={self.client_id!r}, key=<redacted>)"


@dataclass(frozen=True, slots=True)
class Client:
    """The caller of one request: `client_id` None when no keys are configured (anonymous)."""

    client_id: str | None
    address: str

    @property
    def authenticated(self) -> bool:
        return self.client_id is not None

    @property
    def bucket(self) -> str:
        return f"key:{self.client_id}" if self.client_id is not None else f"addr:{self.address}"


class ClientAuth:
    def __init__(self, keys: tuple[ClientKey, ...]) -> None:
        self._keys = tuple((k.client_id, k.key.encode()) for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str], address: str) -> Client:
        """The caller; raises `ClientUnauthorized` when keys are configured and none of them was sent."""
        if not self._keys:
            return Client(None, address)
        given = headers.get("x-api-key", "")
        if not given and headers.get("authorization", "").startswith("Bearer "):
            given = headers["authorization"][7:]
        if not given:
            raise ClientUnauthorized("this edge requires a client key: send it as x-api-key or Authorization: Bearer")
        raw, found = given.encode(), None
        for client_id, key in self._keys:  # all of them, always: the time taken does not depend on the match
            if hmac.compare_digest(raw, key) and found is None:
                found = client_id
        if found is None:
            raise ClientUnauthorized("unknown client key")
        return Client(found, address)


class EscalationLimiter:
    """Token buckets of escalated texts, one per client: `rate` texts/s refill, up to `burst` at once."""

    def __init__(self, *, rate: float, burst: int, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._max, self._clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # bucket -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, bucket: str, wanted: int) -> int:
        """How many of `wanted` escalations this client may make now (0..wanted); those are spent."""
        if not self.enabled or wanted <= 0:
            return wanted
        now = self._clock()
        tokens, at = self._buckets.pop(bucket, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        granted = min(wanted, int(tokens))
        self._buckets[bucket] = (tokens - granted, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return granted
