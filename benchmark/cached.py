"""Caching as one wrapper around a stage: load the stage's stored result, or run it and store it.

A cell's four artifacts (poisoned model, its evaluation, defended model, its evaluation) each have
a content key (`runner.Plan.artifact_keys`). `CellCache.run` looks the artifact up, runs the stage
only when it is not stored (under the artifact's lock, so concurrent processes compute it once) and
stores what the stage returns; the run card's `artifacts` section records each key and whether it
was reused. Under torchrun, rank 0 alone reads and writes files and the other ranks follow its
decisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from cleanbench import distributed, environment
from cleanbench.cache import EVALUATIONS, ArtifactCache


class CellCache:
    """The cell's artifacts in `cache` (None: nothing is reused or stored), by name.

    `made_in` is the environment of this run (`environment.current`): stored models keep it, and a
    model reused from another environment is reported through `note` (one line)."""

    def __init__(self, cache: ArtifactCache | None, keys: dict[str, str], made_in: dict[str, Any] | None = None,
                 note: Callable[[str], None] = lambda text: None) -> None:
        self.cache = cache
        self.keys = keys
        self.made_in = made_in
        self.note = note
        self.record: dict[str, Any] = {}
        for name, key in keys.items():
            self.record[name] = key
            self.record[f"{name}_reused"] = False

    @contextlib.contextmanager
    def _lock(self, kind: str, name: str) -> Iterator[None]:
        if self.cache is None or not distributed.is_main():
            yield
            return
        with self.cache.lock(kind, self.keys[name]):
            yield

    def _load(self, kind: str, name: str, model: nn.Module | None) -> tuple[bool, dict | None]:
        """(every rank found it, this rank's stored value)."""
        key = self.keys[name]
        if model is None:
            stored = self.cache.load_json(kind, key) if self.cache is not None else None
            return distributed.agree(stored is not None), stored
        found = self.cache is not None and distributed.agree(self.cache.has(kind, key))
        meta = self.cache.load(kind, key, model) if found else None
        return distributed.agree(meta is not None), meta

    def _save(self, kind: str, name: str, model: nn.Module | None, value: dict) -> None:
        if self.cache is None or not distributed.is_main():
            return
        if model is None:
            self.cache.save_json(kind, self.keys[name], value)
        else:
            made_in = {"environment": self.made_in} if self.made_in is not None else {}
            self.cache.save(kind, self.keys[name], model, {**value, **made_in})

    def run(self, kind: str, name: str, stage: Callable[[], dict], model: nn.Module | None = None) -> tuple[dict, bool]:
        """The stored result of artifact `name` or `stage()` stored under its key; and whether it was reused.

        With `model`, the artifact is a model: a stored one is loaded into `model` and its metadata
        returned; otherwise `stage` trains `model` in place and returns the metadata to store with it.
        Without `model`, the artifact is the JSON that `stage` returns (an evaluation).
        """
        with self._lock(kind, name) if model is not None else contextlib.nullcontext():
            found, stored = self._load(kind, name, model)
            if found:
                self.record[f"{name}_reused"] = True
                if model is not None and self.made_in is not None:
                    what = f"the cached {name.replace('_', ' ')} {self.keys[name][:12]}"
                    text = environment.mismatch_note(what, (stored or {}).get("environment"), self.made_in)
                    if text:
                        self.note(text)
                return (stored if stored is not None else stage()), True
            value = stage()
            self._save(kind, name, model, value)
            return value, False

    def evaluation(self, name: str, stage: Callable[[], dict]) -> tuple[dict, bool]:
        """`run` for an evaluation artifact."""
        return self.run(EVALUATIONS, name, stage)

    def reused(self) -> list[str]:
        """The names of the artifacts this run loaded instead of computing."""
        return [name for name in self.keys if self.record[f"{name}_reused"]]
