"""A cell's artifacts through the cache: models, evaluations and class embeddings, each loaded when
present, else computed (under the artifact's lock) and stored, with what was reused recorded in the run card.

The cache is optional: when a lock or a write fails (a full disk, a read-only cache), the run warns
and goes on without it, so the run card is still written. Under torchrun every rank follows rank 0's
decisions, and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

import cleanbench
from cleanbench import distributed, environment
from cleanbench.cache import CLASS_EMBEDDINGS, EVALUATIONS, ArtifactCache, content_key
from cleanbench.config import RunConfig
from cleanbench.evaluation import class_embeddings
from cleanbench.fileio import StorageError
from cleanbench.models import ModelBundle

Log = Callable[[str], None]


def class_embeddings_key(model_key: str, classnames: Sequence[str], templates: Sequence[str],
                         device: torch.device, threads: int | None) -> str:
    """Hash of what determines a model's class embeddings: the model, the class names, the prompt
    templates, the device type (CUDA encodes under autocast) and the CPU thread count (as evaluations)."""
    return content_key({"artifact": "class-embeddings", "cleanbench": cleanbench.__version__,
                        "model": model_key, "classnames": list(classnames), "templates": list(templates),
                        "device": device.type, "threads": threads})


class CellArtifacts:
    """The cell's cache (or none with `use_cache: false`); `keys` are the artifacts' keys by name.

    `record` is the run card's `artifacts` section (each key and whether it was reused); `made_in` is
    the run's environment, stored with every model; a model reused from another environment is
    logged and passed to `note` (the run card keeps those notes)."""

    def __init__(self, config: RunConfig, keys: dict[str, str], made_in: dict[str, Any], log: Log,
                 note: Log = lambda text: None) -> None:
        self.cache = ArtifactCache(config.cache_dir, log=log) if config.use_cache else None
        self.threads = config.threads
        self.environment = made_in
        self.log, self.note = log, note
        self.keys = dict(keys)
        self.record: dict[str, Any] = {}
        for name, key in self.keys.items():
            self._add(name, key)
        if self.cache is not None and distributed.is_main():
            self.cache.remove_stale_temporaries()

    def _add(self, name: str, key: str) -> None:
        self.keys[name] = key
        self.record[name] = key
        self.record[f"{name}_reused"] = False

    def reused(self) -> list[str]:
        """The names of the artifacts that were loaded from the cache."""
        return [name for name in self.keys if self.record[f"{name}_reused"]]

    def _store(self, what: str, save: Callable[[], Any]) -> None:
        if self.cache is None or not distributed.is_main():
            return
        try:
            save()
        except (OSError, StorageError) as error:  # the cache is optional
            self.log(f"warning: the {what} was not cached ({error}); the run goes on without caching it")

    @contextlib.contextmanager
    def computing(self, kind: str, name: str) -> Iterator[None]:
        """Hold the artifact's lock (rank 0 only: the other ranks follow its decisions)."""
        if self.cache is None or not distributed.is_main():
            yield
            return
        try:
            lock = self.cache.lock(kind, self.keys[name])
            lock.acquire()
        except OSError as error:
            self.log(f"warning: cannot lock {kind}/{self.keys[name][:12]} in the cache ({error}); "
                     "computing it without the lock")
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def load_model(self, kind: str, name: str, model: torch.nn.Module) -> dict | None:
        """The stored metadata after loading the weights into `model`, or None when it must be computed."""
        found = self.cache is not None and distributed.agree(self.cache.has(kind, self.keys[name]))
        meta = self.cache.load(kind, self.keys[name], model) if found else None
        if not distributed.agree(meta is not None):
            return None
        self.record[f"{name}_reused"] = True
        what = f"the cached {name.replace('_', ' ')} {self.keys[name][:12]}"
        note = environment.mismatch_note(what, meta.get("environment"), self.environment)
        if note:
            self.log(note)
            self.note(note)
        return meta

    def save_model(self, kind: str, name: str, model: torch.nn.Module, meta: dict) -> None:
        """Store the model with `meta` and the environment it was made in."""
        self._store(name.replace("_", " "), lambda: self.cache.save(
            kind, self.keys[name], model, {**meta, "environment": self.environment}))

    def run(self, kind: str, name: str, stage: Callable[[], dict], model: torch.nn.Module,
            produced: Callable[[], torch.nn.Module] | None = None) -> tuple[dict, bool]:
        """Caching as one wrapper around a stage that makes a model: under the artifact's lock, load
        `name`'s weights into `model` and return its stored record, or run `stage` (which trains `model`
        in place and returns the record to store with it) and store both. Also says whether it was reused.

        `produced` gives the model to store when the stage makes a new module instead (a
        pretraining-stage defense trains a freshly initialised one)."""
        with self.computing(kind, name):
            meta = self.load_model(kind, name, model)
            if meta is not None:
                return meta, True
            record = stage()
            self.save_model(kind, name, produced() if produced is not None else model, record)
            return record, False

    def tensors(self, kind: str, name: str, compute: Callable[[], tuple[dict[str, torch.Tensor], dict]]
                ) -> tuple[dict[str, torch.Tensor], dict, bool]:
        """Under the artifact's lock, the stored tensors and record of `name`, or `compute()`'s stored;
        also says whether they were reused."""
        with self.computing(kind, name):
            found = self.cache.load_tensors(kind, self.keys[name]) if self.cache is not None else None
            if distributed.agree(found is not None) and found is not None:
                self.record[f"{name}_reused"] = True
                tensors, meta = found
                return tensors, {k: v for k, v in meta.items() if k != "sha256"}, True
            tensors, meta = compute()
            self._store(name.replace("_", " "), lambda: self.cache.save_tensors(kind, self.keys[name], tensors, meta))
            return tensors, meta, False

    def evaluation(self, name: str, compute: Callable[[], dict]) -> dict:
        """A cached evaluation, or `compute()` stored under its key."""
        stored = self.cache.load_json(EVALUATIONS, self.keys[name]) if self.cache is not None else None
        if distributed.agree(stored is not None):
            self.record[f"{name}_reused"] = True
            return stored if stored is not None else compute()
        value = compute()
        self._store(name.replace("_", " "), lambda: self.cache.save_json(EVALUATIONS, self.keys[name], value))
        return value

    def class_embeddings(self, model_name: str, bundle: ModelBundle, classnames: Sequence[str],
                         templates: Sequence[str], device: torch.device, progress: bool) -> tuple[torch.Tensor, float]:
        """The class embeddings of the model `model_name` names, from the cache or computed (with a
        progress bar) and stored; returns them and the seconds spent computing them (0 when reused)."""
        name = model_name.removesuffix("_model") + "_class_embeddings"
        self._add(name, class_embeddings_key(self.keys[model_name], classnames, templates, device, self.threads))
        found = self.cache.load_tensors(CLASS_EMBEDDINGS, self.keys[name]) if self.cache is not None else None
        stored = found[0].get("classes") if found is not None else None
        if distributed.agree(isinstance(stored, torch.Tensor) and stored.shape[0] == len(classnames)):
            self.record[f"{name}_reused"] = True
            return stored.to(device), 0.0
        start = time.perf_counter()
        classes = class_embeddings(bundle, classnames, templates, device, progress=progress)
        seconds = time.perf_counter() - start
        self._store("class embeddings", lambda: self.cache.save_tensors(
            CLASS_EMBEDDINGS, self.keys[name], {"classes": classes}, {"classes": len(classnames),
                                                                       "templates": len(templates), "seconds": seconds}))
        return classes, seconds
