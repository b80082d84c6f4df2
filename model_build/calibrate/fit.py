"""Fitting on validation data: the temperatures, the cloud's oos threshold and the routing rule, all on the
validation split re-weighted to the traffic mix the build assumes (the test split's share of oos by
default). The result is :class:`Fitted`: what goes into the manifest, and the record of how it was chosen."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_build.artifact import ArtifactRunner
from model_build.calibrate import calibration
from model_build.calibrate.curves import cut_thresholds
from model_build.calibrate.deferral import DeferralChoice, choose_deferral
from model_build.calibrate.rejection import Rejection, tier_rejection
from model_build.calibrate.routing import apply_deferral
from model_build.calibrate.shift_table import shift_table
from model_build.calibrate.thresholds import (
    OosChoice,
    RoutingChoice,
    ScoreComparison,
    cap_false_reject,
    choose_oos_threshold,
    compare_scores,
    conformal_count,
    threshold_below,
)
from model_build.config import BuildConfig
from model_build.data.dataset import Dataset
from modelpack.manifest import ESCALATE_ALL, ESCALATE_NONE, Manifest, RoutingEntry
from modelpack.routing import CloudRule, cloud_answer, decide
from modelpack.scores import SCORES, band_score, neg_energy, softmax

BAND_SCORES = (None, "in_scope_max_prob")  # the edge's oos band: on the escalation score itself, or on this
# Biases on the edge's oos logit (after its temperature) the fit tries besides none. The student under-states
# oos on traffic richer in it than its training data, and over-states it when a background class is much of
# its training data (--negatives: the negative biases, tried only then); a temperature scales every class
# alike. The bias that lets the routing meet its target with the fewest escalations on validation ships.
OOS_BIAS_GRID = tuple(round(0.25 * i, 2) for i in range(1, 21))  # 0.25 .. 5.0
BACKGROUND_BIAS_GRID = tuple(-b for b in reversed(OOS_BIAS_GRID)) + OOS_BIAS_GRID  # -5.0 .. 5.0, not 0
# With a background class, the share of the false-reject budget spent on the edge's band (the rest on the
# cloud's threshold, counted on the texts it is asked). Most of it at the edge: a refusal there is free, the
# cloud's costs a call. Measured on two held-out CLINC150 shapes (100 and 40 intents) against 0.5: far OOD
# escalated 36 -> 20 % and 17 -> 8 %, answered with an intent no higher (bench/results/open_set.md).
EDGE_BUDGET_SHARE = 0.75
# ... and whatever it is asked, the cloud refuses at most this share of all in-scope texts: when the edge
# escalates fewer in-scope texts than the cloud's share allows, nothing else would stop it refusing every one.
CLOUD_ALONE_MAX_REFUSE = 0.05


@dataclass(frozen=True)
class ValidationReport:
    """How the build chose its temperatures and thresholds on validation data (metrics.json
    ``validation``)."""

    traffic_oos_fraction: float | None  # None: the split as it is
    edge_temperature: float
    cloud_temperature: float
    cloud_oos: OosChoice | None  # None: no oos texts to fit it on
    routing_choices: Mapping[str, RoutingChoice]  # the two-way rule, per score
    routing_best: str
    deferral_choices: Mapping[str, DeferralChoice] | None = None  # "score/band score"; None: not searched
    deferral_shipped: bool | None = None
    edge_oos_bias: float = 0.0
    oos_bias_search: Mapping[float, float] | None = None  # bias -> validation escalation; None: not searched
    rejection: Rejection | None = None  # each tier's on the shipped rules; None: no oos texts on validation

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"traffic_oos_fraction": self.traffic_oos_fraction,
                               "edge_temperature": self.edge_temperature,
                               "cloud_temperature": self.cloud_temperature}
        if self.cloud_oos is not None:
            out["cloud_oos"] = dataclasses.asdict(self.cloud_oos)
        out["routing_choices"] = {name: dataclasses.asdict(c) for name, c in self.routing_choices.items()}
        out["routing_best"] = self.routing_best
        if self.deferral_choices is not None:
            out["deferral_choices"] = {key: dataclasses.asdict(c) for key, c in self.deferral_choices.items()}
            out["deferral_shipped"] = self.deferral_shipped
        if self.oos_bias_search is not None:
            out["edge_oos_bias"] = self.edge_oos_bias
            out["oos_bias_search"] = {str(b): rate for b, rate in self.oos_bias_search.items()}
        if self.rejection is not None:
            out["rejection"] = self.rejection.to_dict()
        return out


@dataclass(frozen=True)
class Fitted:
    """What the build fitted, ready for the manifest, with the record of how (``validation``)."""

    edge_temperature: float
    cloud_temperature: float
    cloud_oos_threshold: float | None
    routing: RoutingEntry
    validation: ValidationReport
    edge_oos_bias: float = 0.0
    cloud_oos_score: str | None = None  # models.cloud.oos_score (None: max_prob)

    def apply(self, manifest: Manifest) -> Manifest:
        """``manifest`` with these temperatures and thresholds."""
        return dataclasses.replace(
            manifest,
            edge=dataclasses.replace(manifest.edge, temperature=self.edge_temperature,
                                     oos_logit_bias=self.edge_oos_bias),
            cloud=dataclasses.replace(manifest.cloud, temperature=self.cloud_temperature,
                                      oos_threshold=self.cloud_oos_threshold,
                                      oos_score=self.cloud_oos_score),
            routing=self.routing,
        )


def traffic_fraction(config: BuildConfig, dataset: Dataset) -> float | None:
    """The oos share of the traffic the build fits for (None: the validation split as it is)."""
    mix = config.traffic_oos_fraction
    if mix == "val" or dataset.oos_index is None:
        return None
    if mix == "test":
        share = float((np.asarray(dataset.test.labels) == dataset.oos_index).mean())
        # A background class (--negatives) leaves the test split without oos texts: say nothing about the
        # mix rather than assume none; validation holds its negatives at data.background.BACKGROUND_VAL_SHARE.
        return share if share > 0.0 else None
    return float(mix)


def fit_on_validation(config: BuildConfig, dataset: Dataset, runner: ArtifactRunner) -> Fitted:
    """Temperatures, the cloud's oos threshold and the routing rule, fit on re-weighted validation data."""
    val = dataset.val
    y = np.asarray(val.labels)
    oos = dataset.oos_index
    fraction = traffic_fraction(config, dataset)
    is_oos = y == oos if oos is not None else np.zeros(len(y), dtype=bool)
    has_oos = oos is not None and bool(is_oos.any())
    w = calibration.traffic_weights(is_oos, fraction if is_oos.any() else None)
    edge_logits, cloud_logits = runner.logits("edge", val), runner.logits("cloud", val)
    t_cloud = calibration.fit_temperature(cloud_logits, y, weights=w)
    cloud_probs = softmax(cloud_logits, t_cloud)

    # A background class's validation negatives, or an appended label's none, say nothing about what a refusal
    # buys: the user's false-reject budget is spent instead.
    appended = dataset.oos_appended
    budget = config.false_reject_budget(dataset.background or appended)
    spent = bool(budget and (dataset.background and has_oos or appended))
    cloud = _CloudFit.of(config, cloud_logits, cloud_probs, y, w, oos if has_oos or spent else None, budget, spent)
    cloud_pred = cloud.answers()
    # Without real oos texts a refusal is spent from the false-reject budget, not charged to the escalation's
    # bar too: a larger budget then lowered the bar, and the edge answered more out-of-domain texts itself
    # (bench/results/open_set.md, "The routing bar"). The bar reads the cloud's argmax.
    bar = cloud.probs.argmax(axis=1) if spent else cloud_pred
    split = _Split(y, w, oos if has_oos else None, bar, fraction, budget)
    edge = _fit_edge(config, edge_logits, split, 0.0)
    search = None
    if config.edge_oos_bias and has_oos:
        # The rule chosen without a bias (its score and band score), at each bias: one search per bias, not
        # the six of a full fit; the full fit then runs again at the cheapest bias (never dearer: its search
        # includes that rule).
        search = {0.0: edge.entry.expected_escalation_rate}
        # Negatives (--negatives) make oos a big class, which the student over-states: try negative biases too
        grid = BACKGROUND_BIAS_GRID if dataset.background or config.has_negatives else OOS_BIAS_GRID
        search |= {bias: _rule_rate(config, edge_logits, split, bias, edge.entry) for bias in grid}
        bias = min(search, key=lambda b: (round(search[b], 9), b))
        if bias:
            edge = _fit_edge(config, edge_logits, split, bias)
    entry = edge.entry
    if spent:
        entry = spend_band(entry, edge.probs, dataclasses.replace(split, oos=oos), budget * EDGE_BUDGET_SHARE)
        # The cloud's share counted on what it is asked: the escalated texts (its refusals of the rest never
        # happen), so it may refuse a larger share of those
        cloud = cloud.spent_on(decide(edge.probs, entry, oos).escalate)
        cloud_pred = cloud.answers()
    if has_oos:  # the shipped rule's per-group rates: a runtime re-derives the threshold at its own mix
        entry = dataclasses.replace(entry, shift=shift_table(edge.probs, cloud_pred, y, oos, entry))
    deferrals = edge.deferrals
    validation = ValidationReport(
        traffic_oos_fraction=fraction, edge_temperature=edge.temperature, cloud_temperature=t_cloud,
        cloud_oos=cloud.choice, routing_choices=edge.comparison.choices, routing_best=edge.comparison.best,
        deferral_choices=None if deferrals is None else {
            f"{name}/{band_name or name}": c for (name, band_name), c in deferrals.items()},
        deferral_shipped=None if deferrals is None else entry.oos_threshold is not None,
        edge_oos_bias=edge.oos_bias, oos_bias_search=search,
        rejection=_rejection(edge.probs, cloud, entry, y, oos, budget, spent),
    )
    return Fitted(edge.temperature, t_cloud, cloud.rule.oos_threshold, entry, validation,
                  edge_oos_bias=edge.oos_bias, cloud_oos_score=cloud.rule.oos_score)


@dataclass(frozen=True, eq=False)
class _CloudFit:
    """The cloud's oos rule on validation. With real oos texts: the threshold that keeps its in-scope accuracy
    (`choose_oos_threshold`) on its max probability or its energy score, whichever catches more of them,
    capped by the false-reject budget if one is given.
    With a background class (`spent`: its validation negatives are not the traffic's, so nothing measures
    what a refusal buys): its share of the user's budget, cut on its energy score, which ranks unseen
    out-of-domain text below the intents better than its max probability does (bench/results/open_set.md)."""

    logits: np.ndarray
    probs: np.ndarray
    y: np.ndarray
    oos: int | None
    rule: CloudRule
    choice: OosChoice | None
    budget: float | None  # the whole false-reject budget, spent (background class) or a cap

    @classmethod
    def of(cls, config: BuildConfig, logits: np.ndarray, probs: np.ndarray, y: np.ndarray, w: np.ndarray,
           oos: int | None, budget: float | None, spent: bool) -> _CloudFit:
        fit = cls(logits, probs, y, oos, CloudRule(None), None, budget)
        if oos is None:
            return fit
        if not np.any(y == oos):  # an appended label: no oos text to choose on, the budget alone
            return fit.spent_on(None)
        # Real oos texts measure the recall of each score at the in-scope floor: the better one ships
        # (a tie keeps the max probability).
        energy = neg_energy(logits, oos)
        choice, by_energy = (choose_oos_threshold(probs, y, oos, weights=w, score=score,
                                                  min_in_scope_accuracy=config.cloud_min_in_scope_accuracy)
                             for score in (None, ("neg_energy", energy)))
        if by_energy.feasible and by_energy.oos_recall > choice.oos_recall + 1e-9:
            choice = by_energy
        fit = dataclasses.replace(fit, choice=choice)
        if spent:  # on every text while the edge's rule is fit; on the escalated ones once it is
            return fit.spent_on(None)
        if not (choice.feasible and np.isfinite(choice.threshold)):
            return fit
        name, score = ("neg_energy", energy) if choice.score == "neg_energy" else (None, None)
        threshold = float(choice.threshold) if budget is None else \
            cap_false_reject(probs, y, oos, float(choice.threshold), budget, score=score)
        return dataclasses.replace(fit, rule=CloudRule(threshold, None if threshold is None else name))

    def spent_on(self, asked: np.ndarray | None) -> _CloudFit:
        """The cloud's share of a spent budget, counted on the texts it is `asked` (None: all). Fit for the
        texts the manifest's rule escalates: a policy that sends it more (cloud_only) meets more refusals.
        (Capping it by the whole budget over every text as well cost 3 pt of far OOD answered with an
        intent and 7 pt of near on the 40-intent held-out set, for cloud-alone accuracy only.)"""
        assert self.oos is not None and self.budget is not None
        energy = neg_energy(self.logits, self.oos)
        ceiling = cap_false_reject(self.probs, self.y, self.oos, ESCALATE_ALL, CLOUD_ALONE_MAX_REFUSE,
                                   score=energy)
        threshold = None if ceiling is None else cap_false_reject(
            self.probs, self.y, self.oos, ceiling, self.budget * (1 - EDGE_BUDGET_SHARE), among=asked, score=energy)
        return dataclasses.replace(self, rule=CloudRule(threshold, None if threshold is None else "neg_energy"))

    def answers(self) -> np.ndarray:
        return cloud_answer(self.probs, self.rule, self.oos, logits=self.logits)


def _rejection(edge_probs: np.ndarray, cloud: _CloudFit, entry: RoutingEntry, y: np.ndarray, oos: int | None,
               budget: float | None, spent: bool) -> Rejection | None:
    """Each tier's rejection on validation under the shipped rules, with the budget the fit gave it."""
    found = tier_rejection(edge_probs, cloud.probs, cloud.logits, y, oos, entry, cloud.rule, split="val")
    if found is None:
        return None
    if not spent:  # the budget, if any, caps each tier on every text
        return found.with_budgets(budget, budget)
    assert budget is not None  # shared out as the fit spends it: the cloud's counted on the escalated texts
    return found.with_budgets(budget * EDGE_BUDGET_SHARE, budget * (1 - EDGE_BUDGET_SHARE), "escalated")


@dataclass(frozen=True, eq=False)
class _Split:
    """The re-weighted validation split as the routing fit sees it."""

    y: np.ndarray
    w: np.ndarray
    oos: int | None  # None: no oos texts (no band, no bias)
    cloud_pred: np.ndarray
    fraction: float | None
    budget: float | None = None  # the share of in-scope texts the edge's band may hold (None: no cap)


@dataclass(frozen=True, eq=False)
class _EdgeFit:
    """The edge's calibration at one oos logit bias and the cheapest routing it allows."""

    oos_bias: float
    temperature: float
    probs: np.ndarray
    entry: RoutingEntry
    comparison: ScoreComparison
    deferrals: dict[tuple[str, str | None], DeferralChoice] | None


def _calibrate_edge(logits: np.ndarray, split: _Split, bias: float) -> tuple[float, np.ndarray]:
    """The temperature fitted at `bias` on the oos logit, and the calibrated probabilities."""
    offset = None
    if bias:
        offset = np.zeros(logits.shape[1])
        offset[split.oos] = bias
    t = calibration.fit_temperature(logits, split.y, weights=split.w, offset=offset)
    return t, softmax(logits, t, oos_bias=bias, oos_index=split.oos)


def _rule_rate(config: BuildConfig, logits: np.ndarray, split: _Split, bias: float, rule: RoutingEntry) -> float:
    """The validation escalation of `rule`'s score (and band score) at `bias`: 1.0 when unreachable."""
    _, probs = _calibrate_edge(logits, split, bias)
    pred = probs.argmax(axis=1)
    if rule.oos_threshold is None or split.oos is None:
        return compare_scores(probs, pred, split.cloud_pred, split.y, target_ratio=config.routing_target,
                              weights=split.w).choices[rule.score].escalation_rate
    choice = choose_deferral(
        SCORES[rule.score](probs), pred, split.cloud_pred, split.y, split.oos, target_ratio=config.routing_target,
        weights=split.w, name=rule.score, max_false_reject=split.budget,
        oos_score=None if rule.oos_score is None else band_score(rule.oos_score, probs, split.oos))
    return choice.escalation_rate if choice.reachable else 1.0


def _fit_edge(config: BuildConfig, logits: np.ndarray, split: _Split, bias: float) -> _EdgeFit:
    """The temperature at `bias` on the oos logit, then the routing rule for the calibrated probabilities."""
    t, probs = _calibrate_edge(logits, split, bias)
    comparison = compare_scores(probs, probs.argmax(axis=1), split.cloud_pred, split.y,
                                target_ratio=config.routing_target, weights=split.w)
    best = comparison.best_choice
    entry = _routing_entry(config, split.fraction, comparison.best, best.threshold, best.escalation_rate)
    deferrals = None
    if config.edge_oos_band and split.oos is not None:
        deferrals = _deferrals(config, probs, split.cloud_pred, split.y, split.oos, split.w, split.budget)
        three_way = _cheaper_deferral(deferrals, best.escalation_rate)
        if three_way is not None:
            chosen, band_name = three_way
            entry = dataclasses.replace(
                _routing_entry(config, split.fraction, chosen.score_name, chosen.threshold, chosen.escalation_rate),
                oos_threshold=float(chosen.oos_threshold), expected_edge_oos_rate=chosen.edge_oos_rate,
                oos_score=band_name)
    return _EdgeFit(bias, t, probs, entry, comparison, deferrals)


def _routing_entry(config: BuildConfig, fraction: float | None, score: str, threshold: float,
                   rate: float) -> RoutingEntry:
    """The two-way rule's manifest entry (an infinite threshold written as the manifest's escalate-all or
    escalate-none)."""
    threshold = threshold if np.isfinite(threshold) else (ESCALATE_ALL if threshold > 0 else ESCALATE_NONE)
    return RoutingEntry(
        score=score, threshold=float(threshold), target_joint_over_teacher=config.routing_target,
        traffic_oos_fraction=fraction, expected_escalation_rate=rate,
        oos_threshold=None, expected_edge_oos_rate=0.0, oos_score=None,
    )


def _deferrals(config: BuildConfig, edge_probs: np.ndarray, cloud_pred: np.ndarray, y: np.ndarray, oos: int,
               w: np.ndarray, budget: float | None) -> dict[tuple[str, str | None], DeferralChoice]:
    """The three-way rule for every escalation score, its band cut on the same score or on the best
    in-scope probability."""
    edge_pred = edge_probs.argmax(axis=1)
    return {
        (name, band_name): choose_deferral(
            fn(edge_probs), edge_pred, cloud_pred, y, oos, target_ratio=config.routing_target, weights=w,
            name=name, max_false_reject=budget,
            oos_score=None if band_name is None else band_score(band_name, edge_probs, oos))
        for name, fn in SCORES.items() for band_name in BAND_SCORES
    }


def _cheaper_deferral(deferrals: Mapping[tuple[str, str | None], DeferralChoice],
                      two_way_rate: float) -> tuple[DeferralChoice, str | None] | None:
    """The cheapest reachable three-way rule and its band score, when it escalates less than the best
    two-way rule (then it is shipped); else None."""
    def cost(key: tuple[str, str | None]) -> tuple[float, float]:
        return round(deferrals[key].escalation_rate, 9), -round(deferrals[key].joint_accuracy, 9)

    pick = min((key for key, c in deferrals.items() if c.reachable), default=None, key=cost)
    if pick is None:
        return None
    chosen = deferrals[pick]
    if chosen.escalation_rate < two_way_rate - 1e-12 and np.isfinite(chosen.oos_threshold):
        return chosen, pick[1]
    return None


def spend_band(entry: RoutingEntry, probs: np.ndarray, split: _Split, rate: float) -> RoutingEntry:
    """`entry` with the edge's `oos` band on the best in-scope probability, below the `rate` quantile of the
    in-scope validation texts' (or the searched band, when it already refuses more), and its expected rates
    re-measured. What a build without its own oos texts ships: the edge refuses what it finds least like any
    intent, at the false-reject rate the user allowed (a conformal count: a new in-scope text falls below
    with probability at most `rate`), instead of escalating it. Too few texts for that rate: `entry` as is."""
    assert split.oos is not None
    scores = band_score("in_scope_max_prob", probs, split.oos)
    inside = np.sort(scores[split.y != split.oos])
    k = min(conformal_count(rate, inside.size), inside.size - 1)
    if k <= 0:
        return entry
    cut = threshold_below(inside, k)
    if entry.oos_threshold is not None and entry.oos_score == "in_scope_max_prob":
        cut = max(cut, entry.oos_threshold)
    routed = apply_deferral(probs.argmax(axis=1), split.cloud_pred, split.y, SCORES[entry.score](probs),
                            entry.threshold, cut, oos_index=split.oos, weights=split.w, oos_score=scores)
    return dataclasses.replace(entry, oos_threshold=cut, oos_score="in_scope_max_prob",
                               expected_edge_oos_rate=float(np.average(scores < cut, weights=split.w)),
                               expected_escalation_rate=routed.escalation_rate)
