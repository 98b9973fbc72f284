"""A content-addressed artifact cache: poisoned models, defended models and evaluations.

Each artifact is keyed by the SHA-256 of exactly the inputs that determine it (canonical JSON), so
a poisoned model is trained once and reused by every defense, and a cell whose run card was lost is
rebuilt from its artifacts without training. Files are written atomically with a content hash beside
them; a file whose hash does not match is ignored and recomputed. A lock file per artifact lets
concurrent processes (a local pool, Slurm jobs, two sweeps) compute each artifact once: the second
waits for the first and then loads its result.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from cleanbench.fileio import write_bytes_atomic, write_json_atomic

POISONED_MODELS = "poisoned-models"
DEFENDED_MODELS = "defended-models"
EVALUATIONS = "evaluations"


def default_cache_dir() -> Path:
    """$CLEANBENCH_CACHE, else ~/.cache/cleanbench."""
    return Path(os.environ.get("CLEANBENCH_CACHE", Path.home() / ".cache" / "cleanbench"))


def content_key(payload: Any) -> str:
    """SHA-256 of the canonical JSON of `payload`."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ArtifactCache:
    """Model state dicts under `root/kind/key.pt` with metadata in `key.json`; evaluations as `key.json`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def _paths(self, kind: str, key: str) -> tuple[Path, Path]:
        folder = self.root / kind
        return folder / f"{key}.pt", folder / f"{key}.json"

    def has(self, kind: str, key: str) -> bool:
        """Whether the artifact's files are present (without reading them)."""
        weights, meta_path = self._paths(kind, key)
        return meta_path.is_file() and (kind == EVALUATIONS or weights.is_file())

    def lock(self, kind: str, key: str, timeout: float = -1) -> FileLock:
        """An inter-process lock for computing one artifact (`with cache.lock(...):`); released on exit or death."""
        path = self.root / kind / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path, timeout=timeout)

    def load(self, kind: str, key: str, model: nn.Module) -> dict | None:
        """Load the artifact into `model` and return its metadata, or None if absent or damaged."""
        weights, meta_path = self._paths(kind, key)
        if not (weights.is_file() and meta_path.is_file()):
            return None
        data = weights.read_bytes()
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        try:
            model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        except (RuntimeError, ValueError, TypeError, AttributeError, EOFError, pickle.UnpicklingError):
            return None  # an architecture that no longer fits, or a file that is not plain weights: recompute
        return meta

    def save(self, kind: str, key: str, model: nn.Module, meta: dict) -> Path:
        """Store `model`'s state dict and `meta` atomically; returns the weights' path."""
        weights, meta_path = self._paths(kind, key)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        data = buffer.getvalue()
        write_bytes_atomic(weights, data)
        write_json_atomic(meta_path, {**meta, "key": key, "sha256": hashlib.sha256(data).hexdigest()})
        return weights

    def load_json(self, kind: str, key: str) -> dict | None:
        """A JSON artifact (e.g. an evaluation), or None if absent, unreadable or stored under another key."""
        _, path = self._paths(kind, key)
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("value"), dict):
            return None
        if stored.get("sha256") != content_key(stored["value"]):  # damaged, or written without a hash
            return None
        return stored["value"]

    def save_json(self, kind: str, key: str, value: dict) -> Path:
        """Store a JSON artifact atomically, with the hash of its value that `load_json` verifies."""
        _, path = self._paths(kind, key)
        return write_json_atomic(path, {"key": key, "value": value, "sha256": content_key(value)})
