"""The reference rows of the paper's table, measured here: MP-20 test vs itself, and val vs test ("data vs data").

    python benchmarks/evaluate_data_rows.py [--out benchmarks/results] [--rows self,val]

Both protocols from one analysis per file; the fingerprints of each file are cached (so after
`benchmarks/evaluate_speed.py --cold` the test split is free). Val vs test is the ceiling a model
can reach on this benchmark. No training set is given (novelty is not part of these rows).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--rows", default="self,val")
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    from crystext.evaluate import evaluate, markdown_table, write_report

    test = SHARED / "mp_20" / "test.csv"
    rows = {"self": ("MP-20 test vs test", test), "val": ("MP-20 val vs test (data vs data)", SHARED / "mp_20" / "val.csv")}
    table, records = [], {}
    for key in args.rows.split(","):
        label, samples = rows[key]
        start = time.monotonic()
        result = evaluate(samples, test, protocols=("paper", "cdvae"), jobs=args.jobs, progress=True)
        write_report(result, args.out / f"evaluate_{key}_vs_test", label)
        records[key] = {"label": label, "wall_s": round(time.monotonic() - start, 1), "metrics": result.metrics,
                        "warnings": result.warnings, "timings_s": result.timings}
        table += [(f"{label} ({p})", m) for p, m in result.metrics.items()]
    (args.out / "evaluate_data_rows.json").write_text(json.dumps(records, indent=2, default=float) + "\n")
    md = markdown_table(table)
    (args.out / "evaluate_data_rows.md").write_text(
        "# MP-20 reference rows, measured with crystext evaluate\n\n" + md
        + "\nPaper's data row (crystal-text-llm basic_eval.py, train vs test): struct 1.0, comp 0.9113, COV-R 1.0, "
        "COV-P 1.0, wdist density 0.051, wdist #elem 0.016.\n"
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
