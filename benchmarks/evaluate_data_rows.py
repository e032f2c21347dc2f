"""The data-vs-data rows on MP-20 under both protocols: test against itself, and val against test.

    python benchmarks/evaluate_data_rows.py ../shared/data/mp_20 --cache-dir /tmp/crystext-bench-cache

Val vs test is the ceiling a model can reach (the paper's "Train" row reads struct. valid 1.0,
comp. valid 0.9113, COV-R 1.0, COV-P 1.0, wdist density 0.051, wdist #elem 0.016).
Fingerprints of both splits are cached, so each split is fingerprinted once for all four rows.
Writes benchmarks/results/evaluate_mp20_rows.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _machine import describe, machine

from crystext.evaluate import EvaluateConfig, ProtocolSettings, evaluate
from crystext.report import markdown_table

RESULTS = Path(__file__).parent / "results"
PAPER_TRAIN_ROW = "struct. valid 1.0, comp. valid 0.9113, COV-R 1.0, COV-P 1.0, wdist density 0.051, wdist #elem 0.016"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with the MP-20 val.csv and test.csv")
    parser.add_argument("--cache-dir", type=Path, help="fingerprint cache to use (default: $CRYSTEXT_CACHE_DIR)")
    args = parser.parse_args()
    if args.cache_dir:
        os.environ["CRYSTEXT_CACHE_DIR"] = str(args.cache_dir)
    test, val = args.data / "test.csv", args.data / "val.csv"
    rows, records = [], []
    for label, samples in (("MP-20 test vs test", test), ("MP-20 val vs test", val)):
        for protocol in ("paper", "cdvae"):
            config = EvaluateConfig(
                protocol=ProtocolSettings(protocol, joint_coverage=True), cache_samples=True, progress=True
            )
            load = os.getloadavg()[0]
            start = time.monotonic()
            result = evaluate(samples, test, config=config)
            wall = time.monotonic() - start
            rows.append((label, result))
            records.append({
                "row": label, "protocol": protocol, "wall_seconds": round(wall, 1), "load_average_1min": round(load, 2),
                "samples_from_cache": result.info["inputs"]["samples"]["profiles_from_cache"],
                "reference_from_cache": result.info["inputs"]["reference"]["profiles_from_cache"],
                "timings": {k: round(v, 1) for k, v in result.info["timings"].items()},
                "metrics": result.to_dict()["metrics"], "notes": result.notes,
            })
            print(markdown_table(rows[-1:]), flush=True)
    document = {
        "machine": machine(),
        "command": "python benchmarks/evaluate_data_rows.py ../shared/data/mp_20",
        "versions": rows[0][1].info["versions"],
        "rows": records,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "evaluate_mp20_rows.json").write_text(json.dumps(document, indent=2) + "\n")
    m = document["machine"]
    lines = [
        "# Data-vs-data rows on MP-20, both protocols",
        "",
        describe(m, document["command"]),
        f"Versions: {', '.join(f'{k} {v}' for k, v in document['versions'].items())}.",
        "",
        markdown_table(rows),
        "",
        f"The paper's data row (\"Train\"): {PAPER_TRAIN_ROW}.",
        "",
        "| row | protocol | valid samples | references in coverage | COV-R joint | COV-P joint | "
        "AMSD-R | AMCD-R | struct div | comp div | wall (s) | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        x = r["metrics"]
        lines.append(
            f"| {r['row']} | {r['protocol']} | {x['n_valid']} | {x['n_reference_in_coverage']} | "
            f"{x['cov_recall_joint']:.4f} | {x['cov_precision_joint']:.4f} | {x['amsd_recall']:.4f} | "
            f"{x['amcd_recall']:.4f} | {x['struct_div']:.4f} | {x['comp_div']:.3f} | {r['wall_seconds']} | "
            f"{r['load_average_1min']} |"
        )
    lines.append("")
    (RESULTS / "evaluate_mp20_rows.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
