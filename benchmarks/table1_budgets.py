"""Table 1's stability column under the two relaxation budgets, on the same relaxed attempts of one run.

    python benchmarks/table1_budgets.py RUN_FOLDER --old benchmarks/results/table1_default_stab1000.json
        --label "T=0.7" --name default_T0.7

RUN_FOLDER is a `benchmarks/table1.py` run folder (its stability.csv and stability.summary.json, relaxed
with the 'steps' budget); --old is the committed table whose run of the same label used the paper's 30 s
budget on the same seeded attempts. Writes benchmarks/results/table1_budgets_NAME.json/.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run folder relaxed with the steps budget")
    parser.add_argument("--old", type=Path, required=True, help="committed Table 1 JSON (paper budget)")
    parser.add_argument("--label", required=True, help="the run's label in that table, e.g. T=0.7")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    from _machine import cell, describe, machine, write_result


    old = next(r for r in json.loads(args.old.read_text())["runs"] if r["label"] == args.label)
    new = json.loads((args.run / "stability.summary.json").read_text())
    rows = {
        "paper (30 s per structure)": {
            "relaxed": old["relaxed"], "errors": old["stability_errors"], "converged": None,
            "metastable": old["row"][6], "metastable_converged_only": None, "stable": old["row"][7],
            "sun": old["row"][10]},
        f"steps ({new['budget']['max_steps']} FIRE steps)": {
            "relaxed": new["samples"], "errors": new["errors"], "converged": new["converged_fraction"],
            "metastable": new["metastable"]["rate_all"],
            "metastable_converged_only": new["metastable"]["rate_all_converged_only"],
            "stable": new["stable"]["rate_all"],
            "sun": ((new.get("sun") or {}).get("stable") or {}).get("rate_all")},
    }
    command = " ".join(["python", *sys.argv])
    record = {"machine": machine(), "command": command, "label": args.label, "old_table": str(args.old),
              "rows": rows, "steps_summary": new}

    lines = [f"# Table 1, run {args.label}: the stability column under both relaxation budgets", "",
             describe(record["machine"], command), "",
             f"The same {new['samples']} seeded attempts of the run (`benchmarks/table1.py`; samples and order as "
             "committed), CHGNet, FIRE on a Frechet cell filter to fmax 0.1 eV/A, offline hull. Rates over all "
             "relaxed attempts; 'converged only' counts an attempt the step cap stopped as neither metastable nor "
             "stable. Errors: timeout (the paper's budget drops a structure still running after 30 s), exploded "
             "(atoms closer than 0.5 A during relaxation), unparsed.", "",
             "| budget | relaxed | errors | converged | metastable | metastable, converged only | stable | S.U.N. |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
        lines.append(f"| {name} | {r['relaxed']} | {errors} | " + " | ".join(
            cell(r[k]) for k in ("converged", "metastable", "metastable_converged_only", "stable", "sun")) + " |")
    write_result(f"table1_budgets_{args.name}", record, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
