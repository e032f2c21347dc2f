"""The prompts a new user types first: a known formula with its space group, sampled as `crystext sample` does.

    python benchmarks/named_prompts.py [MODEL] [--n 20] [--seed 9] [--name default]

For each (formula, space group) of PROMPTS, `--n` valid crystals (T 0.7, the grammar and its 0.5 A distance), free
and with `--force-composition`; each crystal is judged as conditional accuracy judges it (reduced formula, spglib
at symprec 0.1: `Attributes.unmet`). Reports what the sampler asked (a cell-formula model's formula scaled to a cell
the group holds: `Sampler.as_read`), attempts, valid crystals, and how many have the formula, the group, both.
Writes benchmarks/results/named_prompts_NAME.json/.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from pymatgen.core import Structure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import describe, machine, write_result  # noqa: E402

from crystext.prompts import Attributes  # noqa: E402
from crystext.sample import SampleConfig, Sampler  # noqa: E402

#: Rock salt, olivine and wurtzite: three structures every materials scientist knows, in three crystal systems.
PROMPTS = (("NaCl", 225), ("LiFePO4", 62), ("GaN", 186))


def judge(path: Path, attributes: Attributes) -> dict[str, int]:
    """Attempts, valid crystals, and how many of those have the asked formula, space group, and both."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    misses = [attributes.unmet(Structure.from_str(row["cif"], fmt="cif")) for row in rows if row["cif"]]
    return {"attempts": len(rows), "valid": len(misses),
            "formula met": sum("formula" not in miss for miss in misses),
            "group met": sum("space group" not in miss for miss in misses),
            "both met": sum(not miss for miss in misses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="a crystext model directory (default: the shipped one)")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--name", default="default")
    args = parser.parse_args()
    sampler = Sampler.from_pretrained(args.model)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for formula, group in PROMPTS:
            typed = Attributes(formula, group)
            for forced in (False, True):
                config = SampleConfig(n=args.n, seed=args.seed, force_composition=forced)
                out = Path(work) / f"{formula}_{group}_{forced}.csv"
                started = time.perf_counter()
                sampler.sample(config, out, [typed], progress=False)
                results.append({"formula": formula, "spacegroup": group, "forced": forced,
                                "asked": sampler.as_read(typed, config.max_atoms).formula,
                                "seconds": round(time.perf_counter() - started, 1), **judge(out, typed)})
                print(results[-1], file=sys.stderr)
    command = "python benchmarks/named_prompts.py " + " ".join(sys.argv[1:])
    record = {"machine": machine(), "command": command, "model": args.model or "(default)", "results": results}
    lines = [f"# Named prompts: {record['model']}", "",
             f"{describe(record['machine'], command)} T 0.7, the grammar with its 0.5 A distance, seed {args.seed}; "
             "formula: reduced formula; space group: spglib, symprec 0.1.",
             "", "| Prompt | Forced | Asked as | Attempts | Valid | Formula | Space group | Both |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['formula']} / {r['spacegroup']} | {'yes' if r['forced'] else 'no'} | {r['asked']} | "
              f"{r['attempts']} | {r['valid']} | {r['formula met']} | {r['group met']} | {r['both met']} |"
              for r in results]
    write_result(f"named_prompts_{args.name}", record, lines)

if __name__ == "__main__":
    main()
