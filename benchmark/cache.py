"""A content-addressed artifact cache: poisoned models, defended models and evaluations.

Each artifact is keyed by the SHA-256 of exactly the inputs that determine it (canonical JSON), so
a poisoned model is trained once and reused by every defense, and a cell whose run card was lost is
rebuilt from its artifacts without training. Files are written atomically with a content hash beside
them; a file whose hash does not match is rejected with one logged line (which artifact, why) and
recomputed. A lock file per artifact lets concurrent processes (a local pool, Slurm jobs, two sweeps)
compute each artifact once: the second waits for the first and then loads its result. Files are only
read through `read_regular_file` (regular files inside the cache, bounded size); loading an artifact
refreshes its time stamp, so `cleanbench cache prune --older-than` removes what was not used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from cleanbench.fileio import RefusedFile, read_regular_file, remove_stale_temporaries, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    import torch
    from torch import nn

POISONED_MODELS = "poisoned-models"
DEFENDED_MODELS = "defended-models"
EVALUATIONS = "evaluations"
CLASS_EMBEDDINGS = "class-embeddings"
ATTACK_TRIGGERS = "attack-triggers"
"""Triggers optimised on a surrogate model (BadCLIP's patch), keyed like models."""
KINDS = (POISONED_MODELS, DEFENDED_MODELS, EVALUATIONS, CLASS_EMBEDDINGS, ATTACK_TRIGGERS)
MAX_WEIGHTS_BYTES = 64 * 2**30
"""Weight files larger than this are not read (the largest open_clip models are a few GB)."""
MAX_JSON_BYTES = 64 * 2**20


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """$CLEANBENCH_CACHE, else ~/.cache/cleanbench."""
    return Path(os.environ.get("CLEANBENCH_CACHE", Path.home() / ".cache" / "cleanbench"))


def content_key(payload: Any) -> str:
    """SHA-256 of the canonical JSON of `payload`."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


class ArtifactCache:
    """Model state dicts under `root/kind/key.pt` with metadata in `key.json`; evaluations as `key.json`."""

    def __init__(self, root: str | Path | None = None, log: Callable[[str], None] = _stderr) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.log = log

    def _reject(self, kind: str, key: str, why: str) -> None:
        self.log(f"cache: {kind}/{key[:12]} rejected ({why}); recomputing it")

    def _read(self, path: Path, limit: int) -> bytes:
        return read_regular_file(path, limit, root=self.root)

    def _touch(self, path: Path) -> None:
        try:
            os.utime(path)
        except OSError:  # a read-only cache still serves its artifacts
            pass

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files of writes that died (see `fileio.remove_stale_temporaries`), logging how many."""
        removed = remove_stale_temporaries(self.root) if self.root.is_dir() else []
        if removed:
            self.log(f"cache: removed {len(removed)} temporary file(s) left by interrupted writes in {self.root}")
        return removed

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

    def load_tensors(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The stored tensors and metadata, or None if absent or damaged (a damaged one is logged)."""
        weights, meta_path = self._paths(kind, key)
        if not (os.path.lexists(weights) and os.path.lexists(meta_path)):
            return None
        try:
            data = self._read(weights, MAX_WEIGHTS_BYTES)
            meta = json.loads(self._read(meta_path, MAX_JSON_BYTES))
        except (OSError, RefusedFile, ValueError, RecursionError) as error:
            self._reject(kind, key, f"unreadable: {error}")
            return None
        if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            self._reject(kind, key, "its SHA-256 does not match the one stored beside it: damaged or truncated")
            return None
        import torch

        try:
            tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (RuntimeError, ValueError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as error:
            self._reject(kind, key, f"not plain tensors: {_first_line(error)}")
            return None
        if not isinstance(tensors, dict):
            self._reject(kind, key, "not a mapping of tensors")
            return None
        self._touch(meta_path)
        return tensors, meta

    def load(self, kind: str, key: str, model: nn.Module) -> dict | None:
        """Load the artifact into `model` and return its metadata, or None if absent or damaged."""
        found = self.load_tensors(kind, key)
        if found is None:
            return None
        try:
            model.load_state_dict(found[0])
        except (RuntimeError, ValueError, TypeError, AttributeError) as error:
            self._reject(kind, key, f"its weights do not fit the model: {_first_line(error)}")
            return None
        return found[1]

    def save(self, kind: str, key: str, model: nn.Module, meta: dict) -> Path:
        """Store `model`'s state dict and `meta` atomically; returns the weights' path."""
        return self.save_tensors(kind, key, model.state_dict(), meta)

    def save_tensors(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        """Store a dict of tensors and `meta` atomically; returns the weights' path."""
        import torch

        weights, meta_path = self._paths(kind, key)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
        data = buffer.getvalue()
        write_bytes_atomic(weights, data)
        write_json_atomic(meta_path, {**meta, "key": key, "sha256": hashlib.sha256(data).hexdigest()})
        return weights

    def load_json(self, kind: str, key: str) -> dict | None:
        """A JSON artifact (e.g. an evaluation), or None if absent, unreadable or stored under another key."""
        _, path = self._paths(kind, key)
        if not os.path.lexists(path):
            return None
        try:
            stored = json.loads(self._read(path, MAX_JSON_BYTES))
        except (OSError, RefusedFile, ValueError, RecursionError) as error:
            self._reject(kind, key, f"unreadable: {error}")
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("value"), dict):
            self._reject(kind, key, "not an artifact stored under this key")
            return None
        if stored.get("sha256") != content_key(stored["value"]):  # damaged, or written without a hash
            self._reject(kind, key, "the hash of its value does not match: damaged")
            return None
        self._touch(path)
        return stored["value"]

    def save_json(self, kind: str, key: str, value: dict) -> Path:
        """Store a JSON artifact atomically, with the hash of its value that `load_json` verifies."""
        _, path = self._paths(kind, key)
        return write_json_atomic(path, {"key": key, "value": value, "sha256": content_key(value)})
