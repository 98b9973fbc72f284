"""No defense: the poisoned model as it is (the reference point of every delta)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from cleanbench.defenses.base import Defense, DefenseContext

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle


class NoDefense(Defense):
    """Returns the model unchanged."""

    name = "none"
    description = "no defense: evaluates the poisoned model as it is"
    source = "-"
    stage = "none"
    needs = frozenset()

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        return bundle.model
