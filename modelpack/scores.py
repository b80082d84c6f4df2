"""Routing scores on calibrated probabilities: higher means the model is surer.

The build chooses a threshold on one of these and names it in the manifest; the edge computes the same
function at serving time, so both must come from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0, *, oos_bias: float = 0.0,
            oos_index: int | None = None) -> np.ndarray:
    """Calibrated probabilities: softmax(logits / temperature), with `oos_bias` added to the `oos_index`
    column after the temperature (a manifest model's `oos_logit_bias`: the log-odds a temperature cannot
    move for one class alone; 0 or no oos label: none)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if oos_bias and oos_index is not None:
        z[..., oos_index] += oos_bias  # z is a fresh array: the caller's logits stay as they were
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def max_prob(probs: np.ndarray) -> np.ndarray:
    return probs.max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    top2 = np.partition(probs, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def neg_entropy(probs: np.ndarray) -> np.ndarray:
    """1 - H(p)/log(C): 1 for a one-hot answer, 0 for a uniform one."""
    # log(1) = 0 stands in for 0 * log 0, without the divide-by-zero warning of log(0).
    plogp = probs * np.log(np.where(probs > 0.0, probs, 1.0))
    return 1.0 + plogp.sum(axis=-1) / np.log(probs.shape[-1])


SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max_prob": max_prob,
    "margin": margin,
    "neg_entropy": neg_entropy,
}


def in_scope_max_prob(probs: np.ndarray, oos_index: int) -> np.ndarray:
    """The best probability of an intent (the oos column left out): low when nothing in scope is plausible,
    whether the mass sits on `oos` or is spread thin. The edge's `oos` band can be cut on it."""
    return np.delete(probs, oos_index, axis=-1).max(axis=-1)


def neg_energy(logits: np.ndarray, oos_index: int | None) -> np.ndarray:
    """The negative free energy of raw `logits` over the intents (the oos column left out): their log-sum-exp
    (Liu et al. 2020, "Energy-based out-of-distribution detection"). Unlike a probability it keeps how
    strongly *any* intent is supported, which softmax normalises away; unbounded, in logit units. The
    cloud's oos threshold can be cut on it (`models.cloud.oos_score`)."""
    z = np.asarray(logits, dtype=np.float64)
    if oos_index is not None:
        z = np.delete(z, oos_index, axis=-1)
    top = z.max(axis=-1)
    return top + np.log(np.exp(z - top[..., None]).sum(axis=-1))


# Scores the cloud's oos threshold may be cut on (`models.cloud.oos_score`; None reads as max_prob):
# max_prob on its calibrated probabilities, in [0, 1]; neg_energy on its raw logits, unbounded.
CLOUD_OOS_SCORES = frozenset({"max_prob", "neg_energy"})


def band_score(name: str, probs: np.ndarray, oos_index: int) -> np.ndarray:
    """The score the edge's `oos` band is cut on (manifest routing.oos_score; modelpack.manifest.BAND_SCORES)."""
    return in_scope_max_prob(probs, oos_index) if name == "in_scope_max_prob" else SCORES[name](probs)


def manifest_band_score(probs: np.ndarray, routing: Any, oos_index: int | None) -> np.ndarray | None:
    """The band score a manifest's routing entry cuts its `oos` band on (`oos_score`, else its `score`), or
    None when it has no band: the build, its evaluation and the edge all resolve it here."""
    if routing.oos_threshold is None or oos_index is None:
        return None
    return band_score(routing.oos_score or routing.score, probs, oos_index)
