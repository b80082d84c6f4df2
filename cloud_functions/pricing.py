"""What a call costs, in the integer units budgets are kept in (COST_PER_REQUEST, COST_PER_TEXT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloud_functions.errors import BadRequest

if TYPE_CHECKING:
    from cloud_functions.settings import Settings


@dataclass(frozen=True, slots=True)
class Pricing:
    """Integer cost of one call. A cost of 0 (both prices 0) means the handler need not reserve at all."""

    per_request: int
    per_text: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Pricing:
        return cls(per_request=settings.cost_per_request, per_text=settings.cost_per_text)

    def cost(self, n_texts: int) -> int:
        if n_texts < 0:
            raise BadRequest("the number of texts cannot be negative", n_texts=n_texts)
        return self.per_request + self.per_text * n_texts
