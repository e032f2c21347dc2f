"""Round trip of the crystal text format on a whole split: match rate under StructureMatcher and throughput.

    python benchmarks/roundtrip.py ../shared/data/mp_20/test.csv

Writes benchmarks/results/roundtrip_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _machine import describe, machine
from pymatgen.analysis.structure_matcher import StructureMatcher
from tqdm import tqdm

from crystext.data import read_csv
from crystext.textformat import FormatOptions, decode, encode

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--name", default="mp20_test")
    args = parser.parse_args()

    dataset = read_csv(args.csv, progress=True)
    structures = [r.structure for r in dataset]
    options = FormatOptions()

    start = time.perf_counter()
    texts = [encode(s, options) for s in structures]
    encoded = time.perf_counter()
    decoded = [decode(t) for t in texts]
    done = time.perf_counter()

    matcher = StructureMatcher()
    misses = []
    for record, back in tqdm(zip(dataset, decoded), total=len(decoded), desc="matching"):
        if not matcher.fit(record.structure, back):
            misses.append(record)
    n = len(structures)
    result = {
        "dataset": str(args.csv),
        "format": options.__dict__,
        "structures": n,
        "skipped_rows": len(dataset.skipped),
        "all_encode_and_decode": len(decoded) == n,
        "match_rate": round(1 - len(misses) / n, 5),
        "misses": [
            {
                "id": r.id,
                "formula": r.structure.composition.reduced_formula,
                "sites": len(r.structure),
                "lattice": [round(x, 4) for x in r.structure.lattice.parameters],
            }
            for r in misses
        ],
        "encode_per_s": round(n / (encoded - start), 1),
        "decode_per_s": round(n / (done - encoded), 1),
        "encode_decode_per_s": round(n / (done - start), 1),
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"roundtrip_{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Text-format round trip: {args.name}",
        "",
        describe(result["machine"], f"python benchmarks/roundtrip.py {args.csv}"),
        "",
        "| structures | all encode+decode | StructureMatcher match | encode+decode / s | encode / s | decode / s |",
        "|---|---|---|---|---|---|",
        f"| {n} | {result['all_encode_and_decode']} | {result['match_rate']:.4f} ({len(misses)} misses) | "
        f"{result['encode_decode_per_s']} | {result['encode_per_s']} | {result['decode_per_s']} |",
        "",
        "Misses (id, formula, sites, a b c alpha beta gamma):",
        "",
    ]
    lines += [f"- {m['id']} {m['formula']} ({m['sites']} sites): {m['lattice']}" for m in result["misses"]]
    (RESULTS / f"roundtrip_{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
