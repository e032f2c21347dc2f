"""Files that survive a kill: written whole or not at all, or appended a whole row at a time.

- `atomic_path` / `write_atomic`: a killed job leaves the old file or the new one, never half of one.
- `CsvLog`: an append-only CSV of fixed columns, each append flushed and fsynced; reopened to resume,
  it drops a torn last row (a kill mid-write) and any row of the wrong width before appending again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from crystext.errors import CrystextError, OutputExistsError

__all__ = ["CsvLog", "atomic_path", "write_atomic"]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed onto `path` when the block ends, removed if it fails.

    The temporary name keeps `path`'s suffix, for writers (such as numpy's) that add one when it is missing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to `path` through `atomic_path`."""
    with atomic_path(path) as partial:
        partial.write_bytes(content.encode() if isinstance(content, str) else content)


class CsvLog:
    """An append-only CSV with a fixed header, for long jobs that write results as they finish and resume.

    Opening an existing, non-empty file needs `resume`; its complete rows are then in `rows` (as strings),
    and a torn or malformed tail is cut off (the file rewritten atomically) before anything is appended.
    """

    def __init__(self, path: str | Path, columns: Sequence[str], resume: bool) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        exists = self.check_output(self.path, self.columns, resume)
        self.rows: list[dict[str, str]] = self._read_complete() if exists else []
        if not exists:
            write_atomic(self.path, self._text([], header=True))

    @staticmethod
    def check_output(path: Path, columns: Sequence[str], resume: bool) -> bool:
        """Whether `path` holds something to continue; raises if it does and `resume` is off, or if it is a folder.

        A file holding only this log's header (a run that wrote nothing) holds no results: it is started afresh.
        Callers may check an output this way before doing the work that fills it.
        """
        if path.is_dir():
            raise CrystextError(f"{path} is a folder: give the name of a file to write")
        if not path.is_file() or path.stat().st_size == 0:
            return False
        with open(path, "rb") as handle:
            head = handle.read(len(",".join(columns)) + 3)
        if head.rstrip(b"\r\n") == ",".join(columns).encode() and head.endswith(b"\n"):
            return False  # a header and nothing else
        if not resume:
            raise OutputExistsError(f"{path} exists: pass --resume to continue it, or choose another output")
        return True

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append whole rows with one write and an fsync; missing columns and None are written empty."""
        if not rows:
            return
        complete = [{c: "" if row.get(c) is None else str(row[c]) for c in self.columns} for row in rows]
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            handle.write(self._text(complete, header=False))
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.extend(complete)

    def ids(self, column: str = "id") -> set[str]:
        """The values of one column over the rows written so far (the ids a resumed job skips)."""
        return {row[column] for row in self.rows}

    def _read_complete(self) -> list[dict[str, str]]:
        """The file's whole rows; a torn last row (no final newline, or an open quote) and rows of the wrong width
        are dropped."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CrystextError(f"{self.path}: not a UTF-8 CSV, cannot resume it") from None
        records: list[list[str]] = []
        with contextlib.suppress(csv.Error):  # an unterminated quote at the end: keep the records before it
            records.extend(csv.reader(io.StringIO(text, newline="")))
        if not records or tuple(records[0]) != self.columns:
            raise CrystextError(
                f"{self.path}: its header is not {','.join(self.columns)}; cannot resume it (choose another output)"
            )
        body = records[1:]
        # Killed mid-row: no final newline, or one inside a quoted field still open (an odd number of quotes).
        torn = not text.endswith("\n") or text.count('"') % 2 == 1
        if body and torn:
            body = body[:-1]  # the last record is cut short, whatever its width
        complete = [dict(zip(self.columns, r)) for r in body if len(r) == len(self.columns)]
        if len(complete) != len(records) - 1 or torn:
            write_atomic(self.path, self._text(complete, header=True))
        return complete

    def _text(self, rows: Sequence[Mapping[str, str]], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns)
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
