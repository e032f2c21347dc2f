"""How likely each model finds real crystals it never trained on: the mean next-token loss of MP-20 test crystals,
written unprompted in each model's own text format, every token weighing one (the validation loss of
`crystext train`). A tuned model that narrows what it writes drifts away from the data, and this loss rises before
coverage is measured (which needs 1,000 samples and their fingerprints).

    python benchmarks/data_likelihood.py MODEL... --name NAME [--n 1000]

MODEL: model directories, or `shipped` for the shipped model. Writes benchmarks/results/data_likelihood_NAME.json/.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories, or 'shipped'")
    parser.add_argument("--n", type=int, default=1000, help="MP-20 test crystals, from the top of test.csv")
    parser.add_argument("--name", required=True)
    parser.add_argument("--note", default="", help="a sentence on the models, under the table")
    args = parser.parse_args()
    import torch
    from _machine import cell, describe, machine, write_result

    from crystext.data import Dataset, read_structures
    from crystext.model import DEFAULT_MODEL_DIR, load_model
    from crystext.train import recipe_config, to_examples, validation_batches, validation_loss

    test = read_structures(SHARED / "mp_20" / "test.csv")
    crystals = Dataset(test.records[: args.n])
    rows = []
    for name in args.models:
        model, tokenizer, info = load_model(DEFAULT_MODEL_DIR if name == "shipped" else Path(name))
        recipe = replace(recipe_config(info, batch_size=32, seed=0), eval_examples=len(crystals))
        examples = to_examples(crystals, recipe.text_format)[0]
        loss = validation_loss(model, validation_batches(examples, tokenizer, recipe), torch.device("cpu"))
        rows.append({"model": name, "crystals": len(examples), "loss": loss})
        print(f"{name}: {loss:.4f} over {len(examples)} crystals", file=sys.stderr)
    command = " ".join(["python", *sys.argv])
    record = {"machine": machine(), "command": command, "reference": f"MP-20 test, first {len(crystals)}",
              "models": rows}
    lines = [f"# Likelihood of MP-20 test crystals: {args.name}", "", describe(record["machine"], command), "",
             f"Mean next-token loss (nats a token, unprompted generation, every token of the crystal and its end) of "
             f"the first "
             f"{len(crystals)} MP-20 test crystals as each model writes a crystal; lower: the model finds real "
             "crystals it never saw likelier.", "", "| model | crystals | loss |", "|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['crystals']} | {cell(r['loss'], 4)} |" for r in rows]
    if args.note:
        lines += ["", args.note]
    write_result(f"data_likelihood_{args.name}", record, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
