"""The Open Inference Protocol v2 (KServe / Triton REST) shapes: a BYTES text input in, probabilities out."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge_container.errors import BadRequest
from edge_container.runtime import EdgeModel
from edge_container.schemas import check_texts, json_object
from edge_container.settings import Settings

OUTPUTS = ("probabilities", "label", "confidence")
_FIELDS = frozenset({"id", "inputs", "outputs", "parameters"})


def model_metadata(name: str, model: EdgeModel) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [model.version],
        "platform": "tflite",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.labels)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
        ],
        "parameters": {"labels": list(model.labels)},
    }


def parse_infer(raw: Any, settings: Settings) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """(texts, requested output names, request id) from an inference request."""
    body = json_object(raw, _FIELDS)
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("inputs must be a list holding one BYTES tensor of texts")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"inputs[0].datatype must be BYTES, got {tensor.get('datatype')!r}")
    shape, data = tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise BadRequest("inputs[0].shape must be a list of non-negative integers")
    flat = _flatten(data)
    if math.prod(shape) != len(flat):
        raise BadRequest(f"inputs[0].shape {shape} does not match its {len(flat)} data elements")
    texts = check_texts(flat, settings, "inputs[0].data")
    wanted = OUTPUTS
    if body.get("outputs") is not None:
        outs = body["outputs"]
        if not isinstance(outs, list) or not all(isinstance(o, dict) and o.get("name") in OUTPUTS for o in outs):
            raise BadRequest(f"outputs must be a list of {{'name': one of {list(OUTPUTS)}}}")
        wanted = tuple(o["name"] for o in outs)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    return texts, wanted, request_id


def infer_response(name: str, model: EdgeModel, probs: np.ndarray, wanted: tuple[str, ...],
                   request_id: str | None) -> dict[str, Any]:
    n = len(probs)
    top = probs.argmax(axis=1)
    tensors = {
        "probabilities": {"shape": [n, probs.shape[1]], "datatype": "FP32",
                          "data": probs.astype(np.float32).ravel().tolist()},
        "label": {"shape": [n], "datatype": "BYTES", "data": [model.labels[i] for i in top.tolist()]},
        "confidence": {"shape": [n], "datatype": "FP32", "data": probs[np.arange(n), top].astype(np.float32).tolist()},
    }
    out: dict[str, Any] = {"model_name": name, "model_version": model.version,
                           "outputs": [{"name": k, **tensors[k]} for k in wanted]}
    if request_id is not None:
        out["id"] = request_id
    return out


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest("inputs[0].data must be a list of strings")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat
