"""A content-addressed artifact cache for trained models.

Each artifact is keyed by the SHA-256 of exactly the inputs that determine it (canonical JSON), so
a poisoned model is trained once and reused by every defense. Files are written atomically with a
content hash beside them; a file whose hash does not match is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cleanbench.fileio import write_bytes_atomic, write_json_atomic


def default_cache_dir() -> Path:
    """$CLEANBENCH_CACHE, else ~/.cache/cleanbench."""
    return Path(os.environ.get("CLEANBENCH_CACHE", Path.home() / ".cache" / "cleanbench"))


def content_key(payload: Any) -> str:
    """SHA-256 of the canonical JSON of `payload`."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ArtifactCache:
    """Model state dicts stored under `root/kind/key.pt`, with metadata in `key.json`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def _paths(self, kind: str, key: str) -> tuple[Path, Path]:
        folder = self.root / kind
        return folder / f"{key}.pt", folder / f"{key}.json"

    def load(self, kind: str, key: str, model: nn.Module) -> dict | None:
        """Load the artifact into `model` and return its metadata, or None if absent or damaged."""
        weights, meta_path = self._paths(kind, key)
        if not (weights.is_file() and meta_path.is_file()):
            return None
        data = weights.read_bytes()
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            return None
        if meta.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
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
