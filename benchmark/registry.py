"""A typed, lazy registry of attacks, defenses and detectors.

Names come from three places: built-ins (imported only when used), the entry-point groups
`cleanbench.attacks`, `cleanbench.defenses` and `cleanbench.detectors` of installed packages, and
plugin files loaded with `--plugin path.py` (which call `register_attack` / `register_defense` /
`register_detector`). An unknown name fails
with a did-you-mean hint; a plugin that fails to import is reported with its error and skipped,
so listing never crashes.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, NoReturn, TypeVar

from cleanbench.errors import RunError, UsageError

T = TypeVar("T")


@dataclass
class Entry:
    """One registered name: where it comes from, and its class once loaded (or the import error)."""

    name: str
    source: str
    target: str | type | None = None
    error: str | None = None


class Registry(Generic[T]):
    """Plugins of one kind, by name."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str], base: str) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._entries: dict[str, Entry] = {name: Entry(name, "builtin", target) for name, target in builtins.items()}
        self._entry_points_loaded = False

    def register(self, cls: type[T], name: str | None = None, source: str = "plugin") -> type[T]:
        """Register `cls` under `name` (default: its `name` attribute).

        UsageError when `cls` is not a subclass of the kind's base class (`base`, module:Class), or
        when the name is a built-in's: a plugin adds a name, it never replaces a built-in."""
        module_name, _, attribute = self.base.partition(":")
        base = getattr(importlib.import_module(module_name), attribute)
        where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)!s}"
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise UsageError(f"{self.kind} plugin {where} is not a subclass of {module_name}.{attribute}; "
                             f"derive it from {attribute}")
        key = name or getattr(cls, "name", None)
        if not key:
            raise UsageError(f"{self.kind} plugin {where} has no `name`; set a class attribute `name = '...'`")
        existing = self._entries.get(key)
        if existing is not None and existing.source == "builtin":
            builtin = existing.target.replace(":", ".") if isinstance(existing.target, str) else (
                f"{existing.target.__module__}.{existing.target.__qualname__}")
            raise UsageError(f"{self.kind} plugin {where} is named {key!r}, which is the built-in {builtin}; "
                             "give the plugin another `name`")
        self._entries[key] = Entry(key, source, cls)
        return cls

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for point in entry_points(group=self.group):
            dist = getattr(point.dist, "name", None) or "unknown package"
            if point.name in self._entries and self._entries[point.name].source == "builtin":
                continue
            self._entries[point.name] = Entry(point.name, f"entry point of {dist}", point.value)

    def entries(self) -> list[Entry]:
        """Every registered name with its class or the error that stopped it from loading."""
        self._load_entry_points()
        for entry in self._entries.values():
            self._resolve(entry)
        return sorted(self._entries.values(), key=lambda e: e.name)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def _resolve(self, entry: Entry) -> type | None:
        if isinstance(entry.target, type) or entry.error:
            return entry.target if isinstance(entry.target, type) else None
        module_name, _, attribute = str(entry.target).partition(":")
        try:
            entry.target = getattr(importlib.import_module(module_name), attribute)
        except Exception as error:  # a broken plugin must not break the others
            entry.error = f"{type(error).__name__}: {error}"
            return None
        return entry.target

    def check_name(self, name: str) -> None:
        """UsageError with a did-you-mean hint unless `name` is registered (nothing is imported)."""
        self._load_entry_points()
        if name not in self._entries:
            self._unknown(name)

    def _unknown(self, name: str) -> NoReturn:
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise UsageError(
            f"unknown {self.kind} {name!r}; {hint}known: {', '.join(sorted(self._entries))} "
            f"(see `cleanbench list {self.kind}s`)"
        )

    def get(self, name: str) -> type[T]:
        """The class registered as `name`; UsageError with a did-you-mean hint if unknown."""
        self._load_entry_points()
        entry = self._entries.get(name)
        if entry is None:
            self._unknown(name)
        cls = self._resolve(entry)
        if cls is None:
            raise RunError(f"{self.kind} {name!r} ({entry.source}) failed to load: {entry.error}")
        return cls


ATTACKS: Registry = Registry(
    "attack",
    "cleanbench.attacks",
    {
        "none": "cleanbench.attacks.none:NoAttack",
        "badnet": "cleanbench.attacks.badnet:BadNet",
        "blended": "cleanbench.attacks.blended:Blended",
        "wanet": "cleanbench.attacks.wanet:WaNet",
        "label-consistent": "cleanbench.attacks.label_consistent:LabelConsistent",
        "sig": "cleanbench.attacks.sig:SIG",
        "solid-patch": "cleanbench.attacks.solid_patch:SolidPatch",
        "badnet-stripes": "cleanbench.attacks.structured:BadNetStripes",
        "blended-stripes": "cleanbench.attacks.structured:BlendedStripes",
        "blended-triangles": "cleanbench.attacks.structured:BlendedTriangles",
        "badclip": "cleanbench.attacks.badclip:BadCLIP",
    },
    "cleanbench.attacks.base:Attack",
)
DEFENSES: Registry = Registry(
    "defense",
    "cleanbench.defenses",
    {
        "none": "cleanbench.defenses.none:NoDefense",
        "cleanclip": "cleanbench.defenses.cleanclip:CleanCLIP",
        "finetune": "cleanbench.defenses.finetune:Finetune",
        "unimodal": "cleanbench.defenses.unimodal:Unimodal",
        "supervised-finetune": "cleanbench.defenses.supervised:SupervisedFinetune",
        "par": "cleanbench.defenses.par:PAR",
        "roclip": "cleanbench.defenses.roclip:RoCLIP",
        "safeclip": "cleanbench.defenses.safeclip:SafeCLIP",
        "detect-retrain": "cleanbench.detect_retrain:DetectRetrain",
    },
    "cleanbench.defenses.base:Defense",
)

DETECTORS: Registry = Registry(
    "detector",
    "cleanbench.detectors",
    {
        "k-distance": "cleanbench.detectors.neighbourhood:KDistance",
        "slof": "cleanbench.detectors.neighbourhood:SLOF",
        "dao": "cleanbench.detectors.neighbourhood:DAO",
        "cosine": "cleanbench.detectors.cosine:CosineSimilarity",
    },
    "cleanbench.detectors.base:Detector",
)


def register_attack(cls: type) -> type:
    """Class decorator for plugin files: register an `Attack` subclass under its `name`."""
    return ATTACKS.register(cls)


def register_defense(cls: type) -> type:
    """Class decorator for plugin files: register a `Defense` subclass under its `name`."""
    return DEFENSES.register(cls)


def register_detector(cls: type) -> type:
    """Class decorator for plugin files: register a `Detector` subclass under its `name`."""
    return DETECTORS.register(cls)


def load_plugin_file(path: str | Path) -> None:
    """Import a plugin file; its `register_attack` / `register_defense` / `register_detector`
    decorators register it.

    Loading a file that this process has loaded already (same path, unchanged) does nothing."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"plugin file {str(path)!r} does not exist; pass the path of a .py file to --plugin")
    module_name = f"cleanbench_plugin_{path.stem}"
    stamp = (str(path.resolve()), path.stat().st_mtime_ns)
    if getattr(sys.modules.get(module_name), "__cleanbench_source__", None) == stamp:
        return  # this very file is loaded already
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"plugin file {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    module.__cleanbench_source__ = stamp  # type: ignore[attr-defined]
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise RunError(f"plugin file {str(path)!r} failed to import: {type(error).__name__}: {error}") from error

