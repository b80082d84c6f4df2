"""The demo's traffic against the real local stack: the cloud-only pass in batches on the cloud API's wire
types, and the replay through the edge, on the real tiny artifact."""

from __future__ import annotations

import asyncio

import pytest

from infra.demo.load import CLOUD_BATCH, cloud_only_labels, replay
from infra.demo.records import Sample, Timeline, kind_of
from infra.demo.stats import summarise
from infra.stack import LocalStack
from tests.e2e.conftest import Reference
from tests.fixtures.tiny_artifact import TEXTS

pytestmark = pytest.mark.slow

SAMPLES = [Sample(text, label) for label, texts in TEXTS.items() for text in texts] * 2


def cloud_label(reference: Reference, text: str) -> str:
    """What the cloud answers for `text`: its model's top label, or the OOS label below its threshold."""
    probs = reference.cloud.probabilities([text])[0]
    best = int(probs.argmax())
    if probs[best] < reference.manifest.cloud.oos_threshold and reference.manifest.oos_label:
        return reference.manifest.oos_label
    return reference.manifest.labels[best]


def test_the_cloud_only_pass_answers_every_text_as_the_cloud_model_does(
    stack: LocalStack, references: dict[str, Reference]
) -> None:
    # Given more texts than one call may carry
    texts = [s.text for s in SAMPLES]
    assert len(texts) > CLOUD_BATCH

    # When the demo's cloud-only pass sends them straight to the cloud, on the stack's own key
    labels, version = cloud_only_labels(stack.cloud_url, stack.service_api_key, texts)

    # Then every text has the cloud model's answer, and the version that gave it
    assert labels == [cloud_label(references[version], text) for text in texts]


def test_the_replay_answers_every_sample_through_the_edge(stack: LocalStack) -> None:
    timeline = Timeline()

    outcomes = asyncio.run(replay(stack.edge_url, SAMPLES, concurrency=4, timeline=timeline,
                                  headers=stack.edge_headers))

    assert [o.index for o in outcomes] == list(range(len(SAMPLES)))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert {kind_of(o) for o in outcomes} <= {"edge", "cloud"}
    report = summarise(SAMPLES, outcomes, [s.gold for s in SAMPLES], oos_label=None, pricing=stack.pricing,
                       spent=0, wall_s=timeline.now(), budget=stack.budget())
    assert report["failed"] == 0 and sum(report["answers_by_source"].values()) == len(SAMPLES)
