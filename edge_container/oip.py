"""The Open Inference Protocol v2 (KServe / Triton REST): one BYTES tensor of texts in, probabilities, labels
and confidences out, as JSON tensors or with the protocol's binary tensor data extension.

Binary extension: the `Inference-Header-Content-Length` header gives the length of the JSON header at the
start of the body; the raw tensor bytes follow it, in the order of the tensors whose `parameters` declare a
`binary_data_size`. A BYTES tensor is its elements, each a 4-byte little-endian length and that many bytes.
Outputs come back in binary when asked (`parameters.binary_data` on a requested output, or the request's
`parameters.binary_data_output` for the others), the same way.

Errors on these routes are the protocol's `{"error": "<message>"}` (`ProtocolError`), which OIP clients
read and print; the other routes keep the service's `{"error": {"code", "message"}}`.

Every size is checked against the settings before any work proportional to it: a shape has at most
`MAX_DIMS` dimensions, each at most `max_texts`, so their product is cheap; parsing never walks more than
what that product allows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edge_container.errors import (
    BadRequest,
    EdgeError,
    EmptyText,
    InvalidJson,
    PayloadTooLarge,
    TooManyTexts,
    UnsupportedMediaType,
)
from edge_container.runtime import EdgeModel
from edge_container.schemas import check_texts, is_json_media_type, json_object
from edge_container.settings import Settings

OUTPUTS = ("probabilities", "label", "confidence")
MAX_DIMS = 8  # a tensor of texts is [n] or [n, 1] in practice; 8 leaves room and keeps math.prod trivial
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
_FIELDS = frozenset({"id", "inputs", "outputs", "parameters"})
_TENSOR_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_FIELDS = frozenset({"name", "parameters"})


class ProtocolError(EdgeError):
    """`cause` in the protocol's error shape. Status, headers and `code` (for the error metrics) are the
    cause's; only the body differs."""

    def __init__(self, cause: EdgeError) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.status = cause.status  # type: ignore[misc]  # per instance: the cause's status
        self.code = cause.code  # type: ignore[misc]

    def body(self) -> dict[str, Any]:
        return {"error": self.message}

    def headers(self) -> dict[str, str]:
        return self.cause.headers()


@contextmanager
def protocol_errors() -> Iterator[None]:
    """Inside it, any `EdgeError` leaves as a `ProtocolError`."""
    try:
        yield
    except ProtocolError:
        raise
    except EdgeError as exc:
        raise ProtocolError(exc) from exc


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    texts: tuple[str, ...]
    outputs: tuple[RequestedOutput, ...]
    request_id: str | None


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


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, read up to `limit` bytes (counted as it arrives: a lying or absent length cannot get
    past). The media type is checked first: JSON, binary or none (tritonclient sends none)."""
    content_type = request.headers.get("content-type")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and media != BINARY_MEDIA_TYPE and not is_json_media_type(media):
        raise UnsupportedMediaType(f"send the request as content-type: application/json, or {BINARY_MEDIA_TYPE} "
                                   f"with {HEADER_LENGTH} for binary tensors; not {content_type!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
    return bytes(body)


def parse_infer(body: bytes, headers: Mapping[str, str], settings: Settings) -> InferRequest:
    """An inference request, in JSON tensors or with the binary extension (`headers` says which)."""
    head, blob = _split(body, headers.get(HEADER_LENGTH.lower()))
    if not head.strip():
        raise InvalidJson("the body is empty; send an inference request")
    try:
        raw = json.loads(head)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidJson(f"the inference header is not valid JSON: {exc}") from None
    request = json_object(raw, _FIELDS)
    parameters = _parameters(request, "parameters", {"binary_data_output": bool}, open_=True)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("inputs must be a list holding one BYTES tensor of texts")
    texts, used = _texts(inputs[0], blob, settings)
    if used != len(blob):
        raise BadRequest(f"{len(blob) - used} bytes of binary data follow the inputs' binary_data_size")
    request_id = request.get("id")
    if "id" in request and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    return InferRequest(texts, _outputs(request, parameters.get("binary_data_output", False)), request_id)


def infer_response(name: str, model: EdgeModel, probs: np.ndarray, request: InferRequest) -> Response:
    n = len(probs)
    top = probs.argmax(axis=1)
    probabilities = probs.astype("<f4")
    labels = [model.labels[i] for i in top.tolist()]
    confidence = probabilities[np.arange(n), top]
    tensors: dict[str, tuple[list[int], str, Any, bytes]] = {  # shape, datatype, JSON data, binary data
        "probabilities": ([n, probs.shape[1]], "FP32", probabilities.ravel().tolist(), probabilities.tobytes()),
        "label": ([n], "BYTES", labels, _bytes_tensor(labels)),
        "confidence": ([n], "FP32", confidence.tolist(), confidence.tobytes()),
    }
    outputs, blobs = [], []
    for out in request.outputs:
        shape, datatype, data, blob = tensors[out.name]
        tensor: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": shape}
        if out.binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": name, "model_version": model.version, "outputs": outputs}
    if request.request_id is not None:
        answer["id"] = request.request_id
    if not blobs:
        return JSONResponse(answer)
    head = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(b"".join([head, *blobs]), media_type=BINARY_MEDIA_TYPE,
                    headers={HEADER_LENGTH: str(len(head))})


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} must be the JSON header's length in bytes, 1 to the body's "
                         f"{len(body)}; got {header_length[:32]!r}")
    length = int(header_length)
    return body[:length], body[length:]


def _parameters(owner: dict[str, Any], where: str, known: dict[str, type], *, open_: bool = False
                ) -> dict[str, Any]:
    """`owner["parameters"]`, if there (null is not absent): each known key of its type; other keys are
    ignored if `open_`, else a 400."""
    if "parameters" not in owner:
        return {}
    raw = owner["parameters"]
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object")
    unknown = sorted(set(raw) - set(known))
    if unknown and not open_:
        raise BadRequest(f"{where}: {unknown} not supported by this server; it knows {sorted(known)}")
    for key, kind in known.items():
        value = raw.get(key)
        if key in raw and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise BadRequest(f"{where}.{key} must be {'a boolean' if kind is bool else 'an integer'}")
    return raw


def _texts(tensor: dict[str, Any], blob: bytes, settings: Settings) -> tuple[tuple[str, ...], int]:
    """The texts of the input tensor, and how many bytes of `blob` it took."""
    json_object(tensor, _TENSOR_FIELDS)
    if not isinstance(tensor.get("name"), str):
        raise BadRequest("inputs[0].name must be a string")
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(f"inputs[0].datatype must be BYTES, got {tensor.get('datatype')!r}")
    count = _count(tensor.get("shape"), settings)
    size = _parameters(tensor, "inputs[0].parameters", {"binary_data_size": int}).get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise BadRequest("inputs[0] needs data, or parameters.binary_data_size with the binary extension")
        flat = _flatten(tensor["data"], count, len(tensor["shape"]))
        return check_texts(flat, settings, "inputs[0].data"), 0
    if "data" in tensor:
        raise BadRequest("inputs[0] has both data and parameters.binary_data_size: send one")
    if not 0 <= size <= len(blob):
        raise BadRequest(f"inputs[0].parameters.binary_data_size is {size}; {len(blob)} bytes of binary data follow "
                         "the header")
    return check_texts(_bytes_elements(blob[:size], count), settings, "inputs[0].data"), size


def _count(shape: Any, settings: Settings) -> int:
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS:
        raise BadRequest(f"inputs[0].shape must be a list of 1 to {MAX_DIMS} dimensions")
    dims = []
    for i, d in enumerate(shape):
        if isinstance(d, float) and d.is_integer():  # 2.0 is the integer 2 to JSON (and JSON Schema)
            d = int(d)
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= settings.max_texts:
            raise BadRequest(f"inputs[0].shape[{i}] must be an integer in [0, {settings.max_texts}]")
        dims.append(d)
    count = math.prod(dims)  # at most max_texts ** MAX_DIMS: cheap
    if count == 0:
        raise EmptyText(f"inputs[0].shape {dims} holds no texts")
    if count > settings.max_texts:
        raise TooManyTexts(f"inputs[0].shape {dims} holds {count} texts; the limit is {settings.max_texts}")
    return count


def _flatten(data: Any, count: int, dims: int) -> list[Any]:
    """The leaves of `data` (flat, or nested at most `dims` deep), walking at most what a tensor of `count`
    elements in `dims` dimensions can hold: a longer or deeper list is refused, not walked."""
    if not isinstance(data, list):
        raise BadRequest("inputs[0].data must be a list of strings")
    mismatch = BadRequest(f"inputs[0].shape holds {count} texts; data does not hold exactly that many")
    flat: list[Any] = []
    budget = dims * count  # items at all levels of a tensor of `count` elements in `dims` dimensions

    def walk(items: list[Any], depth: int) -> None:  # depth <= dims <= MAX_DIMS: the recursion is bounded
        nonlocal budget
        budget -= len(items)
        if budget < 0 or depth > dims:
            raise mismatch
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                flat.append(item)

    walk(data, 1)
    if len(flat) != count:
        raise mismatch
    return flat


def _bytes_elements(blob: bytes, count: int) -> list[str]:
    """`count` elements of a binary BYTES tensor, each a 4-byte little-endian length and UTF-8 text."""
    texts, at = [], 0
    for i in range(count):
        if at + 4 > len(blob):
            raise BadRequest(f"inputs[0] binary data ends inside element {i} of the {count} its shape holds")
        n = int.from_bytes(blob[at:at + 4], "little")
        at += 4
        if n > len(blob) - at:
            raise BadRequest(f"inputs[0] binary element {i} claims {n} bytes; {len(blob) - at} are left")
        try:
            texts.append(blob[at:at + n].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest(f"inputs[0] binary element {i} is not UTF-8 text: {exc.reason}") from None
        at += n
    if at != len(blob):
        raise BadRequest(f"inputs[0] binary data has {len(blob) - at} bytes after its {count} elements")
    return texts


def _bytes_tensor(texts: list[str]) -> bytes:
    encoded = [t.encode() for t in texts]
    return b"".join(len(e).to_bytes(4, "little") + e for e in encoded)


def _outputs(request: dict[str, Any], binary_default: bool) -> tuple[RequestedOutput, ...]:
    if "outputs" not in request:
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUTS)
    raw = request["outputs"]
    if not isinstance(raw, list) or not raw:
        raise BadRequest(f"outputs must be a non-empty list of {{'name': one of {list(OUTPUTS)}}}")
    wanted: list[RequestedOutput] = []
    for i, out in enumerate(raw):
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            raise BadRequest(f"outputs[{i}] must be {{'name': one of {list(OUTPUTS)}}}")
        json_object(out, _OUTPUT_FIELDS)
        binary = _parameters(out, f"outputs[{i}].parameters", {"binary_data": bool}).get("binary_data")
        wanted.append(RequestedOutput(out["name"], binary_default if binary is None else binary))
    return tuple(wanted)
