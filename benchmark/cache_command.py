"""`cleanbench cache`: the artifact cache's size by kind, and pruning by age or by key.

An artifact is the files of one key in one kind's folder (`KEY.pt` and `KEY.json` for models,
`KEY.json` for evaluations). Its age is the time since it was last written or loaded (loading
refreshes its time stamp). Pruning takes each artifact's lock without waiting, so an artifact that a
run is computing or loading is skipped; lock files themselves are kept (a waiting process may hold them).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from cleanbench.errors import UsageError

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SUFFIXES = (".pt", ".json")


@dataclass
class Artifact:
    """The files of one cached artifact."""

    kind: str
    key: str
    files: list[Path] = field(default_factory=list)
    size: int = 0
    modified: float = 0.0

    def age_days(self, now: float) -> float:
        return (now - self.modified) / 86400


def parse_age(text: str) -> float:
    """Seconds in an age like `30d`, `12h`, `90m`, `2w` (a bare number is days)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw]?)\s*", text)
    if not match:
        raise UsageError(f"--older-than {text!r}: expected a number with a unit m, h, d or w, e.g. 30d")
    return float(match.group(1)) * _UNITS[match.group(2) or "d"]


def scan(root: Path) -> tuple[list[Artifact], dict[str, int]]:
    """The artifacts under `root` by kind folder, and the count and size of leftover temporary and lock files."""
    artifacts: dict[tuple[str, str], Artifact] = {}
    other = {"temporary_files": 0, "temporary_bytes": 0, "lock_files": 0}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()) if root.is_dir() else []:
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.is_symlink():
                continue
            info = path.stat()
            if path.name.endswith(".tmp"):
                other["temporary_files"] += 1
                other["temporary_bytes"] += info.st_size
            elif path.suffix == ".lock":
                other["lock_files"] += 1
            elif path.suffix in _SUFFIXES:
                artifact = artifacts.setdefault((folder.name, path.stem), Artifact(folder.name, path.stem))
                artifact.files.append(path)
                artifact.size += info.st_size
                artifact.modified = max(artifact.modified, info.st_mtime)
    return list(artifacts.values()), other


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summary(root: Path, now: float) -> str:
    """A table of artifacts, size and age by kind, with the leftovers."""
    artifacts, other = scan(root)
    lines = [f"cache: {root}", f"{'kind':<20} {'artifacts':>9} {'size':>10} {'oldest':>8} {'newest':>8}"]
    for kind in sorted({a.kind for a in artifacts}):
        group = [a for a in artifacts if a.kind == kind]
        ages = [a.age_days(now) for a in group]
        lines.append(f"{kind:<20} {len(group):>9} {_size(sum(a.size for a in group)):>10} "
                     f"{max(ages):>7.1f}d {min(ages):>7.1f}d")
    lines.append(f"{'total':<20} {len(artifacts):>9} {_size(sum(a.size for a in artifacts)):>10}")
    lines.append(f"temporary files of interrupted writes: {other['temporary_files']} ({_size(other['temporary_bytes'])}; "
                 f"removed by the next run once an hour old); lock files: {other['lock_files']}")
    return "\n".join(lines)


def prune(root: Path, older_than: float | None, keys: tuple[str, ...], kind: str | None, dry_run: bool,
          now: float) -> tuple[list[Artifact], list[Artifact]]:
    """Remove the artifacts that match every given filter; returns (removed or to remove, skipped as in use)."""
    from filelock import FileLock, Timeout

    chosen = [a for a in scan(root)[0]
              if (kind is None or a.kind == kind)
              and (older_than is None or now - a.modified > older_than)
              and (not keys or any(a.key.startswith(k) for k in keys))]
    if dry_run:
        return chosen, []
    removed, busy = [], []
    for artifact in chosen:
        try:
            with FileLock(root / artifact.kind / f"{artifact.key}.lock", timeout=0):
                for path in artifact.files:
                    path.unlink(missing_ok=True)
            removed.append(artifact)
        except Timeout:
            busy.append(artifact)
    return removed, busy


def _cache_root(cache_dir: str | None) -> Path:
    from cleanbench.cache import default_cache_dir

    return Path(cache_dir) if cache_dir else default_cache_dir()


_CACHE_DIR = click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                          help="The cache folder [default: $CLEANBENCH_CACHE, else ~/.cache/cleanbench].")


@click.group("cache", invoke_without_command=True)
@_CACHE_DIR
@click.pass_context
def cache_command(ctx: click.Context, cache_dir: str | None) -> None:
    """Show the artifact cache's size by kind (`cleanbench cache prune --help` to remove artifacts)."""
    ctx.obj = {**(ctx.obj or {}), "cache_dir": cache_dir}
    if ctx.invoked_subcommand is None:
        click.echo(summary(_cache_root(cache_dir), time.time()))


@cache_command.command("prune")
@click.option("--older-than", default=None, help="Remove artifacts not written or loaded for this long: 30d, 12h, 90m, 2w.")
@click.option("--key", "keys", multiple=True, help="Remove the artifacts whose key starts with this (run cards list keys); repeatable.")
@click.option("--kind", default=None, help="Only this kind, e.g. poisoned-models, evaluations.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@_CACHE_DIR
@click.pass_context
def prune_command(ctx: click.Context, older_than: str | None, keys: tuple[str, ...], kind: str | None,
                  dry_run: bool, cache_dir: str | None) -> None:
    """Remove cached artifacts by age or by key (both filters must match when both are given)."""
    if older_than is None and not keys:
        raise UsageError("cache prune: give --older-than AGE or --key PREFIX (with --dry-run to see what goes)")
    if any(len(k) < 4 or not re.fullmatch(r"[0-9a-f]+", k) for k in keys):
        raise UsageError("cache prune --key: expected a hexadecimal key prefix of at least 4 characters")
    root = _cache_root(cache_dir or (ctx.obj or {}).get("cache_dir"))
    now = time.time()
    done, busy = prune(root, parse_age(older_than) if older_than else None, keys, kind, dry_run, now)
    verb = "would remove" if dry_run else "removed"
    for artifact in done:
        click.echo(f"{verb} {artifact.kind}/{artifact.key[:12]}  {_size(artifact.size)}  {artifact.age_days(now):.1f} days old")
    for artifact in busy:
        click.echo(f"skipped {artifact.kind}/{artifact.key[:12]}: in use by a run (locked)")
    click.echo(f"{verb} {len(done)} artifacts ({_size(sum(a.size for a in done))}) from {root}"
               + (f"; {len(busy)} in use were kept" if busy else ""))
