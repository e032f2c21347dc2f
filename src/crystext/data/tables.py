"""CSV tables of structures: reading one, which column holds the structures, and the id rule.

The id rule is defined here once, and every reader of a samples CSV (`read_structures`, the side columns
`crystext evaluate` joins, `crystext stability`) takes its ids from `table_ids`, so results join back:

1. the column named by `id_column`, when given;
2. else `id`, else `material_id`;
3. else the unnamed first column pandas writes for its index (`df.to_csv(path)`: header `,cif`), when
   its values are unique (an index repeated by `pd.concat` is no identity);
4. else the row's position, `row0`, `row1`, ...

Ids are read as the exact text of the cell: `007`, `7`, `7.0`, `1e3` and `nan` are five ids. An empty
cell gets its position id. An id that appears twice in one file is an error naming it and the file.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from crystext.data.records import DatasetError, first_line

__all__ = [
    "ID_COLUMNS",
    "INDEX_COLUMN",
    "STRUCTURE_COLUMNS",
    "find_id_column",
    "find_structure_column",
    "is_csv",
    "position_id",
    "read_table",
    "table_ids",
]

#: Where a CSV's structures are, in order of preference: a CIF, or a pymatgen Structure as JSON.
STRUCTURE_COLUMNS = ("cif", "structure", "cif_string")
#: Where a CSV's ids are, in order of preference (after the column the caller names).
ID_COLUMNS = ("id", "material_id")
#: The name pandas gives the unnamed first column that `DataFrame.to_csv` writes for the index.
INDEX_COLUMN = "Unnamed: 0"
#: The cells pandas reads as missing by default (its documented list); used for the property columns only.
MISSING = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
)
#: What pandas raises on a file that is not a readable (possibly gzipped) CSV: a damaged gzip stream included.
_NOT_READABLE = (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError, EOFError, zlib.error)


def is_csv(path: Path) -> bool:
    """Whether `path` is a CSV file (.csv or .csv.gz) that exists."""
    return path.is_file() and path.name.lower().endswith((".csv", ".csv.gz"))


def position_id(i: int) -> str:
    """The id of the i-th record of a source that names none."""
    return f"row{i}"


def read_table(path: Path, text_columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a CSV; `text_columns` (default: all) as the exact text of each cell, the others as pandas infers.

    A missing, unreadable, empty or header-only file is a one-line `DatasetError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: no rows (the file is empty)") from None
    except _NOT_READABLE as err:
        raise DatasetError(f"{path}: not a readable CSV ({first_line(err)})") from None
    text = set(header if text_columns is None else text_columns) & set(header)
    try:
        frame = pd.read_csv(
            path, dtype={c: str for c in text}, keep_default_na=False,
            na_values={c: list(MISSING) for c in header if c not in text},
        )
    except _NOT_READABLE as err:
        raise DatasetError(f"{path}: not a readable CSV ({first_line(err)})") from None
    if frame.empty:
        raise DatasetError(f"{path}: no rows (only a header: {_names(frame.columns)})")
    return frame


def find_structure_column(columns: Sequence[str], path: Path, given: str | None = None) -> str:
    """The column holding the structures: `given`, else the first of `STRUCTURE_COLUMNS` present."""
    if given is not None:
        if given not in columns:
            raise DatasetError(f"{path}: no '{given}' column (columns: {_names(columns)})")
        return given
    found = next((c for c in STRUCTURE_COLUMNS if c in columns), None)
    if found is None:
        expected = ", ".join(f"'{c}'" for c in STRUCTURE_COLUMNS[:-1]) + f" or '{STRUCTURE_COLUMNS[-1]}'"
        raise DatasetError(
            f"{path}: no {expected} column (columns: {_names(columns)}); name yours with --structure-column"
        )
    return found


def find_id_column(columns: Sequence[str], path: Path, given: str | None = None) -> str | None:
    """The column the ids come from (rules 1-3 of the module's id rule), or None for position ids."""
    if given is not None:
        if given not in columns:
            raise DatasetError(f"{path}: no '{given}' id column (columns: {_names(columns)})")
        return given
    found = next((c for c in ID_COLUMNS if c in columns), None)
    if found is None and len(columns) and columns[0] == INDEX_COLUMN:
        return INDEX_COLUMN
    return found


def table_ids(frame: pd.DataFrame, path: Path, id_column: str | None = None) -> list[str]:
    """The id of every row of a CSV read by `read_table` (its id column read as text), by the module's rule."""
    column = find_id_column(list(frame.columns), path, id_column)
    if column is None:
        return [position_id(i) for i in range(len(frame))]
    cells = [str(cell) for cell in frame[column]]
    if column == INDEX_COLUMN and id_column is None and len(set(cells)) < len(cells):
        return [position_id(i) for i in range(len(frame))]
    ids = [cell if cell.strip() else position_id(i) for i, cell in enumerate(cells)]
    counts = pd.Series(ids).value_counts()
    if len(counts) and counts.iloc[0] > 1:
        raise DatasetError(f"{path}: id '{counts.index[0]}' appears {counts.iloc[0]} times; ids must be unique")
    return ids


def _names(columns: Iterable[object], show: int = 20) -> str:
    """Column names for a one-line message: at most `show`, each at most 40 characters."""
    names = [ascii(str(c))[1:-1][:40] for c in columns]
    more = f", ... ({len(names)} in all)" if len(names) > show else ""
    return ", ".join(names[:show]) + more
