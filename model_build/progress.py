"""Progress bars and stage timings for long builds (tqdm writes to stderr; stdout stays clean)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cached: dict[str, bool] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"[build] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = round(elapsed, 2)
            note = " (cached)" if self.cached.get(name) else ""
            print(f"[build] {name} done in {elapsed:.1f} s{note}", file=sys.stderr, flush=True)

    def mark_cached(self, name: str, cached: bool) -> None:
        self.cached[name] = cached


def keras_progress(label: str, epochs: int):
    """A Keras callback showing one bar over all training batches, with the latest loss/accuracy."""
    import keras  # the stage timer above is used by every build, Keras only by one that trains

    class _Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            steps = self.params.get("steps") or 0
            self.bar = tqdm(total=steps * epochs, desc=label, unit="step", leave=False, file=sys.stderr)

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if logs and batch % 20 == 0:
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "accuracy")})

        def on_epoch_end(self, epoch, logs=None):
            shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
            self.bar.write(f"[{label}] epoch {epoch + 1}/{epochs}: {shown}", file=sys.stderr)

        def on_train_end(self, logs=None):
            self.bar.close()

    return _Progress()
