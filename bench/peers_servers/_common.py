"""What both peer servers share: the artifact's edge model through `modelpack`, loaded and warmed once.

Run by the peers' own venv (see bench/peers.py), which has the modelpack runtime (ai-edge-litert,
tokenizers, numpy) but not the repo's packages: the repo root goes on sys.path for `modelpack` alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from modelpack.classifier import Classifier

# Texts of every length bucket of the tiny and full artifacts (as edge_container.runtime warms its slots),
# so no request of the measurement pays for the first plan of a shape.
WARM_TEXTS = ("hello", "what is the weather going to be like in paris tomorrow morning",
              ("please set a timer for twenty minutes and then remind me to check on the oven "
               "because the bread should be done by then and i do not want it to burn again"))


def load_classifier(model_dir: str | Path, threads: int) -> Classifier:
    """The edge (int8) model of the artifact, verified like the edge verifies it, in one interpreter of
    `threads` threads: a peer runs one batch at a time, so it gets the interpreter threads that the edge
    spreads over its EDGE_WORKERS single-threaded interpreters."""
    classifier = Classifier.load(model_dir, "edge", copies=1, num_threads=threads)[0]
    for n in (1, 2, 32):
        for text in WARM_TEXTS:
            classifier.predict([text] * n)
    return classifier


def answers(classifier: Classifier, texts: list[str]) -> list[dict[str, object]]:
    return [{"label": p.label, "confidence": p.confidence} for p in classifier.predict(texts)]


def report_settings(settings: dict[str, object]) -> None:
    """Write the settings the server really runs with where bench/peers.py asked (PEERS_SETTINGS_OUT)."""
    if out := os.environ.get("PEERS_SETTINGS_OUT"):
        Path(out).write_text(json.dumps(settings, indent=2, default=str) + "\n")
