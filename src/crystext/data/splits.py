"""Dataset splits in the CDVAE layout (`read_split`), and training sets joined from several (`training_set`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystext.data.readers import read_csv
from crystext.data.records import Dataset, DatasetError

__all__ = ["read_split", "training_set"]


def read_split(data_dir: str | Path, split: str, **kwargs: Any) -> Dataset:
    """Read one split (`train`, `val`, `test`) of a dataset folder in the CDVAE layout.

    A split file without rows is an error naming it, so that training never goes on silently without it.
    """
    data_dir = Path(data_dir)
    for candidate in (data_dir / f"{split}.csv", data_dir / f"{split}.csv.gz"):
        if candidate.is_file():
            return read_csv(candidate, **kwargs)
    raise DatasetError(f"{data_dir}: no {split}.csv or {split}.csv.gz")


def training_set(
    data_dir: str | Path,
    splits: Sequence[str] = ("train", "val"),
    holdout: float = 0.05,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[Dataset, Dataset]:
    """Join several splits (see `Dataset.concat`: a material in two splits once, colliding row ids both kept)
    and hold out a random fraction for the validation loss.

    This is how to train on MP-20 train + val here, where the train split is partial, while the
    official test split stays untouched for evaluation.
    """
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    joined = Dataset.concat([read_split(data_dir, s, **kwargs) for s in splits], f"{data_dir} [{'+'.join(splits)}]")
    order = np.random.default_rng(seed).permutation(len(joined.records))
    n_holdout = int(round(holdout * len(order)))
    held = sorted(order[:n_holdout])
    kept = sorted(order[n_holdout:])
    return (
        Dataset([joined.records[i] for i in kept], joined.skipped, joined.source + " (train)"),
        Dataset([joined.records[i] for i in held], [], joined.source + " (holdout)"),
    )
