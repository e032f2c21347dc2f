"""The recipe of the element volumes shipped inside crystext (src/crystext/element_volumes.json).

    python recipes/element_volumes.py [SHARED_DATA]        # default ../shared/data

Fits one volume per element (A^3 per atom) so that a crystal's cell volume is about the sum of its atoms'
element volumes, by non-negative least squares over MP-20 train + val, and writes them beside their
provenance. Prints the fit's residuals and the percentiles, over MP-20 test, of actual / predicted volume
that MIN_VOLUME_RATIO and MAX_VOLUME_RATIO (crystext.constants) are rounded outward from. Deterministic:
same data, same bytes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from crystext.data import read_split
from crystext.files import write_atomic
from crystext.grammar import ELEMENT_VOLUMES

#: When the shipped table was fitted (kept fixed so that a rebuild gives the same bytes).
FIT_DATE = "2026-11-30"
#: Decimals kept of each volume (A^3): far below the fit's scatter.
DECIMALS = 2
PROVENANCE = {
    "source": "MP-20 train.csv + val.csv, CDVAE's split (txie-93/cdvae): val in full (9,047 crystals, via the "
              "wenwenli1124/cdvae fork, commit 8cd499bc), train in part (the 1,847 of 27,136 crystals in public "
              "copies of train.csv)",
    "license": "CDVAE's data files MIT; the data Materials Project, CC BY 4.0 (A. Jain et al., APL Materials 1, "
               "011002 (2013))",
    "method": "non-negative least squares (scipy.optimize.nnls): cell volume = sum over the cell's atoms of their "
              "element's volume; recipes/element_volumes.py",
    "date": FIT_DATE,
    "units": "A^3 per atom",
}


def compositions(shared: Path, split: str) -> tuple[list[Mapping[str, float]], np.ndarray]:
    """Each MP-20 crystal of `split` as (element -> atoms in the cell), and the cell volumes (A^3)."""
    records = list(read_split(shared / "mp_20", split))
    counts = [{e.symbol: n for e, n in r.structure.composition.items()} for r in records]
    return counts, np.array([r.structure.volume for r in records])


def main() -> int:
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    train, val = compositions(shared, "train"), compositions(shared, "val")
    counts, volumes = train[0] + val[0], np.concatenate([train[1], val[1]])
    elements = sorted({e for row in counts for e in row})
    matrix = np.array([[row.get(e, 0) for e in elements] for row in counts], dtype=float)
    fitted, _ = nnls(matrix, volumes)
    table = {e: round(float(v), DECIMALS) for e, v in zip(elements, fitted, strict=True)}
    write_atomic(ELEMENT_VOLUMES, json.dumps({**PROVENANCE, "volumes": table}, indent=1, sort_keys=True) + "\n")

    fit_ratio = volumes / (matrix @ np.array(list(table.values())))
    print(f"{ELEMENT_VOLUMES}: {len(table)} elements from {len(volumes)} crystals; actual / predicted volume "
          f"median {np.median(fit_ratio):.3f}, RMS of its error {np.sqrt(np.mean((fit_ratio - 1) ** 2)):.3f}")
    test = [(row, v) for row, v in zip(*compositions(shared, "test"), strict=True) if set(row) <= set(table)]
    ratio = np.array([v / sum(n * table[e] for e, n in row.items()) for row, v in test])
    low, high = np.percentile(ratio, [0.5, 99.5])
    print(f"MP-20 test ({len(ratio)} crystals of tabled elements): actual / predicted volume 0.5th percentile "
          f"{low:.3f}, 99.5th {high:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
