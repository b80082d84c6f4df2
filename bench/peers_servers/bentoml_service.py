"""The artifact's edge model behind BentoML: `bentoml serve bentoml_service:TextClassifier --port P`.

POST /predict {"text": ["..."]} -> [{"label": ..., "confidence": ...}]: a batchable BentoML API takes and
returns a batch along dimension 0, so one text per request is a list of one. GET /readyz. One worker
process (`workers=1`), one thread for the sync API (`threads=1`: the dispatcher runs one batch at a time
anyway), access log off like the edge's. Settings come from PEERS_* variables (set by bench/peers.py):
the decorators run at import time, in every process BentoML starts.
"""

from __future__ import annotations

import os

import bentoml
from _common import answers, load_classifier, report_settings

MODEL_DIR = os.environ["PEERS_MODEL_DIR"]
THREADS = int(os.environ["PEERS_THREADS"])
MAX_BATCH_SIZE = int(os.environ["PEERS_MAX_BATCH_SIZE"])
MAX_LATENCY_MS = int(os.environ["PEERS_MAX_LATENCY_MS"])


@bentoml.service(workers=1, threads=1, logging={"access": {"enabled": False}}, traffic={"timeout": 30})
class TextClassifier:
    def __init__(self) -> None:
        self.classifier = load_classifier(MODEL_DIR, THREADS)
        from bentoml._internal.marshal.dispatcher import CorkDispatcher

        api = TextClassifier.apis["predict"]
        report_settings({"bentoml": bentoml.__version__, "service": TextClassifier.config,
                         "api": {"route": api.route, "batchable": api.batchable,
                                 "max_batch_size": api.max_batch_size, "max_latency_ms": api.max_latency_ms,
                                 "batch_dim": api.batch_dim},
                         "dispatcher_poll_interval_s": CorkDispatcher.TICKET_INTERVAL,
                         "interpreter_threads": THREADS})

    @bentoml.api(route="/predict", batchable=True, max_batch_size=MAX_BATCH_SIZE,
                 max_latency_ms=MAX_LATENCY_MS)
    def predict(self, text: list[str]) -> list[dict[str, object]]:
        return answers(self.classifier, text)
