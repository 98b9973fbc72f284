"""Attacks: the `Attack` base class and the built-in attacks (see `cleanbench list attacks`)."""

from cleanbench.attacks.base import Attack, NoOptions, quantize, trigger_uint8

__all__ = ["Attack", "NoOptions", "quantize", "trigger_uint8"]
