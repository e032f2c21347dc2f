"""The grammar's cost alone: a samples CSV's texts fed token by token through the logits processor, no model.

    python benchmarks/grammar_replay.py runs/samples.csv --name both3 [--model DIR] [--rows 256]

Sampling time is the model's and the grammar's; this times the grammar (one thread, one batch of `--rows` texts,
each step masking the whole vocabulary per live row, as sampling does), so a change to `crystext.grammar` can be
measured without the noise of the model. Writes benchmarks/results/grammar_replay_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from _machine import describe, machine, write_result

from crystext.constants import MIN_INTERATOMIC_DISTANCE
from crystext.grammar import Grammar, GrammarLogitsProcessor
from crystext.sample import Sampler


def replay(sampler: Sampler, texts: list[str], max_atoms: int) -> tuple[float, int]:
    """Seconds to feed `texts` through a fresh processor as one batch, and how many rows it found leaving the
    grammar (0 for texts the same grammar wrote)."""
    tokenizer = sampler.tokenizer
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width + 1), tokenizer.pad_token_id)  # column 0 stands for the prompt
    for i, row in enumerate(rows):
        ids[i, 1 : len(row) + 1] = torch.tensor(row)
    vocab = sampler.model.get_output_embeddings().weight.shape[0]
    grammar = Grammar(sampler.text_format, max_atoms, min_distance=MIN_INTERATOMIC_DISTANCE)
    processor = GrammarLogitsProcessor(tokenizer, [grammar] * len(rows), vocab)
    scores = torch.zeros(len(rows), vocab)
    start = time.perf_counter()
    for step in range(1, width + 1):
        processor(ids[:, :step], scores)
    return time.perf_counter() - start, len(processor.dead_ends)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, help="a `crystext sample` CSV (its raw_text column)")
    parser.add_argument("--model", type=Path, help="the model whose tokenizer and format wrote it (default: shipped)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    sampler = Sampler.from_pretrained(args.model)
    texts = pd.read_csv(args.samples, keep_default_na=False)["raw_text"].tolist()[: args.rows]
    runs = [replay(sampler, texts, args.max_atoms) for _ in range(args.repeats)]
    seconds = [round(s, 2) for s, _ in runs]
    record = {"samples": str(args.samples), "model": str(args.model or "shipped"), "rows": len(texts),
              "seconds": seconds, "dead_ends": runs[0][1], "machine": machine()}
    lines = [f"# Grammar replay: {args.name}", "",
             describe(record["machine"], " ".join(["python", *sys.argv])), "",
             f"{len(texts)} texts as one batch, one thread: {min(seconds)} s at best of {args.repeats} "
             f"({', '.join(map(str, seconds))}); {runs[0][1]} rows left the grammar."]
    write_result(f"grammar_replay_{args.name}", record, lines)


if __name__ == "__main__":
    main()
