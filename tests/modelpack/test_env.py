"""The shared environment reader: typed values, empty as unset, and each caller's own error type."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cloud_functions.errors import ConfigurationError as CloudConfigurationError
from edge_container.errors import ConfigurationError as EdgeConfigurationError
from modelpack.env import EnvReader


class TierError(Exception):
    """Stands in for a tier's ConfigurationError: the reader must raise whatever the tier supplies."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


def _reader(**environ: str) -> EnvReader:
    return EnvReader(environ, TierError)


def test_values_are_stripped_and_an_empty_value_counts_as_unset() -> None:
    env = _reader(NAME="  edge  ", BLANK="   ")

    assert env.raw("NAME") == "edge" and env.raw("BLANK") == "" and env.raw("UNSET") == ""
    assert env.text("NAME") == "edge" and env.text("BLANK", "default") == "default"
    assert env.opt_text("BLANK") is None and env.opt_text("UNSET") is None


def test_a_missing_text_without_a_default_is_the_callers_error_naming_the_key() -> None:
    with pytest.raises(TierError) as caught:
        _reader(TABLE=" ").text("TABLE")

    assert str(caught.value) == "environment variable TABLE is missing or empty"
    assert caught.value.key == "TABLE"


def test_a_choice_must_be_one_of_the_allowed_values() -> None:
    env = _reader(POLICY="margin", BAD="smart")

    assert env.choice("POLICY", ("threshold", "margin"), default="threshold") == "margin"
    assert env.choice("UNSET", ("threshold", "margin"), default="threshold") == "threshold"
    with pytest.raises(TierError, match=r"^environment variable BAD='smart' must be one of threshold, margin$"):
        env.choice("BAD", ("threshold", "margin"), default="threshold")


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("TRUE", True), ("on", True), ("no", False),
                                               ("0", False), (" Off ", False)])
def test_booleans_read_the_usual_words(raw: str, expected: bool) -> None:
    assert _reader(FLAG=raw).boolean("FLAG", not expected) is expected
    assert _reader().boolean("FLAG", expected) is expected  # unset: the default


def test_a_word_that_is_not_a_boolean_is_refused() -> None:
    with pytest.raises(TierError, match=r"^environment variable FLAG='maybe' is not a boolean \(true/false\)$"):
        _reader(FLAG="Maybe").boolean("FLAG", False)


def test_numbers_parse_to_their_type_or_none_when_unset() -> None:
    env = _reader(N=" 42 ", F="2.5", D="0.25")

    assert env.int_or_none("N") == 42 and env.int_or_none("UNSET") is None
    assert env.float_or_none("F") == 2.5 and env.float_or_none("UNSET") is None
    assert env.decimal_or_none("D") == Decimal("0.25") and env.decimal_or_none("UNSET") is None


@pytest.mark.parametrize(
    ("read", "raw", "message"),
    [
        (EnvReader.int_or_none, "1.5", "environment variable X='1.5' is not an integer"),
        (EnvReader.float_or_none, "fast", "environment variable X='fast' is not a number"),
        (EnvReader.decimal_or_none, "cheap", "environment variable X='cheap' is not a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_quoting_it(read: object, raw: str, message: str) -> None:
    with pytest.raises(TierError) as caught:
        read(_reader(X=raw), "X")  # type: ignore[operator]

    assert str(caught.value) == message and caught.value.key == "X"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no parser traceback


def test_bounds_are_the_callers_the_reader_builds_the_message() -> None:
    env = _reader(PORT="70000")

    error = env.bad("PORT", env.raw("PORT"), "must be in [0, 65535]")

    assert isinstance(error, TierError) and error.key == "PORT"
    assert str(error) == "environment variable PORT='70000' must be in [0, 65535]"


def test_each_tier_gets_its_own_configuration_error() -> None:
    for error_type in (CloudConfigurationError, EdgeConfigurationError):
        with pytest.raises(error_type) as caught:
            EnvReader({"X": "x"}, error_type).int_or_none("X")
        assert caught.value.message == "environment variable X='x' is not an integer"
