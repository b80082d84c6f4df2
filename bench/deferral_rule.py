"""A learned deferral score against the shipped ones (issue 8's "small rule fit on validation" lever).

Logistic regression over the edge's calibrated outputs (top-3 probabilities, margin, entropy, the best
in-scope and the oos probability, length), cross-fitted on validation (5 folds, weighted to the test mix),
then the build's own three-way search (calibrate.deferral.choose_deferral, band on the best in-scope
probability) on validation; applied to the test split. Prints one line per rule and target.

    python bench/deferral_rule.py [ARTIFACT]       # default artifacts/latest
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model_build.calibrate.calibration import traffic_weights
from model_build.calibrate.deferral import choose_deferral
from model_build.data.dataset import load_dataset
from modelpack.classifier import Classifier
from modelpack.manifest import load_manifest
from modelpack.routing import cloud_answer
from modelpack.scores import SCORES, in_scope_max_prob

art = Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/latest")
m = load_manifest(art)
data = load_dataset(m.data["path"], seed=0)
oos = m.oos_index
edge, cloud = Classifier(m, art, "edge"), Classifier(m, art, "cloud")
ev, et = edge.probabilities(list(data.val.texts)), edge.probabilities(list(data.test.texts))
zv, zt = cloud.logits(list(data.val.texts)), cloud.logits(list(data.test.texts))
cv, ct = cloud.calibrate(zv), cloud.calibrate(zt)
yv, yt = np.asarray(data.val.labels), np.asarray(data.test.labels)
tv, tt = cloud_answer(cv, m.cloud, oos, logits=zv), cloud_answer(ct, m.cloud, oos, logits=zt)
frac = float((yt == oos).mean())
wv = traffic_weights(yv == oos, frac)
lv = np.array([len(t.split()) for t in data.val.texts]); lt = np.array([len(t.split()) for t in data.test.texts])

def feats(p, L):
    s = np.sort(p, axis=1)[:, ::-1]
    ent = -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)
    ins = in_scope_max_prob(p, oos)
    return np.stack([s[:, 0], s[:, 0] - s[:, 1], s[:, 1], s[:, 2], ent, ins, p[:, oos], np.log(L), 
                     np.log(np.clip(s[:,0],1e-6,1)), np.log(np.clip(ins,1e-6,1))], 1)

def logreg(X, y, w, l2=1e-2, iters=50):
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = np.c_[(X - mu) / sd, np.ones(len(X))]
    b = np.zeros(Z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-Z @ b))
        g = Z.T @ (w * (p - y)) + l2 * np.r_[b[:-1], 0]
        H = (Z * (w * p * (1 - p))[:, None]).T @ Z + l2 * np.eye(len(b))
        b -= np.linalg.solve(H, g)
    return lambda X2: 1 / (1 + np.exp(-(np.c_[(X2 - mu) / sd, np.ones(len(X2))] @ b)))

RESULTS: list[dict] = []


def evaluate(name, sv, st, bv, bt, target=0.995):
    ep_v, ep_t = ev.argmax(1), et.argmax(1)
    c = choose_deferral(sv, ep_v, tv, yv, oos, target_ratio=target, weights=wv, name=name, oos_score=bv)
    band = bt < c.oos_threshold
    esc = (st < c.threshold) & ~band
    base = np.where(band, oos, ep_t)
    joint = np.where(esc, tt, base)
    cacc = (tt == yt).mean()
    RESULTS.append({"rule": name, "target": target, "val_escalation": round(c.escalation_rate, 4),
                    "test_escalation": round(float(esc.mean()), 4),
                    "test_joint_over_cloud": round(float((joint == yt).mean() / cacc), 4),
                    "test_edge_oos_rate": round(float(band.mean()), 4)})
    return esc.mean()

bv, bt = in_scope_max_prob(ev, oos), in_scope_max_prob(et, oos)
for t in (0.995, 0.99):
    evaluate("margin/in_scope", SCORES["margin"](ev), SCORES["margin"](et), bv, bt, t)
    evaluate("max_prob/in_scope", SCORES["max_prob"](ev), SCORES["max_prob"](et), bv, bt, t)
    Xv, Xt = feats(ev, lv), feats(et, lt)
    # target: edge answer right (argmax) -- cross-fitted on val
    okv = (ev.argmax(1) == yv).astype(float)
    k = 5; fold = np.random.default_rng(0).integers(0, k, len(yv)); sv = np.zeros(len(yv))
    for f in range(k):
        sv[fold == f] = logreg(Xv[fold != f], okv[fold != f], wv[fold != f])(Xv[fold == f])
    st = logreg(Xv, okv, wv)(Xt)
    evaluate("logreg(edge ok)/in_scope", sv, st, bv, bt, t)
    # target: cloud right and edge wrong = gain
    gv = ((tv == yv) & (ev.argmax(1) != yv)).astype(float)
    sv2 = np.zeros(len(yv))
    for f in range(k):
        sv2[fold == f] = -logreg(Xv[fold != f], gv[fold != f], wv[fold != f])(Xv[fold == f])
    st2 = -logreg(Xv, gv, wv)(Xt)
    evaluate("logreg(-gain)/in_scope", sv2, st2, bv, bt, t)

import json  # noqa: E402
import platform  # noqa: E402

out = {"benchmark": "deferral_rule", "model_version": m.model_version, "rules": RESULTS,
       "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
print(json.dumps(out, indent=1))
Path("bench/results/deferral_rule.json").write_text(json.dumps(out, indent=1) + "\n")
