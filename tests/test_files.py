"""Atomic writes: a finished write replaces the file whole; a failed one leaves the old file and no debris."""

from __future__ import annotations

import numpy as np
import pytest

from crystext.errors import CrystextError, OutputExistsError
from crystext.files import CsvLog, atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_nothing_beside_it(tmp_path) -> None:
    target = tmp_path / "deep" / "result.json"
    write_atomic(target, '{"a": 1}')
    write_atomic(target, b'{"a": 2}')
    assert target.read_text() == '{"a": 2}'
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as partial:
        partial.write_text("half a ta")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_the_temporary_name_keeps_the_suffix_numpy_would_otherwise_add(tmp_path) -> None:
    target = tmp_path / "profile.npz"
    with atomic_path(target) as partial:
        np.savez_compressed(partial, x=np.arange(3))
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["profile.npz"]


COLUMNS = ("id", "cif", "error")
CIF = "data_x\n_cell_length_a 4.0\nNa 0 0 0\n"


def test_csv_log_appends_whole_rows_and_reads_them_back_on_resume(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    log = CsvLog(path, COLUMNS, resume=False)
    log.append([{"id": "a", "cif": CIF}, {"id": "b", "error": "bad", "cif": None}])
    again = CsvLog(path, COLUMNS, resume=True)
    assert again.rows == [{"id": "a", "cif": CIF, "error": ""}, {"id": "b", "cif": "", "error": "bad"}]
    assert again.ids() == {"a", "b"}


def test_csv_log_refuses_to_overwrite_without_resume(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    CsvLog(path, COLUMNS, resume=False).append([{"id": "a"}])
    with pytest.raises(OutputExistsError, match="pass --resume"):
        CsvLog(path, COLUMNS, resume=False)


@pytest.mark.parametrize("cut", [1, 5, 12, 20])
def test_csv_log_drops_a_torn_last_row_before_appending(tmp_path, cut: int) -> None:
    """A kill mid-write leaves the last row without its newline (often inside a quoted CIF): it is cut off,
    so the next append starts on a fresh line and no row is glued to another."""
    path = tmp_path / "rows.csv"
    CsvLog(path, COLUMNS, resume=False).append([{"id": "a", "cif": CIF}, {"id": "b", "cif": CIF}])
    text = path.read_text()
    path.write_text(text[: len(text) - cut])
    log = CsvLog(path, COLUMNS, resume=True)
    assert [r["id"] for r in log.rows] == ["a"]
    log.append([{"id": "b", "cif": CIF}])
    assert [r["id"] for r in CsvLog(path, COLUMNS, resume=True).rows] == ["a", "b"]
    assert path.read_text() == text


def test_csv_log_will_not_resume_a_file_with_another_header(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("material_id,cif\nx,y\n")
    with pytest.raises(CrystextError, match="header is not id,cif,error"):
        CsvLog(path, COLUMNS, resume=True)
