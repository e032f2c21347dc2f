"""The recipe of the offline hull shipped inside crystext (src/crystext/stability/offline_hull/).

    python recipes/offline_hull.py [SHARED_DATA]        # default ../shared/data

Builds the default offline reference (`crystext.stability.hull.default_reference`: MP-20 formation energies
of all splits present + the lemat-genbench MP-20 hull rows, the ~2018 matbench mp_e_form table only for
chemical systems those lack, MP2020 elemental references) and writes its hull vertices, the only part
placing a structure on the hull needs, as gzipped JSON beside its card (README.md there).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from crystext.files import write_atomic
from crystext.stability.hull import SHIPPED_HULL, default_reference


def main() -> int:
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    table = default_reference(shared).to_json()
    # Only what says what the table is; the builder's paths and timings describe this machine, not the data.
    table["details"] = {k: v for k, v in table["details"].items() if k in ("kind", "primary_formulas",
                                                                           "fill_formulas_used")}
    write_atomic(SHIPPED_HULL, gzip.compress(json.dumps(table, sort_keys=True).encode(), mtime=0))
    print(f"{SHIPPED_HULL}: {len(table['stable'])} hull phases, {len(table['elemental_energies'])} elements, "
          f"{SHIPPED_HULL.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
