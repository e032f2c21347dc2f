"""Speed of `crystext evaluate`: 1,000 samples against the 9,046-structure MP-20 test split, cold and warm.

    python benchmarks/evaluate_speed.py ../shared/data/mp_20 --cache-dir /tmp/crystext-bench-cache

The samples are the first 1,000 structures of the val split written through the crystal text
format (as a model writes them, rounded) plus one malformed CIF, in the `crystext sample` CSV layout.
Cold: an empty fingerprint cache (the reference set is fingerprinted); warm: the same run again.
Writes benchmarks/results/evaluate_speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from _machine import describe, machine
from pymatgen.core import Structure

from crystext.evaluate import EvaluateConfig, ProtocolSettings, evaluate
from crystext.textformat import decode, encode

RESULTS = Path(__file__).parent / "results"
N_SAMPLES = 1000
MALFORMED_AT = 500


def write_samples(val_csv: Path, target: Path) -> Path:
    """1,000 val structures through the text format, and one malformed CIF, as `crystext sample` writes them."""
    frame = pd.read_csv(val_csv, nrows=N_SAMPLES)
    rows = []
    for material_id, cif in zip(frame["material_id"], frame["cif"]):
        text = encode(Structure.from_str(cif, fmt="cif"))
        rows.append({"id": material_id, "mode": "unconditional", "conditions": "{}", "raw_text": text,
                     "cif": decode(text).to(fmt="cif"), "error": ""})
    rows.insert(MALFORMED_AT, {"id": "malformed", "mode": "unconditional", "conditions": "{}", "raw_text": "",
                               "cif": "data_x\n_cell_length_a 4.0\nloop_\n_atom_site_label\nNa 0 0", "error": ""})
    pd.DataFrame(rows).to_csv(target, index=False)
    return target


def timed_run(samples: Path, reference: Path) -> dict:
    load_before = os.getloadavg()
    start = time.monotonic()
    result = evaluate(samples, reference, config=EvaluateConfig(protocol=ProtocolSettings("paper")))
    wall = time.monotonic() - start
    return {
        "wall_seconds": round(wall, 1),
        "timings": {k: round(v, 1) for k, v in result.info["timings"].items()},
        "reference_from_cache": result.info["inputs"]["reference"]["profiles_from_cache"],
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "metrics": {k: result.metrics[k] for k in (
            "n_samples", "n_unparsed", "n_valid", "struct_valid", "comp_valid", "cov_recall", "cov_precision",
            "wdist_density", "wdist_num_elems", "uniqueness")},
        "notes": result.notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with the MP-20 val.csv and test.csv")
    parser.add_argument("--cache-dir", type=Path, help="fingerprint cache (must start empty for a cold run)")
    args = parser.parse_args()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="crystext-bench-"))
    if (cache / "fingerprints").exists() and any((cache / "fingerprints").iterdir()):
        raise SystemExit(f"{cache} already holds fingerprints: a cold run needs an empty cache")
    os.environ["CRYSTEXT_CACHE_DIR"] = str(cache)
    with tempfile.TemporaryDirectory() as scratch:
        samples = write_samples(args.data / "val.csv", Path(scratch) / "samples.csv")
        cold = timed_run(samples, args.data / "test.csv")
        warm = timed_run(samples, args.data / "test.csv")
    result = {"machine": machine(), "command": "python benchmarks/evaluate_speed.py ../shared/data/mp_20",
              "cache_dir": str(cache), "cold": cold, "warm": warm}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "evaluate_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# `crystext evaluate` speed: 1,000 samples vs the MP-20 test split (9,046 structures), paper protocol",
        "",
        describe(m, result["command"]),
        "Other jobs shared the cores (1-minute load averages below), so these are upper bounds.",
        "",
        "| run | wall (s) | samples (s) | reference (s) | metrics (s) | matcher (s) | load before/after |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, run in (("cold", cold), ("warm", warm)):
        t = run["timings"]
        lines.append(
            f"| {name} | {run['wall_seconds']} | {t['samples_seconds']} | {t['reference_seconds']} | "
            f"{t['fingerprint_metrics_seconds']} | {t.get('matcher_seconds', '')} | "
            f"{run['load_average_1min_before_after']} |"
        )
    lines += ["", "Metrics (warm run): " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in warm["metrics"].items()), ""]
    (RESULTS / "evaluate_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
