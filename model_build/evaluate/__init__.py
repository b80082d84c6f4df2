"""The evaluate room: an artifact measured on the test split through the real interpreter (`measure`:
accuracy, ECE, latency, the routing rule as shipped; what `model_build evaluate DIR` recomputes), what it does
with out-of-domain texts (`ood`: `evaluate DIR --ood FILE`), the goals and gates judged on those figures
(`goals`), and every figure as a typed result with its one serialisation, metrics.json (`metrics`)."""
