"""Defenses: the `Defense` base class and the built-in defenses (see `cleanbench list defenses`)."""

from cleanbench.defenses.base import Defense, DefenseContext

__all__ = ["Defense", "DefenseContext"]
