"""Replay the CLINC150 test split through the local stack's edge and report what the edge-cloud split bought.

    python -m infra.demo [--scenario normal|faults|learn|pacing|shift] [--concurrency 16] [--limit N] [--model-dir DIR]
                         [--cloud-concurrency 4]

Starts `LocalStack` (free ports), sends every test text (test + oos_test: 5,500) to the edge's
`POST /v1/predict` with bounded concurrency, sends the same texts once straight to the cloud API (the
cloud-only baseline, on the stack's own key so the tenant's budget measures the joint system alone), and
writes `reports/demo.json`, `reports/demo.md` and two PNG plots (`reports/demo_faults.*` for `faults`).

`faults` runs the same replay and, while it runs: kills the cloud process (SIGKILL), starts it again,
sets the tenant's budget to 0, then restores it. The edge must answer every request all along.

    records   the replayed requests and the run's events (Sample, Outcome, Event, Timeline)
    load      the test split, the load generator, the cloud-only pass
    faults    the fault scenario, and the replay cut at its events
    stats     the figures of a run (accuracies, rates, cost, latency percentiles)
    plots     the two PNGs
    report    the notes and the markdown report
    replays   learn | pacing | shift: the cascade-economics replays (bench/learn.py, pacing.py, shift.py)
    run       one demo from start to files, and the command line
"""
