"""Budget pacing on a compressed day: greedy (EDGE_POLICY=threshold) against paced (EDGE_POLICY=paced).

    python bench/pacing.py [--model-dir artifacts/latest] [--budget-share 0.5] [--out bench/results/pacing.json]

The CLINC150 test split, shuffled, arrives one text per request spread evenly over one budget period
(simulated time: the policies' own clocks are driven by the replay). Both runs use the artifact's real edge
model (calibrated probabilities through the LiteRT interpreter, the manifest's threshold and oos band) and
its real cloud model's answers (the cloud's oos rule, `modelpack.routing.cloud_answer`), and the edge's
real policy objects (`edge_container.policies`). The ledger is exact and refuses what it cannot cover, as
the cloud's conditional write does; its prices are the local stack's (1 per call + 1 per text). The budget
is `--budget-share` of what the threshold policy spends on the whole split with no limit.

Also reported: the ceiling of any score-ordered pacing (the day's least confident would-be escalations,
known in advance, as many as the budget buys). Reported per policy: joint accuracy (the answer the device gave, cloud or edge, against the gold label),
the units spent, overspend (units charged beyond the budget: must be 0), and the fraction of the period
elapsed when the first escalation was refused for lack of budget (1.0 if never).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
PERIOD_S = 86_400.0
PER_CALL, PER_TEXT = 1, 1


@dataclass(frozen=True)
class Traffic:
    probs: np.ndarray  # calibrated edge probabilities, one row per text in arrival order
    edge_pred: np.ndarray
    cloud_pred: np.ndarray
    gold: np.ndarray
    routing: Any
    oos_index: int | None


def load_traffic(model_dir: Path, seed: int) -> Traffic:
    sys.path.insert(0, str(REPO_ROOT))
    from model_build.data.dataset import load_dataset
    from modelpack.classifier import Classifier
    from modelpack.manifest import load_manifest
    from modelpack.routing import cloud_answer

    manifest = load_manifest(model_dir)
    data = load_dataset(manifest.data["path"], seed=0)
    order = np.random.default_rng(seed).permutation(len(data.test.texts))
    texts = [data.test.texts[i] for i in order]
    edge = Classifier(manifest, model_dir, "edge").probabilities(texts)
    cloud_model = Classifier(manifest, model_dir, "cloud")
    cloud_logits = cloud_model.logits(texts)
    cloud_pred = cloud_answer(cloud_model.calibrate(cloud_logits), manifest.cloud, manifest.oos_index,
                              logits=cloud_logits)
    return Traffic(edge, edge.argmax(axis=1), cloud_pred, data.test.labels[order], manifest.routing,
                   manifest.oos_index)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def replay(traffic: Traffic, policy: Any, budget: int | None, clock: Clock) -> dict[str, Any]:
    """One pass over the day; `budget` None means unlimited."""
    start = clock.now
    resets_at = datetime.fromtimestamp(start + PERIOD_S, UTC)
    remaining = budget if budget is not None else 10**12
    answers = traffic.edge_pred.copy()
    spent = escalated = 0
    exhausted_at: float | None = None
    n = len(answers)
    for i in range(n):
        clock.now = start + PERIOD_S * i / n
        row = traffic.probs[i: i + 1]
        band = policy.edge_oos(row, traffic.routing, traffic.oos_index)
        if band is not None and band[0]:
            answers[i] = traffic.oos_index
            continue
        wanted = policy.pace(row, traffic.routing, policy.escalate(row, traffic.routing))
        if not wanted[0]:
            continue
        cost = PER_CALL + PER_TEXT
        if cost > remaining:  # the ledger refuses the whole call; the edge answers
            exhausted_at = exhausted_at if exhausted_at is not None else i / n
            policy.observe_budget(remaining, resets_at, cost=0, n_texts=0)
            continue
        remaining -= cost
        spent += cost
        escalated += 1
        answers[i] = traffic.cloud_pred[i]
        policy.observe_budget(remaining, resets_at, cost=cost, n_texts=1)
    return {
        "joint_accuracy": round(float((answers == traffic.gold).mean()), 5),
        "escalation_rate": round(escalated / n, 5),
        "spent": spent,
        "overspend": max(0, spent - budget) if budget is not None else 0,
        "exhausted_at_fraction": 1.0 if exhausted_at is None else round(exhausted_at, 4),
    }


def score_ordered_bound(traffic: Traffic, budget: int, order_by: str | None = None) -> float:
    """Joint accuracy if the budget went to exactly the least confident would-be escalations of the whole
    day, known in advance: the ceiling of any pacing that orders by the routing score (or by `order_by`,
    another of `modelpack.scores.SCORES`, among the same would-be escalations)."""
    from modelpack.scores import SCORES, manifest_band_score

    r = traffic.routing
    scores = SCORES[r.score](traffic.probs)
    band = manifest_band_score(traffic.probs, r, traffic.oos_index)
    hopeless = np.zeros(len(scores), dtype=bool) if band is None else band < r.oos_threshold
    wanted = np.flatnonzero((scores < r.threshold) & ~hopeless)
    order = scores if order_by is None else SCORES[order_by](traffic.probs)
    chosen = wanted[np.argsort(order[wanted], kind="stable")][: budget // (PER_CALL + PER_TEXT)]
    answers = traffic.edge_pred.copy()
    if traffic.oos_index is not None:
        answers[hopeless] = traffic.oos_index
    answers[chosen] = traffic.cloud_pred[chosen]
    return round(float((answers == traffic.gold).mean()), 5)


def run(model_dir: Path, *, budget_share: float, seed: int, window_s: float) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT))
    from edge_container.pacing import BudgetPacer
    from edge_container.policies import PacedPolicy, ThresholdPolicy
    from modelpack.scores import SCORES

    traffic = load_traffic(model_dir, seed)
    unlimited = replay(traffic, ThresholdPolicy(), None, Clock())
    budget = int(unlimited["spent"] * budget_share)
    greedy = replay(traffic, ThresholdPolicy(), budget, Clock())
    clock = Clock()
    paced_policy = PacedPolicy(BudgetPacer(window_s=window_s, clock=clock), rng=np.random.default_rng(seed))
    paced = replay(traffic, paced_policy, budget, clock)
    # The ceiling for each score the pacer could rank the would-be escalations by; the routing score's is the
    # ceiling of the paced policy as it is.
    bounds = {name: score_ordered_bound(traffic, budget, name) for name in SCORES}
    cloud_only = float((traffic.cloud_pred == traffic.gold).mean())
    edge_only = float((traffic.edge_pred == traffic.gold).mean())
    return {
        "benchmark": "pacing", "model_dir": str(model_dir), "texts": len(traffic.gold), "period_s": PERIOD_S,
        "budget": budget, "budget_share_of_threshold_spend": budget_share, "pacer_window_s": window_s,
        "prices": {"per_call": PER_CALL, "per_text": PER_TEXT},
        "unlimited_threshold": unlimited, "greedy": greedy, "paced": paced,
        "cloud_only_accuracy": round(cloud_only, 5), "edge_only_accuracy": round(edge_only, 5),
        "score_ordered_bound_joint_accuracy": bounds[traffic.routing.score],
        "score_ordered_bound_by_score": bounds,
        "paced_minus_greedy_points": round((paced["joint_accuracy"] - greedy["joint_accuracy"]) * 100, 3),
        "failed": 0,  # a replay has no network: every text gets an answer by construction
        "machine": {"cpu": _cpu(), "python": platform.python_version()},
    }


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "artifacts" / "latest")
    parser.add_argument("--budget-share", type=float, default=0.5)
    parser.add_argument("--window-s", type=float, default=3600.0, help="the pacer's demand time constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "pacing.json")
    args = parser.parse_args(argv)
    if not (args.model_dir / "manifest.json").is_file():
        parser.error(f"{args.model_dir}: no manifest.json (build a model first: make build)")
    result = run(args.model_dir, budget_share=args.budget_share, seed=args.seed, window_s=args.window_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
