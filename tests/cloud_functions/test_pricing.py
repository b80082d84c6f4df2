"""Pricing: the integer cost of a call in budget units."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cloud_functions.errors import BadRequest
from cloud_functions.pricing import Pricing, TokenPrices
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


def test_token_costs_become_whole_units_rounded_up() -> None:
    pricing = Pricing(per_request=1, per_text=1, unit_usd=Decimal("0.0001"))

    assert pricing.units(Decimal(0)) == 0
    assert pricing.units(Decimal("0.00000001")) == 1  # anything at all costs a unit
    assert pricing.units(Decimal("0.0003")) == 3
    assert pricing.units(Decimal("0.00030001")) == 4


def test_token_prices_are_per_million_tokens() -> None:
    prices = TokenPrices(Decimal("0.15"), Decimal("0.60"))

    assert prices.usd(1_000_000, 0) == Decimal("0.15")
    assert prices.usd(2_000, 100) == Decimal("0.00036")
