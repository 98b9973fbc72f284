"""Options shared by every plugin kind."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NoOptions:
    """The options of an attack or defense that takes none (the default `Options` of both base classes)."""
