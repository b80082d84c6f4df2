"""A background class for data without an `oos` label (`--negatives`): texts known to lie outside every
intent, drawn into the training and validation splits as out-of-scope texts."""

from __future__ import annotations

import dataclasses

import numpy as np

from model_build.data.dataset import OOS_LABEL, Dataset, Split
from model_build.errors import DataError

# Negatives per split when a background class is added (`with_background`): a tenth of the in-domain
# training texts for training, and as many validation ones as make a tenth of the validation split.
BACKGROUND_TRAIN_SHARE = 0.1
BACKGROUND_VAL_SHARE = 0.1


def with_background(dataset: Dataset, negatives: tuple[str, ...], *, seed: int,
                    first: tuple[str, ...] = ()) -> Dataset:
    """`dataset` with texts of `negatives` (text known to lie outside every intent: generic sentences, or
    your own traffic's off-topic requests) as out-of-scope training texts.

    Data without an oos label gains one: a background class `oos`, its texts drawn for the train and the
    validation splits; the teacher and the student then learn what is *not* an intent, and the build's
    whole out-of-scope machinery (the cloud's oos threshold, the edge's band, the shift table) applies. Data
    with an oos label keeps its own validation oos texts (real traffic, what the thresholds are fit on) and
    gains training ones only. The test split stays as given: its figures describe the user's own texts. A
    text of `negatives` equal to a labelled one is left out. Raises DataError when too few are left.

    `first` (--off-topic: requests from your own traffic that none of your intents fits) are drawn before
    any of `negatives`, every one of them when there is room, and shared between the splits like the rest."""
    labelled = set(dataset.train.texts) | set(dataset.val.texts) | set(dataset.test.texts)
    own = list(dict.fromkeys(t for t in first if t not in labelled))
    taken = labelled | set(own)
    pool = [t for t in negatives if t not in taken]
    background = dataset.oos_label is None
    n_train = max(1, round(len(dataset.train) * BACKGROUND_TRAIN_SHARE))
    n_val = max(1, round(len(dataset.val) * BACKGROUND_VAL_SHARE / (1.0 - BACKGROUND_VAL_SHARE))) if background else 0
    n = n_train + n_val
    if len(own) + len(pool) < n:
        needed = f"{n_train} to train on" + (f", {n_val} to validate on" if n_val else "")
        flags = "--negatives and --off-topic" if first else "--negatives"
        raise DataError(f"{flags}: {len(own) + len(pool)} usable texts; at least {n} are needed ({needed})")
    rng = np.random.default_rng(seed)
    if own:  # all of your own first (as many as fit), the generic pool after; then shuffled across the splits
        own = [own[i] for i in rng.permutation(len(own))[:n]]
        pool = own + [pool[i] for i in rng.choice(len(pool), size=n - len(own), replace=False)]
        pick = rng.permutation(n)
    else:
        pick = rng.choice(len(pool), size=n, replace=False)
    labels = dataset.labels + (OOS_LABEL,) if background else dataset.labels
    oos = len(labels) - 1

    def grown(split: Split, texts: list[str]) -> Split:
        return Split(split.texts + tuple(texts),
                     np.concatenate([split.labels, np.full(len(texts), oos, dtype=np.int32)]))

    return dataclasses.replace(
        dataset, labels=labels, oos_label=labels[-1], background=background,
        train=grown(dataset.train, [pool[i] for i in pick[:n_train]]),
        val=grown(dataset.val, [pool[i] for i in pick[n_train:]]))


# The raw logit runtimes append for an appended oos label (`ModelEntry.appended_oos_logit`): so low that no
# temperature or bias the fit tries gives it probability (exp(-1000) is 0 in float64).
APPENDED_OOS_LOGIT = -1000.0


def with_appended_oos(dataset: Dataset, label: str = OOS_LABEL) -> Dataset:
    """`dataset`, which has no oos label, with `label` appended as one that no text has and no model learns:
    the build fits its out-of-scope rule from the in-scope validation texts alone (each tier refuses its
    least sure share, `--max-false-reject`), and runtimes append the label's logit to the models' outputs.
    Data with an oos label, own or background, is returned as it is."""
    if dataset.oos_label is not None:
        return dataset
    return dataclasses.replace(dataset, labels=dataset.labels + (label,), oos_label=label, oos_appended=True)
