"""Training throughput of a scratch preset on this machine, and sequence lengths of MP-20 as tokens.

    python benchmarks/train_throughput.py --data-dir ../shared/data/mp_20 --steps 20

Writes benchmarks/results/train_<preset>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import describe, machine

from crystext.data import training_set
from crystext.model import ModelSpec, train_scratch_tokenizer
from crystext.prompts import Attributes
from crystext.train import TrainConfig, to_examples, train

RESULTS = Path(__file__).parent / "results"


def length_stats(values: list[int]) -> dict[str, float]:
    array = np.array(values)
    return {"mean": round(float(array.mean()), 1), "p50": int(np.median(array)), "p95": int(np.percentile(array, 95)),
            "max": int(array.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--preset", default="scratch-small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    kept, held = training_set(args.data_dir, ("train", "val"), 0.05, 0)
    examples, _ = to_examples(kept)
    texts = [e.crystal.to_str() for e in examples]
    tokenizer = train_scratch_tokenizer(texts)
    prompt = Attributes().to_prompt()
    token_lengths = [len(tokenizer(prompt + t)["input_ids"]) + 2 for t in texts]  # + bos, eos
    char_lengths = [len(prompt + t) + 2 for t in texts]

    out = Path(tempfile.mkdtemp()) / "run"
    config = TrainConfig(out=out, data_dir=args.data_dir, model=ModelSpec(args.preset), max_steps=args.steps,
                         batch_size=args.batch_size, eval_every=10**9, save_every=10**9, warmup_steps=0)
    start = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steady = log[-1]["tokens_per_s"]
    shutil.rmtree(out.parent)
    steps_per_epoch = len(examples) / args.batch_size
    tokens_per_step = float(np.mean(token_lengths)) * args.batch_size
    result = {
        "preset": args.preset,
        "training_structures": len(examples),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens_per_s": steady,
        "seconds_total_incl_setup": round(seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "epoch_hours_estimate": round(steps_per_epoch * tokens_per_step / steady / 3600, 2),
        "sequence_tokens_scratch": length_stats(token_lengths),
        "sequence_chars": length_stats(char_lengths),
        "vocab_size": len(tokenizer),
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"train_{args.preset}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Training throughput: {args.preset}",
        "",
        describe(result["machine"],
                 f"python benchmarks/train_throughput.py --data-dir {args.data_dir} --steps {args.steps}"),
        "",
        "| tokens/s | peak RSS | batch | epoch of MP-20 train+val (estimate) |",
        "|---|---|---|---|",
        f"| {steady} | {result['peak_rss_gib']} GiB | {args.batch_size} | {result['epoch_hours_estimate']} h |",
        "",
        f"Sequence length of the unconditional prompt + crystal ({len(examples)} structures):",
        "",
        "| unit | mean | median | p95 | max |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("scratch tokens", "sequence_tokens_scratch"), ("characters", "sequence_chars")):
        s = result[key]
        md.append(f"| {name} | {s['mean']} | {s['p50']} | {s['p95']} | {s['max']} |")
    (RESULTS / f"train_{args.preset}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
