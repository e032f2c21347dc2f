"""Shared fixtures: the real crystal data in ../shared/data, read in place and never copied."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CRYSTEXT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of benchmark datasets (MP-20, Perov-5, Carbon-24, MPTS-52, hull references)."""
    if not (SHARED_DATA / "mp_20" / "test.csv").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set CRYSTEXT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep each test session's caches out of the user's home."""
    monkeypatch.setenv("CRYSTEXT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread, as in the stability workers: on a busy machine more threads only fight over the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def head_csv() -> Callable[[Path, int, Path], Path]:
    """A function that copies the first `rows` rows of a (possibly gzipped) dataset CSV, to test on real data
    quickly."""
    import pandas as pd

    def copy_head(source: Path, rows: int, target: Path) -> Path:
        pd.read_csv(source, nrows=rows).to_csv(target, index=False)
        return target

    return copy_head


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A scratch-tiny model trained for a few steps on 40 MP-20 structures (once per test session)."""
    import pandas as pd

    from crystext.model import ModelSpec
    from crystext.train import TrainConfig, train

    data = tmp_path_factory.mktemp("data")
    pd.read_csv(shared_data / "mp_20" / "val.csv", nrows=40).to_csv(data / "train.csv", index=False)
    config = TrainConfig(out=tmp_path_factory.mktemp("model"), data_dir=data, model=ModelSpec("scratch-tiny"),
                         splits=("train",), holdout=0.1, max_steps=4, batch_size=4, learning_rate=3e-3)
    return train(config)
