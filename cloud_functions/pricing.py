"""What a call costs, in the integer units budgets are kept in.

A call pays a fee (COST_PER_REQUEST + COST_PER_TEXT x texts) and, on an LLM backend, what its tokens cost
(`TokenPrices`, USD per million tokens from the provider's price list) converted to units at
BUDGET_UNIT_USD per unit, rounded up: a budget of units then caps dollars too.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING

from cloud_functions.errors import BadRequest

if TYPE_CHECKING:
    from cloud_functions.settings import Settings

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Pricing:
    """Integer cost of one call. A cost of 0 (both prices 0, no tokens) means no reservation at all."""

    per_request: int
    per_text: int
    unit_usd: Decimal = Decimal("0.0001")

    @classmethod
    def from_settings(cls, settings: Settings) -> Pricing:
        return cls(per_request=settings.cost_per_request, per_text=settings.cost_per_text,
                   unit_usd=settings.budget_unit_usd)

    def cost(self, n_texts: int) -> int:
        if n_texts < 0:
            raise BadRequest("the number of texts cannot be negative", n_texts=n_texts)
        return self.per_request + self.per_text * n_texts

    def units(self, usd: Decimal) -> int:
        """Budget units for `usd`, rounded up (a call that cost anything costs at least one unit)."""
        if usd <= 0:
            return 0
        return int((usd / self.unit_usd).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """USD per million input and output tokens of one model."""

    input_usd_per_mtok: Decimal = Decimal(0)
    output_usd_per_mtok: Decimal = Decimal(0)

    def usd(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / _MILLION
