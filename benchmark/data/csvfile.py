"""A CSV file indexed by row, without holding its rows in memory.

Building a `CsvTable` reads the file once and keeps only the byte offset at which each row starts
(8 bytes a row, so 8 MB for a million rows); a row's fields are parsed again from a memory map when
they are asked for. The reference reads and tokenises the whole CSV up front (docs/reference.md §6).
Rows may span lines (quoted newlines); blank lines are ignored. Files are read as UTF-8 (a BOM is
allowed). Memory maps are opened per process, so DataLoader workers share the page cache.
"""

from __future__ import annotations

import codecs
import csv
import mmap
import os
from abc import abstractmethod
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from cleanbench.errors import UsageError

RowCheck = Callable[[list[str], int], bool]
"""Called with each row's fields and its line number while the index is built; False drops the row."""


def _decoded_lines(data: bytes | mmap.mmap, cursor: list[int]) -> Iterator[str]:
    """Decoded lines of `data` from byte `cursor[0]`, which is kept at the offset after the last line."""
    end = len(data)
    while cursor[0] < end:
        start = cursor[0]
        stop = data.find(b"\n", start)
        cursor[0] = end if stop < 0 else stop + 1
        yield data[start : cursor[0]].decode("utf-8")


class CsvTable:
    """The rows of a CSV file with a header, by index; `fields(i)` returns the selected columns."""

    def __init__(
        self,
        path: str | Path,
        columns: Sequence[str],
        delimiter: str = ",",
        limit: int | None = None,
        check: RowCheck | None = None,
        what: str = "CSV",
    ) -> None:
        """Index `path`, keeping at most `limit` rows that `check` accepts.

        `columns` are the header names whose values `fields` returns, in that order; a missing one is a
        UsageError that lists the header. `what` names the file in messages (e.g. "training CSV").
        """
        self.path = Path(path)
        self.delimiter = delimiter
        if len(delimiter) != 1:
            raise UsageError(f"{what} delimiter must be one character, not {delimiter!r}")
        if not self.path.is_file():
            raise UsageError(f"{what} {str(self.path)!r} does not exist")
        self._map: mmap.mmap | None = None
        self._pid = -1
        data = self._data()
        cursor = [len(codecs.BOM_UTF8) if data[:3] == codecs.BOM_UTF8 else 0]
        reader = csv.reader(_decoded_lines(data, cursor), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise UsageError(f"{what} {str(self.path)!r} is empty; expected a header row with {', '.join(columns)}") from None
        except (csv.Error, UnicodeDecodeError) as error:
            raise UsageError(f"{what} {self.path}: cannot read the header: {error}") from error
        missing = [c for c in columns if c not in header]
        if missing:
            raise UsageError(
                f"{what} {str(self.path)!r} has no column {missing[0]!r}; its columns are {', '.join(header)} "
                f"(set the column names, or the delimiter if they run together: {delimiter!r} now)"
            )
        self.header = header
        self.columns = tuple(columns)
        self._select = [header.index(c) for c in columns]
        width = max(self._select) + 1
        starts = array("q")
        while limit is None or len(starts) < limit:
            start, line = cursor[0], reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as error:
                raise UsageError(f"{what} {self.path}, line {line}: cannot parse the row: {error}") from error
            if row:
                if len(row) < width:
                    raise UsageError(
                        f"{what} {self.path}, line {line}: {len(row)} fields, but column "
                        f"{header[width - 1]!r} is field {width}; check the delimiter ({delimiter!r})"
                    )
                if check is None or check([row[i] for i in self._select], line):
                    starts.append(start)
        self.starts = np.frombuffer(starts, dtype=np.int64) if len(starts) else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def _data(self) -> mmap.mmap | bytes:
        """The file's bytes, memory-mapped once per process (workers map it themselves)."""
        if self._map is None or self._pid != os.getpid():
            with open(self.path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    return b""
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._pid = os.getpid()
        return self._map

    def fields(self, index: int) -> list[str]:
        """The selected columns of row `index` (0-based among the kept rows)."""
        lines = _decoded_lines(self._data(), [int(self.starts[index])])
        row = next(csv.reader(lines, delimiter=self.delimiter))
        return [row[i] for i in self._select]

    def line(self, index: int) -> int:
        """The 1-based line of the file on which row `index` starts (reads the file up to it)."""
        return self._data()[: int(self.starts[index])].count(b"\n") + 1

    def column(self, position: int) -> TableColumn:
        """Selected column `position` (0 for the first of `columns`) as a sequence of strings."""
        return TableColumn(self, position)

    def take(self, rows: np.ndarray) -> CsvTable:
        """A table of the given rows (indices into this one), sharing the file."""
        subset = object.__new__(CsvTable)
        subset.__dict__.update(self.__dict__)
        subset._map, subset._pid = None, -1
        subset.starts = self.starts[np.asarray(rows, dtype=np.int64)]
        return subset

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_map"], state["_pid"] = None, -1
        return state


class StringRows(Sequence[str]):
    """A read-only column of strings that subclasses compute one row at a time (`row`); indexing by int
    (negative too) or slice, with an IndexError that names the valid range."""

    @abstractmethod
    def row(self, row: int) -> str:
        """The string of row `row`, in 0..len-1."""

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self.row(i) for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} is outside 0..{len(self) - 1}")
        return self.row(index % len(self))


class TableColumn(StringRows):
    """One selected column of a `CsvTable` as a read-only sequence of strings."""

    def __init__(self, table: CsvTable, position: int) -> None:
        self.table = table
        self.position = position

    def __len__(self) -> int:
        return len(self.table)

    def row(self, row: int) -> str:
        return self.table.fields(row)[self.position]
