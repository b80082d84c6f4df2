"""Pricing: the integer cost of a call in budget units."""

from __future__ import annotations

import pytest

from cloud_functions.errors import BadRequest
from cloud_functions.pricing import Pricing
from cloud_functions.settings import Settings


def test_pricing_charges_per_request_and_per_text() -> None:
    pricing = Pricing(per_request=2, per_text=3)

    assert pricing.cost(4) == 14
    with pytest.raises(BadRequest):
        pricing.cost(-1)


def test_pricing_comes_from_the_cost_settings() -> None:
    settings = Settings.from_env(
        {"BUDGET_TABLE": "b", "IDEMPOTENCY_TABLE": "i", "MODEL_URI": "/opt/model", "COST_PER_TEXT": "3"}
    )

    assert Pricing.from_settings(settings) == Pricing(per_request=1, per_text=3)
    assert Pricing.from_settings(settings).cost(2) == 7
