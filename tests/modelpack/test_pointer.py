"""The publish pointer (latest.json): what publish writes is what both runtimes read; a bad one is named."""

from __future__ import annotations

import hashlib
import json

import pytest

from modelpack.errors import ChecksumMismatch, ManifestError
from modelpack.pointer import POINTER_NAME, Pointer, PointerError, is_valid_version

SHA = hashlib.sha256(b"the manifest").hexdigest()
WHERE = "s3://models/edge/latest.json"


def _raw(**changes: object) -> dict[str, object]:
    """latest.json as model_build publish writes it, with `changes` applied (None: the key left out)."""
    raw: dict[str, object] = {"model_version": "v7", "manifest_key": "models/v7/manifest.json",
                              "manifest_sha256": SHA, "published_at": "2025-01-02T03:04:05+00:00"}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def test_what_publish_writes_reads_back_as_the_same_pointer() -> None:
    pointer = Pointer("v7", "models/v7/manifest.json", SHA, "2025-01-02T03:04:05+00:00")

    text = pointer.to_json()

    assert json.loads(text) == _raw()  # the keys publish has always written, in its order
    assert list(json.loads(text)) == ["model_version", "manifest_key", "manifest_sha256", "published_at"]
    assert text == json.dumps(_raw(), indent=2) + "\n"
    assert Pointer.from_json(text) == pointer
    assert Pointer.from_json(text.encode()) == pointer


def test_a_pin_without_a_digest_or_time_round_trips_and_leaves_them_out() -> None:
    pin = Pointer("tiny-1", "models/tiny-1/manifest.json")

    assert json.loads(pin.to_json()) == {"model_version": "tiny-1", "manifest_key": "models/tiny-1/manifest.json"}
    assert Pointer.from_json(pin.to_json(), require_sha256=False) == pin


def test_keys_a_later_publish_may_add_are_ignored() -> None:
    pointer = Pointer.from_json(json.dumps(_raw(git_commit="abc123", notes={"by": "ci"})), where=WHERE)

    assert pointer == Pointer("v7", "models/v7/manifest.json", SHA, "2025-01-02T03:04:05+00:00")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model_version", "../v7", "model_version must be 1 to 128 letters"),
        ("model_version", "", "model_version must be"),
        ("model_version", 7, "model_version must be .*, got 7"),
        ("manifest_key", "models/v7/model.json", "manifest_key must name a manifest.json, got 'models/v7/model.json'"),
        ("manifest_key", "models/v7/mymanifest.json", "manifest_key must name a manifest.json"),
        ("manifest_key", ["models/v7/manifest.json"], "manifest_key must name a manifest.json"),
        ("manifest_sha256", SHA.upper(), "manifest_sha256 must be a lower-case hex SHA-256"),
        ("manifest_sha256", SHA[:-1], "manifest_sha256 must be a lower-case hex SHA-256"),
        ("manifest_sha256", 12, "manifest_sha256 must be a lower-case hex SHA-256, got 12"),
        ("published_at", "yesterday", "published_at must be an ISO 8601 time, got 'yesterday'"),
        ("published_at", 1735787045, "published_at must be an ISO 8601 time"),
    ],
)
def test_every_malformed_field_is_refused_naming_it_and_the_pointer(field: str, value: object, message: str) -> None:
    with pytest.raises(PointerError, match=f"^{WHERE}: {message}"):
        Pointer.from_json(json.dumps(_raw(**{field: value})), where=WHERE)


@pytest.mark.parametrize("field", ["model_version", "manifest_key", "manifest_sha256"])
def test_a_missing_field_is_named(field: str) -> None:
    raw = _raw()
    del raw[field]

    with pytest.raises(PointerError, match=f"^{POINTER_NAME}: {field} is missing$"):
        Pointer.from_json(json.dumps(raw))


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(PointerError) as caught:
        Pointer.from_json('{"manifest_key": "m/x.bin", "manifest_sha256": null}', where=WHERE)

    assert str(caught.value) == (f"{WHERE}: model_version is missing; manifest_key must name a manifest.json, "
                                 "got 'm/x.bin'; manifest_sha256 must be a lower-case hex SHA-256, got None")


def test_a_pin_may_leave_the_digest_out_only_when_the_reader_allows_it() -> None:
    pin = json.dumps(_raw(manifest_sha256=None))

    assert Pointer.from_json(pin, require_sha256=False).manifest_sha256 is None
    with pytest.raises(PointerError, match="manifest_sha256 is missing"):
        Pointer.from_json(pin)
    with pytest.raises(PointerError, match="manifest_sha256 must be a lower-case hex"):  # present: checked
        Pointer.from_json(json.dumps(_raw(manifest_sha256="abc")), require_sha256=False)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"{not json", "is not valid JSON"), (b'["v7"]', "must hold a JSON object"), (b"\xff\xfe", "is not valid JSON")],
)
def test_a_pointer_that_is_not_a_json_object_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(PointerError, match=f"^{WHERE} {message}"):
        Pointer.from_json(data, where=WHERE)


def test_a_pointer_error_is_a_manifest_error() -> None:
    # The edge's refusal reason ("manifest") and every caller catching ManifestError keep working.
    assert issubclass(PointerError, ManifestError)


def test_a_malformed_pointer_cannot_be_built_so_none_can_be_written() -> None:
    with pytest.raises(PointerError, match="^pointer: model_version must be"):
        Pointer("../etc", "models/v7/manifest.json", SHA)
    with pytest.raises(PointerError, match="manifest_key must name a manifest.json"):
        Pointer("v7", "models/v7/")


@pytest.mark.parametrize("version", ["v7", "tiny-1", "2025.01-rc1", "1.0+build.5", "A_b", "x" * 128, "7"])
def test_version_names_that_are_safe_folder_names_and_key_parts(version: str) -> None:
    assert is_valid_version(version)
    assert Pointer(version, f"models/{version}/manifest.json").model_version == version


@pytest.mark.parametrize(
    "version", ["", "../v7", "a/b", "a\\b", ".hidden", "-v7", "_v7", "v 7", "v7\n", "x" * 129, "vé", None, 7]
)
def test_version_names_that_could_escape_a_folder_or_a_prefix_are_not(version: object) -> None:
    assert not is_valid_version(version)


def test_the_files_of_a_version_lie_beside_its_manifest() -> None:
    assert Pointer("v7", "models/v7/manifest.json").key_of("edge_int8.tflite") == "models/v7/edge_int8.tflite"
    assert Pointer("v7", "manifest.json").key_of("tokenizer.json") == "tokenizer.json"  # publish with no prefix


def test_the_manifest_fetched_must_be_the_one_the_pointer_was_written_for() -> None:
    pointer = Pointer("v7", "models/v7/manifest.json", SHA)
    pointer.check_manifest(b"the manifest", "s3://models/models/v7/manifest.json")

    with pytest.raises(ChecksumMismatch, match=r"^s3://models/models/v7/manifest\.json: SHA-256 [0-9a-f]{64} "
                                               f"differs from the pointer's manifest_sha256 {SHA}$"):
        pointer.check_manifest(b"another manifest", "s3://models/models/v7/manifest.json")
    Pointer("v7", "models/v7/manifest.json").check_manifest(b"anything", "pin")  # no digest: nothing to hold to


CANARY = {"model_version": "v8", "manifest_key": "models/v8/manifest.json", "manifest_sha256": SHA, "fraction": 0.1}


def test_a_canary_round_trips_and_stable_drops_it() -> None:
    text = json.dumps(_raw(canary=CANARY))
    pointer = Pointer.from_json(text)
    assert pointer.canary is not None and pointer.canary.fraction == 0.1
    assert Pointer.from_json(pointer.to_json()) == pointer
    assert json.loads(pointer.to_json())["canary"] == CANARY
    assert pointer.stable().canary is None and pointer.stable().model_version == "v7"


def test_the_canary_cohort_is_the_fraction_stable_monotone_and_new_per_rollout() -> None:
    devices = [f"kiosk-{i:05d}" for i in range(20_000)]
    pointer = Pointer.from_json(json.dumps(_raw(canary=CANARY)))
    chosen = {d for d in devices if pointer.for_device(d).model_version == "v8"}
    assert len(chosen) / len(devices) == pytest.approx(0.1, abs=0.01)
    assert all(pointer.for_device(d).canary is None for d in devices[:10])
    again = {d for d in devices if pointer.for_device(d).model_version == "v8"}
    assert again == chosen  # every poll, the same answer
    wider = Pointer.from_json(json.dumps(_raw(canary={**CANARY, "fraction": 0.5})))
    assert chosen <= {d for d in devices if wider.for_device(d).model_version == "v8"}  # raising only adds
    other = Pointer.from_json(json.dumps(_raw(canary={**CANARY, "model_version": "v9",
                                                      "manifest_key": "models/v9/manifest.json"})))
    overlap = chosen & {d for d in devices if other.for_device(d).model_version == "v9"}
    assert len(overlap) / len(chosen) == pytest.approx(0.1, abs=0.03)  # another rollout, another cohort


@pytest.mark.parametrize(("canary", "message"), [
    ({**CANARY, "fraction": 0}, "canary.fraction must be a number in (0, 1]"),
    ({**CANARY, "fraction": 1.5}, "canary.fraction must be"),
    ({**CANARY, "fraction": True}, "canary.fraction must be"),
    ({k: v for k, v in CANARY.items() if k != "fraction"}, "canary.fraction is missing"),
    ({k: v for k, v in CANARY.items() if k != "manifest_sha256"}, "canary.manifest_sha256 is missing"),
    ({**CANARY, "model_version": "../x"}, "canary.model_version must be"),
    ({**CANARY, "model_version": "v7", "manifest_key": "models/v7/manifest.json"}, "must differ from model_version"),
    ("v8", "canary must be an object"),
])
def test_a_bad_canary_is_refused_naming_the_field(canary: object, message: str) -> None:
    with pytest.raises(PointerError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Pointer.from_json(json.dumps(_raw(canary=canary)), where=WHERE)
