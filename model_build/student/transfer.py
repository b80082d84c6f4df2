"""The student's transfer set: texts the teacher labels beyond the ones it was trained on.

Distilled only on the teacher's own training texts, the student sees near one-hot targets (the teacher is
~100 % right on them) and nothing of what lies between or outside the intents. Here the teacher labels:

- **augmented training texts**: word dropout, and spliced halves of two texts of different labels, on
  which the teacher's soft answer says how the intents blur into each other;
- **unlabelled texts** of the user's own (`--unlabeled FILE`: real traffic is best; for CLINC150 its
  authors' Wikipedia sentence pool), on which the teacher says what is *not* an intent.

Texts equal to a validation or test text are dropped: the transfer set must not leak the splits that
calibration, routing and the report are measured on. No TensorFlow here: the teacher runs through LiteRT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_build.config import TransferConfig


@dataclass(frozen=True)
class TransferSet:
    texts: tuple[str, ...]
    kinds: tuple[str, ...]  # "dropout" | "splice" | "unlabeled", per text

    def counts(self) -> dict[str, int]:
        return {kind: self.kinds.count(kind) for kind in ("dropout", "splice", "unlabeled", "feedback")}


def build_transfer_set(
    config: TransferConfig,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    unlabeled: Sequence[str],
    *,
    exclude: Sequence[str],
    seed: int,
    feedback: Sequence[str] = (),
    feedback_copies: int = 0,
) -> TransferSet:
    rng = np.random.default_rng(seed)
    labels = np.asarray(train_labels)
    texts, kinds = [], []
    words = [t.split() for t in train_texts]
    for _ in range(config.augment_copies):
        splice = rng.random(len(words)) < config.splice_share
        partners = rng.permutation(len(words))
        for i, w in enumerate(words):
            j = int(partners[i])
            if splice[i] and labels[j] != labels[i] and len(w) > 1 and len(words[j]) > 1:
                texts.append(" ".join(w[: len(w) // 2] + words[j][len(words[j]) // 2:]))
                kinds.append("splice")
            else:
                texts.append(_dropout(w, config.word_dropout, rng))
                kinds.append("dropout")
    pool = list(unlabeled)
    if config.max_unlabeled is not None and len(pool) > config.max_unlabeled:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), size=config.max_unlabeled, replace=False))]
    texts += pool
    kinds += ["unlabeled"] * len(pool)
    texts += list(feedback)  # escalations the cloud answered on a device: the edge's hardest real traffic
    kinds += ["feedback"] * len(feedback)
    # Word-dropout copies of them (drawn after everything above: the rest of the set stays as without them)
    for _ in range(feedback_copies):
        for text in feedback:
            texts.append(_dropout(text.split(), config.word_dropout, rng))
            kinds.append("feedback")
    banned = set(exclude) | set(train_texts)
    keep_rows = [i for i, t in enumerate(texts) if t and t not in banned]
    return TransferSet(tuple(texts[i] for i in keep_rows), tuple(kinds[i] for i in keep_rows))


def _dropout(words: list[str], rate: float, rng: np.random.Generator) -> str:
    """`words` with each dropped at `rate` (one always kept)."""
    keep = rng.random(len(words)) >= rate
    if not keep.any() and words:
        keep[rng.integers(len(words))] = True
    return " ".join(x for x, k in zip(words, keep) if k)
