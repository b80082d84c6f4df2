"""Amazon Bedrock as a backend: zero-shot classification over the artifact's labels (Converse API).

The client is passed in (`cloud_functions.clients.bedrock_runtime` in the Lambda, a botocore `Stubber`
in tests: moto has no usable bedrock-runtime). The prompt, the answer format and its parser are
`cloud_functions.zero_shot`'s, shared with the OpenAI-compatible backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from cloud_functions import zero_shot
from cloud_functions.inference import BackendError, Inference
from cloud_functions.pricing import TokenPrices
from modelpack.cloud_api import Answer, TextResult, Usage


class BedrockRuntimeClient(Protocol):
    def converse(self, **kwargs: Any) -> dict[str, Any]: ...


class BedrockBackend:
    """Zero-shot classification over the artifact's label list by a Bedrock model, one Converse call per
    batch. The model's stated confidence is reported as is: Converse gives no log-probabilities, so it is
    not calibrated like the teacher's. An answer outside the label list counts as out of scope (when the
    artifact has an oos label)."""

    def __init__(
        self,
        client: BedrockRuntimeClient,
        *,
        model_id: str,
        labels: Sequence[str],
        oos_label: str | None,
        input_usd_per_mtok: Decimal = Decimal(0),
        output_usd_per_mtok: Decimal = Decimal(0),
    ) -> None:
        if not model_id:
            raise ValueError("a Bedrock backend needs a model id")
        self._client = client
        self._model_id = model_id
        self._labels = tuple(labels)
        self._oos_label = oos_label
        self._prices = TokenPrices(Decimal(input_usd_per_mtok), Decimal(output_usd_per_mtok))
        self._system = zero_shot.system_prompt(self._labels, oos_label)

    @property
    def model_version(self) -> str:
        return f"bedrock:{self._model_id}"

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def request(self, texts: Sequence[str]) -> dict[str, Any]:
        """The Converse request for `texts` (public so tests can pin it with botocore's Stubber)."""
        return {
            "modelId": self._model_id,
            "system": [{"text": self._system}],
            "messages": [{"role": "user", "content": [{"text": zero_shot.user_message(texts)}]}],
            "inferenceConfig": {"maxTokens": zero_shot.max_output_tokens(len(texts)), "temperature": 0.0},
        }

    def max_cost_usd(self, texts: Sequence[str]) -> Decimal:
        prompt = zero_shot.max_input_tokens(self._system, zero_shot.user_message(texts))
        return self._prices.usd(prompt, zero_shot.max_output_tokens(len(texts)))

    def infer(self, texts: Sequence[str]) -> Inference:
        try:
            response = self._client.converse(**self.request(texts))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise BackendError(f"Bedrock Converse failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise BackendError(f"Bedrock could not be reached: {exc}") from exc
        if response.get("stopReason") == "max_tokens":
            raise BackendError("the Bedrock answer was cut off at maxTokens")
        answers = zero_shot.parse(_answer_text(response), len(texts), self._labels, self._oos_label,
                                  source="Bedrock")
        results = tuple(TextResult(a.label, a.confidence, (Answer(a.label, a.confidence),)) for a in answers)
        return Inference(results, self._usage(response.get("usage") or {}))

    def _usage(self, usage: dict[str, Any]) -> Usage:
        tokens_in, tokens_out = int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0))
        return Usage(tokens_in, tokens_out, self._prices.usd(tokens_in, tokens_out))


def _answer_text(response: dict[str, Any]) -> str:
    content = response.get("output", {}).get("message", {}).get("content") or []
    texts = [block["text"] for block in content if isinstance(block, dict) and "text" in block]
    if not texts:
        raise BackendError("the Bedrock answer holds no text")
    return "".join(texts)
