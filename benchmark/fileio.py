"""File IO that survives crashes, full disks, shared folders and hostile folders.

Writes go to a temporary name in the same folder, are fsynced and renamed: a reader never sees a
half-written file, a crash leaves either the old file or the new one, and a write that fails leaves
nothing behind. Files get the permissions the umask allows (like any other new file), so a results
folder shared by a group works. A write that fails because of the disk or the folder (full, read-only,
no permission) raises `StorageError` naming the path and the resource.

Reads of files that anyone may have dropped into a folder (run cards, cached artifacts, configs) go
through `read_regular_file`: regular files only (never a FIFO or a device, which could block or never
end), at most a fixed number of bytes, and no symbolic link that leads out of the folder or into a loop.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cleanbench.errors import RunError, UsageError

TEMPORARY_SUFFIX = ".tmp"
STALE_TEMPORARY_SECONDS = 3600.0
"""A temporary file older than this belongs to a writer that died: no live write takes an hour."""

_RESOURCE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free some space or choose another folder"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space or choose another folder"),
    errno.EROFS: ("the folder is on a read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or choose another folder"),
    errno.EPERM: ("permission denied", "fix the folder's permissions or choose another folder"),
}
RESOURCE_ERRNOS = frozenset(_RESOURCE_ERRORS)
"""Errors of a write that mean a resource is missing (space, quota, permission), not a bug."""
_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


class StorageError(RunError):
    """A write failed for lack of a resource (disk space, quota, permission, a read-only folder)."""

    def __init__(self, path: Path, error: OSError, after: str | None = None, action: str = "write") -> None:
        what, fix = _RESOURCE_ERRORS.get(error.errno or 0, (error.strerror or str(error), "check the folder"))
        before = f"{after}; then " if after else ""
        super().__init__(f"{before}cannot {action} {path}: {what} ({error.strerror or error}); {fix}")
        self.path = path
        self.errno = error.errno


class RefusedFile(Exception):
    """A file that `read_regular_file` will not read; `reason` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_file(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically with the umask's permissions, creating parent folders.

    A failure for lack of space or permission raises `StorageError` naming the path; nothing is left.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: a colleague sharing the folder could not read it
        _write_file(fd, data)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in _RESOURCE_ERRORS:
            raise StorageError(path, error) from error
        raise
    return path


_NUMBER_LIST = re.compile(r"\[\n\s*(-?[0-9][-0-9.eE+]*(?:,\n\s*-?[0-9][-0-9.eE+]*)*)\n\s*\]")


def json_text(value: Any) -> str:
    """`value` as indented JSON, except that a list of numbers (poison indices, ranks) stays on one line."""
    text = json.dumps(value, indent=2, sort_keys=False, allow_nan=True)
    return _NUMBER_LIST.sub(lambda match: "[" + ", ".join(n.strip() for n in match.group(1).split(",")) + "]", text) + "\n"


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """Write `value` as JSON (`json_text`) to `path` atomically."""
    return write_bytes_atomic(path, json_text(value).encode())


def read_regular_file(path: str | Path, max_bytes: int, root: str | Path | None = None) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `max_bytes`.

    With `root`, `path` must resolve inside `root` (a symbolic link may point elsewhere inside it, never
    out of it). Raises `RefusedFile` (with the reason) for FIFOs, devices, sockets, folders, link loops,
    links out of `root` and files that are too large; OSError when the file cannot be read.
    """
    path = Path(path)
    try:
        real = Path(os.path.realpath(path, strict=True))
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RefusedFile(path, "a symbolic link loop") from error
        raise
    if root is not None and not real.is_relative_to(os.path.realpath(root)):
        raise RefusedFile(path, f"a symbolic link leading outside {root} (to {real})")
    _require_regular(path, os.stat(real).st_mode)
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _require_regular(path, os.fstat(fd).st_mode)  # it may have been swapped since the check above
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise RefusedFile(path, f"larger than {max_bytes} bytes")
    return b"".join(chunks)


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS.items() if test(mode)), "not a regular file")
        raise RefusedFile(path, f"{kind}, not a regular file")


def list_files(folder: str | Path, suffix: str) -> Iterator[tuple[Path, str | None]]:
    """Every entry named `*suffix` under `folder` (recursively, in name order) with None, and every
    symbolic link to a folder with the reason it is not followed. Temporary files are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for top, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in list(dirs):
            if os.path.islink(os.path.join(top, name)):
                dirs.remove(name)
                yield Path(top, name), "a symbolic link to a folder (not followed)"
        for name in sorted(files):
            if name.endswith(suffix) and not name.endswith(TEMPORARY_SUFFIX):
                yield Path(top, name), None


def remove_stale_temporaries(folder: str | Path, older_than: float = STALE_TEMPORARY_SECONDS) -> list[Path]:
    """Delete the temporary files of writes that died (older than `older_than` seconds) under `folder`;
    returns them. Fresh ones may belong to a write in progress and are kept."""
    removed = []
    cutoff = time.time() - older_than
    for top, _, files in os.walk(folder, followlinks=False):
        for name in files:
            if name.startswith(".") and name.endswith(TEMPORARY_SUFFIX):
                path = Path(top, name)
                try:
                    if path.lstat().st_mtime < cutoff:
                        path.unlink()
                        removed.append(path)
                except OSError:  # removed by another process meanwhile, or not ours to remove
                    continue
    return removed


MAX_CONFIG_BYTES = 10_000_000
"""Config, grid and class-name files larger than this are refused."""


def read_input_file(path: str | Path, what: str) -> str:
    """The text of a file the user named (a config, grid or class-name file), or UsageError saying why not:
    absent, not a regular file, larger than MAX_CONFIG_BYTES, unreadable or not UTF-8."""
    try:
        return read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError as error:
        raise UsageError(f"{what} {str(path)!r} does not exist") from error
    except RefusedFile as error:
        raise UsageError(f"{what} {str(path)!r}: {error.reason}; give a regular file") from error
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{what} {str(path)!r} cannot be read: {error}") from error
