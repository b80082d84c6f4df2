"""The manifest's shift table: what the routing rule does on each group of texts (in-scope, out-of-scope),
so a runtime can re-derive the escalation threshold for another traffic mix.

Under prior shift between the groups (the oos share changes, what a text of either group looks like does
not), every rate of the rule at an oos share ``pi`` is the pi-weighted mix of the two groups' rates, which
the build measured on its validation split for a grid of escalation thresholds (the edge's `oos` band kept
as the manifest has it). :meth:`ShiftTable.operating_point` picks the cheapest threshold of the grid whose
mixed joint accuracy is at least ``target`` x the mixed cloud-only accuracy, as the build did for its mix.

Pure stdlib, like `modelpack.manifest`, which reads the table with :func:`read_shift_table`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from modelpack._fields import Reader
from modelpack.errors import ManifestError

_EPS = 1e-9


@dataclass(frozen=True)
class ShiftGroup:
    """One group's rates under the rule, per threshold of the table's grid (same order)."""

    n: int  # texts of the group the rates were measured on
    cloud_accuracy: float  # the cloud alone (its own oos rule), on this group
    edge_oos_rate: float  # share the edge answers `oos` itself (the band: no threshold changes it)
    escalation_rate: tuple[float, ...]
    joint_accuracy: tuple[float, ...]  # the answer the device gives (band, cloud or edge) is right
    mean_oos_probability: float = 0.0  # the edge's mean calibrated `oos` probability on the group
    sd_oos_probability: float = 0.0  # its standard deviation on the group (0: not recorded, an older manifest)


@dataclass(frozen=True)
class ShiftPoint:
    """The table's operating point at one oos share."""

    oos_share: float
    threshold: float
    escalation_rate: float
    joint_accuracy: float
    cloud_accuracy: float
    reachable: bool  # False: no threshold of the grid meets the target; the last (escalate the most) is taken

    @property
    def joint_over_cloud(self) -> float:
        return self.joint_accuracy / self.cloud_accuracy if self.cloud_accuracy > 0 else float("nan")


@dataclass(frozen=True)
class ShiftTable:
    split: str  # the split it was measured on (never test)
    oos_index: int  # the label whose prior is the oos share
    split_oos_fraction: float  # the oos share of that split
    thresholds: tuple[float, ...]  # strictly increasing escalation thresholds on routing.score
    in_scope: ShiftGroup
    oos: ShiftGroup
    source_priors: tuple[float, ...]  # each label's share of the split
    # The edge's calibrated rows under-state `oos` (a temperature cannot fix one class's bias): EM (Saerens et
    # al. 2002) on them under-estimates a rise in the oos share. A bias on the oos logit, fitted on the split by
    # likelihood (bias-corrected calibration, Alexandari et al. 2020), corrects them; applying it equals
    # dividing EM's oos source prior by exp(bias) (`em_source`), so the rows themselves stay as served.
    oos_log_bias: float = 0.0

    def em_source(self) -> tuple[float, ...]:
        """The source priors EM re-weights the served rows by, with the oos bias folded in."""
        scale = math.exp(-self.oos_log_bias)
        return tuple(q * scale if i == self.oos_index else q for i, q in enumerate(self.source_priors))

    def bbse_share(self, mean_oos_probability: float) -> float | None:
        """The oos share whose mix of the groups' mean `oos` probabilities is the one observed (soft black-box
        shift estimation, Lipton et al. 2018): unbiased under prior shift however the rows are calibrated.
        None when the groups' means do not differ."""
        low, high = self.in_scope.mean_oos_probability, self.oos.mean_oos_probability
        if high - low < 1e-6:
            return None
        return min(1.0, max(0.0, (mean_oos_probability - low) / (high - low)))

    def share_standard_error(self, oos_share: float, window_variance: float, window_n: int) -> float:
        """The standard error of a soft-BBSE estimate `oos_share` made on `window_n` texts whose `oos`
        probabilities have variance `window_variance` (delta method): the window's own noise and that of the
        two group means it is de-mixed with, each measured on a group of the split. The split's oos group is
        small (100 texts in CLINC150's validation split): at an 18 % share its mean's error is the larger part."""
        low, high = self.in_scope, self.oos
        spread = high.mean_oos_probability - low.mean_oos_probability
        if spread < 1e-6 or window_n < 1:
            return 0.0
        s = min(1.0, max(0.0, oos_share))
        variance = (max(window_variance, 0.0) / window_n + (1 - s) ** 2 * low.sd_oos_probability ** 2 / low.n
                    + s ** 2 * high.sd_oos_probability ** 2 / high.n)
        return math.sqrt(variance) / spread

    def mix(self, oos_share: float, k: int) -> tuple[float, float, float]:
        """(escalation rate, joint accuracy, cloud accuracy) of threshold `k` at `oos_share`."""
        p, a, b = oos_share, self.in_scope, self.oos
        return ((1 - p) * a.escalation_rate[k] + p * b.escalation_rate[k],
                (1 - p) * a.joint_accuracy[k] + p * b.joint_accuracy[k],
                (1 - p) * a.cloud_accuracy + p * b.cloud_accuracy)

    def operating_point(self, oos_share: float, target: float) -> ShiftPoint:
        """The cheapest threshold of the grid with joint >= `target` x cloud-only at `oos_share`. Escalation
        never falls as the threshold rises, so the first that meets the target is the cheapest."""
        if not 0.0 <= oos_share <= 1.0:
            raise ValueError(f"oos_share must be in [0, 1], got {oos_share}")
        last = len(self.thresholds) - 1
        for k in range(last + 1):
            escalation, joint, cloud = self.mix(oos_share, k)
            if joint >= target * cloud - _EPS:
                return ShiftPoint(oos_share, self.thresholds[k], escalation, joint, cloud, True)
        escalation, joint, cloud = self.mix(oos_share, last)
        return ShiftPoint(oos_share, self.thresholds[last], escalation, joint, cloud, False)


def _rates(r: Reader, key: str, size: int) -> tuple[float, ...]:
    value = r.required(key)
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise r.fail(key, f"a list of {size} rates (one per threshold)")
    holder = Reader({str(i): v for i, v in enumerate(value)}, f"{r.where}.{key}")
    return tuple(holder.float(str(i), low=0.0, high=1.0) for i in range(size))


def _group(r: Reader, size: int) -> ShiftGroup:
    return ShiftGroup(n=r.int("n", minimum=1), cloud_accuracy=r.float("cloud_accuracy", low=0.0, high=1.0),
                      edge_oos_rate=r.float("edge_oos_rate", low=0.0, high=1.0),
                      escalation_rate=_rates(r, "escalation_rate", size),
                      joint_accuracy=_rates(r, "joint_accuracy", size),
                      mean_oos_probability=r.float("mean_oos_probability", low=0.0, high=1.0),
                      sd_oos_probability=r.opt_float("sd_oos_probability", low=0.0, high=1.0) or 0.0)


def read_shift_table(r: Reader, n_labels: int, low: float, high: float, special: tuple[float, ...]) -> ShiftTable:
    """The table at `r`, its thresholds in the routing score's [low, high] (or one of `special`)."""
    raw = r.required("thresholds")
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        raise r.fail("thresholds", "a list of at least two thresholds")
    holder = Reader({str(i): v for i, v in enumerate(raw)}, f"{r.where}.thresholds")
    thresholds = tuple(holder.float(str(i)) for i in range(len(raw)))
    if any(not (low - _EPS <= t <= high + _EPS or t in special) for t in thresholds):
        raise r.fail("thresholds", f"numbers in [{low}, {high}] (or {special})")
    if any(b <= a for a, b in pairwise(thresholds)):
        raise r.fail("thresholds", "strictly increasing")
    priors = _rates(r, "source_priors", n_labels)
    if abs(sum(priors) - 1.0) > 1e-3 or min(priors) <= 0.0:  # EM divides by them
        raise r.fail("source_priors", "positive probabilities summing to 1")
    oos_index = r.int("oos_index", minimum=0)
    if oos_index >= n_labels:
        raise ManifestError(f"{r.where}.oos_index {oos_index} is not a label index (there are {n_labels})")
    size = len(thresholds)
    return ShiftTable(split=r.str("split"), oos_index=oos_index,
                      split_oos_fraction=r.float("split_oos_fraction", low=0.0, high=1.0),
                      thresholds=thresholds, in_scope=_group(r.sub("in_scope"), size), oos=_group(r.sub("oos"), size),
                      source_priors=priors, oos_log_bias=r.float("oos_log_bias", low=-20.0, high=20.0))
