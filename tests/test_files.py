"""Atomic writes: a finished write replaces the file whole; a failed one leaves the old file and no debris."""

from __future__ import annotations

import numpy as np
import pytest

from crystext.files import atomic_path, write_atomic


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
