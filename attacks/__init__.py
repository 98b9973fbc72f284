"""Attacks: the `Attack` base class and the built-in attacks (see `cleanbench list attacks`)."""

from cleanbench.attacks.base import Attack, NoOptions, quantize, trigger_uint8
from cleanbench.attacks.preview import attack_from_card, trigger_preview

__all__ = ["Attack", "NoOptions", "attack_from_card", "quantize", "trigger_preview", "trigger_uint8"]
