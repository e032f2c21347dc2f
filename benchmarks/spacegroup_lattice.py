"""Is the lattice what a space-group prompt misses? The same prompts answered with and without the prompted test
crystal's own lattice lines already written.

    python benchmarks/spacegroup_lattice.py MODEL [--n 300] [--name NAME]

The space-group prompts of `conditional.py` (the same seeded MP-20 test rows), each completed once by the model
alone (no grammar, so both arms are the model's own text; T 0.7, top-p 0.9): once from the prompt, once from the
prompt followed by the test crystal's lattice lengths and angles in the model's text format. If a model wrote the
wrong symmetry because it chose the wrong cell, the second arm meets far more groups; if it cannot place atoms
symmetrically, both arms stay alike. Writes benchmarks/results/spacegroup_lattice_NAME.json/.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Structure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from conditional import SHARED, by_crystal_system, draw_prompts  # noqa: E402

from crystext.geometry import CRYSTAL_SYSTEMS, SPACEGROUP_SYMPREC, crystal_system, spacegroup_number  # noqa: E402
from crystext.sample.sampler import SampleConfig, Sampler  # noqa: E402
from crystext.textformat import CrystalText, CrystalTextError, FormatOptions, decode  # noqa: E402

ARMS = ("prompt only", "prompt + true lattice")
BATCH = 50


def lattice_lines(cif: str, options: FormatOptions) -> str:
    """The first two lines (lengths, angles) of the crystal's text in a model's format, ending in a newline."""
    text = CrystalText.from_structure(Structure.from_str(cif, fmt="cif")).to_str(options)
    return "\n".join(text.splitlines()[:2]) + "\n"


def group_written(text: str) -> int | None:
    """The space group spglib finds in a completed text (the project's symprec); None when it is no crystal."""
    try:
        return spacegroup_number(decode(text), SPACEGROUP_SYMPREC)
    except (CrystalTextError, ValueError):
        return None


def run_arm(sampler: Sampler, prompts: list[str], heads: list[str], seed: int) -> list[int | None]:
    """Complete each prompt + head once, in batches seeded by their position, and read the groups written."""
    config = SampleConfig(n=len(prompts), temperature=0.7, top_p=0.9, max_atoms=20)
    groups: list[int | None] = []
    for start in range(0, len(prompts), BATCH):
        batch = [p + h for p, h in zip(prompts[start : start + BATCH], heads[start : start + BATCH])]
        completions = sampler.generate(batch, None, config, seed + start)
        groups += [group_written(h + c.text) for h, c in zip(heads[start : start + BATCH], completions)]
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--name", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from _machine import cell, describe, machine, write_result

    test = pd.read_csv(SHARED / "mp_20" / "test.csv")
    prompts = draw_prompts(test, args.n)["spacegroup"]
    sampler = Sampler.from_pretrained(args.model)
    asked = [p.attributes.spacegroup for p in prompts]
    texts = [p.attributes.to_prompt() for p in prompts]
    lattices = [lattice_lines(test.iloc[p.row]["cif"], sampler.text_format) for p in prompts]
    heads = {ARMS[0]: [""] * len(prompts), ARMS[1]: lattices}
    systems = [crystal_system(g) for g in asked]
    results = {}
    for arm in ARMS:
        met = [g == want for g, want in zip(run_arm(sampler, texts, heads[arm], args.seed), asked)]
        results[arm] = {"accuracy": float(np.mean(met)),
                        **{name: row["accuracy"] for name, row in by_crystal_system(asked, met, []).items()}}
    command = "python benchmarks/spacegroup_lattice.py " + " ".join(sys.argv[1:])
    m = machine()
    present = [name for name, _ in CRYSTAL_SYSTEMS if name in systems]
    lines = [f"# Space-group prompts with and without the true lattice: {args.name}", "",
             describe(m, command),
             f"{len(prompts)} space-group prompts (conditional.py's, MP-20 test), one completion each by the model "
             f"alone (no grammar), T 0.7, top-p 0.9; accuracy: spglib at symprec {SPACEGROUP_SYMPREC} finds the asked "
             "group (unreadable text misses). The second arm starts the completion with the prompted test crystal's "
             "own lattice lines.", "",
             "| arm | all | " + " | ".join(f"{s} ({systems.count(s)})" for s in present) + " |",
             "|---|---:|" + "---:|" * len(present)]
    for arm in ARMS:
        lines.append(f"| {arm} | {cell(results[arm]['accuracy'])} | "
                     + " | ".join(cell(results[arm][s]) for s in present) + " |")
    write_result(f"spacegroup_lattice_{args.name}", {"machine": m, "command": command, "model": args.model,
                                                     "prompts": len(prompts), "results": results}, lines)


if __name__ == "__main__":
    main()
