"""Fixtures shared by the model_build tests."""

from typing import Any

import numpy as np
import pytest

from model_build.calibrate.calibration import softmax
from model_build.calibrate.thresholds import compare_scores


@pytest.fixture(scope="module")
def routed() -> dict[str, Any]:
    """A small synthetic edge/teacher pair: the edge is right more often when it is confident."""
    rng = np.random.default_rng(1)
    n, classes = 600, 6
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) * 2.0
    logits[np.arange(n), labels] += rng.uniform(-1.0, 4.0, n)
    probs = softmax(logits)
    edge = probs.argmax(axis=1)
    teacher = np.where(rng.random(n) < 0.92, labels, (labels + 1) % classes)
    comparison = compare_scores(probs, edge, teacher, labels, target_ratio=0.99)
    return {"probs": probs, "labels": labels, "edge": edge, "teacher": teacher, "comparison": comparison}


@pytest.fixture(scope="session")
def quick_clinc_cache(tmp_path_factory: pytest.TempPathFactory):
    """One stage cache for every quick-preset build on CLINC150 in the session: the quick teacher (and its
    transfer set) is trained once, whichever student each build distils (tests/model_build/test_build_quick.py,
    test_transformer_student.py). Builds that assert on cached stages still see their own student's."""
    return tmp_path_factory.mktemp("quick_clinc_cache")
