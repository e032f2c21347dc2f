"""A `crystext tune` run's rounds as a committed table: per round, the rates it trades and the DPO update.

    python benchmarks/tune_rounds.py RUN_FOLDER --name NAME [--note TEXT]

Reads RUN_FOLDER/tune.json and round_*/metrics.json; writes benchmarks/results/tune_NAME.json/.md. Round k's
rates are those of the attempts sampled by the model rounds 1..k-1 tuned (round 1: the starting model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: (metrics key, column header) of the table, in order.
COLUMNS = (("attempts", "attempts"), ("valid_rate", "valid"), ("metastable_rate", "metastable"),
           ("stable_rate", "stable"), ("sun_rate", "S.U.N."), ("uniqueness", "unique (of valid)"),
           ("new_to_run", "new to the run (of valid)"), ("novelty", "novel (of valid)"),
           ("mean_e_above_hull", "mean E_hull"), ("reward_mean", "mean reward"),
           ("pairs", "pairs"))
#: Columns only some runs have: with a probe (`crystext tune --probe`), with prompted attempts (`--prompted`), with
#: a crowding term (`--crowding-weight`).
OPTIONAL_COLUMNS = (("probe_repeats", "written by the probe too (of valid)"),
                    ("prompt_met", "prompted: formula written"), ("mean_crowding", "mean crowding (of valid)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a `crystext tune --out` folder")
    parser.add_argument("--name", required=True)
    parser.add_argument("--note", default="", help="a sentence on what the run was for, printed under the table")
    args = parser.parse_args()
    from _machine import cell, describe, machine, write_result

    from crystext.tune import read_rounds

    settings = json.loads((args.run / "tune.json").read_text())
    rounds = read_rounds(args.run)
    command = " ".join(["python", *sys.argv])
    record = {"machine": machine(), "command": command, "run": str(args.run), "settings": settings, "rounds": rounds}
    columns = COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if any(c[0] in r for r in rounds))

    lines = [f"# crystext tune, run {args.name}: rounds", "", describe(record["machine"], command), "",
             "Each round samples with the model the earlier rounds tuned (round 1: the starting model), relaxes the "
             "valid attempts (CHGNet, steps budget, shipped offline hull unless the settings say otherwise), "
             "pairs them and runs one DPO update. Rates over all attempts except unique and novel (over the "
             "valid); S.U.N. by `crystext.evaluate.sun`'s one definition against the --train structures.", "",
             "| round | " + " | ".join(h for _, h in columns) + " | DPO loss first -> last | reward accuracy |",
             "|---:|" + "---:|" * (len(columns) + 2)]
    for r in rounds:
        update = r.get("update", {})
        loss = f"{cell(update.get('loss_first'))} -> {cell(update.get('loss_last'))}" if update.get("steps") else "–"
        lines.append(f"| {r['round']} | " + " | ".join(cell(r.get(k)) for k, _ in columns)
                     + f" | {loss} | {cell(update.get('reward_accuracy_last'))} |")
    lines += ["", "Settings (tune.json): `" + json.dumps(settings) + "`"]
    if args.note:
        lines += ["", args.note]
    write_result(f"tune_{args.name}", record, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
