"""The decoding loop's key/value cache: `crystext.sample.decode`'s growing cache (each step written into room
reserved ahead) against transformers' DynamicCache (the whole cache concatenated every step), timed in turns on
the same seeded attempts, which both must write identically.

    python benchmarks/decode_cache.py [MODEL] --n 512 --turns 4 --name NAME

MODEL: a model directory (default: the shipped model). Default sampler settings (T 0.7, top-p 0.9, grammar and
0.5 A, at most 20 atoms, seed 0), one batch of N. Writes benchmarks/results/decode_cache_NAME.json/.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: the shipped model)")
    parser.add_argument("--n", type=int, default=512, help="attempts a turn, in one batch")
    parser.add_argument("--turns", type=int, default=4, help="timed runs of each cache, alternating")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    from _machine import cell, describe, machine, write_result
    from transformers import DynamicCache

    from crystext.sample import SampleConfig, Sampler
    from crystext.sample import decode as decoding

    sampler = Sampler.from_pretrained(args.model)
    config = SampleConfig(n=args.n, max_attempts=args.n, batch_size=args.n, temperature=0.7, top_p=0.9,
                          max_atoms=20, seed=0)
    caches = {"growing (crystext)": decoding._growing_cache,
              "concatenated (DynamicCache)": lambda model: DynamicCache(config=model.config)}
    seconds: dict[str, list[float]] = {name: [] for name in caches}
    written: dict[str, set[str]] = {name: set() for name in caches}
    with tempfile.TemporaryDirectory() as folder:
        for turn in range(args.turns):
            for index, (name, cache) in enumerate(caches.items()):
                decoding._growing_cache = cache
                out = Path(folder) / f"{turn}-{index}.csv"
                start = time.perf_counter()
                sampler.sample(config, out, resume=False)
                seconds[name].append(time.perf_counter() - start)
                written[name].add(out.read_text())
    same = len(written["growing (crystext)"] | written["concatenated (DynamicCache)"]) == 1
    command = " ".join(["python", *sys.argv])
    record = {"machine": machine(), "command": command, "model": str(args.model or "shipped"), "attempts": args.n,
              "seconds": seconds, "identical_samples": same}
    lines = [f"# Decoding cache: {args.name}", "", describe(record["machine"], command), "",
             f"{args.n} seeded attempts in one batch (T 0.7, top-p 0.9, grammar and 0.5 A, at most 20 atoms) a turn, "
             f"the two caches in turns; every turn wrote {'the same' if same else 'DIFFERENT'} samples.", "",
             "| cache | seconds a turn | mean | attempts/s |", "|---|---|---:|---:|"]
    for name, times in seconds.items():
        mean = statistics.mean(times)
        lines.append(f"| {name} | {', '.join(cell(t, 2) for t in times)} | {cell(mean, 2)} | "
                     f"{cell(args.n / mean, 2)} |")
    write_result(f"decode_cache_{args.name}", record, lines)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
