"""A staged model rollout across a small fleet: real edge services (one per device id, each on its own
loopback port) polling a real `latest.json` in S3 (the serialised moto server), `model_build.publish`
writing the canary, then abort, then promote; every device under load all along, no request failing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from infra.moto_server import SerialisedMotoServer
from model_build.publish import abort, promote, publish
from modelpack.pointer import Pointer
from tests.edge_container.conftest import CONFIDENT, edge_settings, serve_edge

BUCKET = "fleet-models"
FRACTION = 0.4
DEVICES = [f"kiosk-{i:03d}" for i in range(10)]


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    with SerialisedMotoServer() as server:
        client = server.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


class Fleet:
    """The devices' HTTP clients, and a load thread asking each of them all the time."""

    def __init__(self, clients: dict[str, httpx.Client]) -> None:
        self.clients = clients
        self.failures: list[str] = []
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._load, daemon=True)

    def _load(self) -> None:
        while not self._stop.is_set():
            for device, client in self.clients.items():
                try:
                    response = client.post("/v1/predict", json={"text": CONFIDENT})
                    ok = response.status_code == 200
                except httpx.HTTPError as exc:
                    ok, response = False, exc  # type: ignore[assignment]
                self.requests += 1
                if not ok:
                    self.failures.append(f"{device}: {response}")

    def versions(self) -> dict[str, str]:
        return {d: c.get("/readyz").json().get("model_version", "") for d, c in self.clients.items()}

    def wait_for(self, expected: Callable[[str], str], timeout_s: float = 60.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.versions()
            if all(seen[d] == expected(d) for d in seen) or time.monotonic() > deadline:
                return seen
            time.sleep(0.2)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_a_canary_reaches_its_cohort_then_abort_and_promote_move_the_whole_fleet(
        s3: Any, tiny_artifact: Path, tiny_artifact_v2: Path, tmp_path: Path) -> None:
    publish(tiny_artifact, bucket=BUCKET, prefix="models", s3_client=s3)  # tiny-1, stable
    with ExitStack() as stack:
        clients = {}
        for device in DEVICES:
            settings = edge_settings(tmp_path / "no-local-model", s3_latest_uri=f"s3://{BUCKET}/models/latest.json",
                                     s3_cache_dir=tmp_path / device, device_id=device, reload_poll_s=0.2)
            client, _ = stack.enter_context(serve_edge(settings, s3_client=s3))
            clients[device] = client
        fleet = stack.enter_context(Fleet(clients))
        assert set(fleet.wait_for(lambda d: "tiny-1").values()) == {"tiny-1"}

        publish(tiny_artifact_v2, bucket=BUCKET, prefix="models", s3_client=s3, canary=FRACTION)
        pointer = Pointer.from_json(s3.get_object(Bucket=BUCKET, Key="models/latest.json")["Body"].read())
        cohort = {d for d in DEVICES if pointer.for_device(d).model_version == "tiny-2"}
        assert 0 < len(cohort) < len(DEVICES)  # these ids split under 0.4: both sides are exercised
        split = fleet.wait_for(lambda d: "tiny-2" if d in cohort else "tiny-1")
        assert {d for d, v in split.items() if v == "tiny-2"} == cohort
        canary_metrics = clients[min(cohort)].get("/metrics").text
        assert 'cohort="canary"' in canary_metrics and 'target_version="tiny-2"' in canary_metrics

        abort(bucket=BUCKET, prefix="models", s3_client=s3)
        assert set(fleet.wait_for(lambda d: "tiny-1").values()) == {"tiny-1"}

        publish(tiny_artifact_v2, bucket=BUCKET, prefix="models", s3_client=s3, canary=FRACTION)
        fleet.wait_for(lambda d: "tiny-2" if d in cohort else "tiny-1")
        promote(bucket=BUCKET, prefix="models", s3_client=s3)
        assert set(fleet.wait_for(lambda d: "tiny-2").values()) == {"tiny-2"}
        time.sleep(0.5)  # a little load on the promoted fleet too
    assert fleet.requests > 3 * len(DEVICES) and fleet.failures == []


def test_a_canary_without_a_stable_version_or_of_the_stable_version_is_refused(
        s3: Any, tiny_artifact: Path) -> None:
    from model_build.errors import PublishError

    with pytest.raises(PublishError, match="needs another version already published"):
        publish(tiny_artifact, bucket=BUCKET, prefix="empty", s3_client=s3, canary=0.1)
    publish(tiny_artifact, bucket=BUCKET, prefix="one", s3_client=s3)
    with pytest.raises(PublishError, match="tiny-1 is this one"):
        publish(tiny_artifact, bucket=BUCKET, prefix="one", s3_client=s3, canary=0.1)
    with pytest.raises(PublishError, match="no canary to promote"):
        promote(bucket=BUCKET, prefix="one", s3_client=s3)
    with pytest.raises(PublishError, match="must be a fraction"):
        publish(tiny_artifact, bucket=BUCKET, prefix="one", s3_client=s3, canary=1.5)
