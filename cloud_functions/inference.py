"""What every inference backend is: the protocol the service calls, its result, and its one error.

A backend turns a batch of texts into one `TextResult` per text (`modelpack.cloud_api`: the wire type).
When the out-of-scope rule answers `oos_label`, `confidence` is the (low) top probability and `top_k` still
shows what the model leaned to. It knows nothing of tenants, budgets or HTTP; failures come out as
`BackendError` (the service refunds the charge and answers 503). The backends: `litert_backend` (the
packaged teacher, the default), `bedrock_backend` and `openai_backend` (LLMs, `zero_shot`'s contract);
`backends` picks one and loads it lazily.

A metered backend (an LLM, paid per token) says what a call may cost at most before it is made
(`max_cost_usd`: the budget reserves that much) and what it did cost after (`Inference.usage`, the wire's
`modelpack.cloud_api.Usage`: the budget keeps that, gives the rest back, and the reply carries it as it is).
An unmetered one answers 0 and no usage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from modelpack.cloud_api import TextResult, Usage


class BackendError(Exception):
    """The backend could not answer (model failed, remote call failed, answer broke the contract)."""


@dataclass(frozen=True, slots=True)
class Inference:
    results: tuple[TextResult, ...]
    usage: Usage | None = None  # None: the backend is not metered per call (the packaged model)


class InferenceBackend(Protocol):
    @property
    def model_version(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    def infer(self, texts: Sequence[str]) -> Inference: ...

    def max_cost_usd(self, texts: Sequence[str]) -> Decimal:
        """The most `infer(texts)` can cost in USD (0: not metered per call)."""
        ...
