"""How much a model reads its prompt: the log-likelihood of real crystals under right, wrong and no attributes.

    python benchmarks/prompt_use.py [MODEL] [--rows 150] [--name default]

For seeded rows of MP-20 train (seen in training) and test (unseen), the negative log-likelihood (nats) of
the crystal text is computed under the unconditional prompt, under the row's own formula or space group,
and under another row's. A model that follows its prompt scores the crystal far better with the right
attribute than with none, and far worse with a wrong one. The copy test relabels each crystal's elements at
random and states its new formula: only a model that copies the formula scores the new elements well there.
Element tokens are reported apart: the first atom's, those that start a new element (what a formula decides)
and those that repeat one; a new element's NLL is split into when (that some element not yet written starts
there) and which (that one among the unwritten elements: what copying the formula decides). Writes
benchmarks/results/prompt_use_NAME.json/.md. No sampling: a forward pass per prompt and crystal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Composition, Element

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Prompts each crystal is scored under: (name, which attribute is stated, whose value: the row's or another's).
PROMPTS = (("none", None, True), ("formula", "formula", True), ("wrong formula", "formula", False),
           ("space group", "spacegroup", True), ("wrong space group", "spacegroup", False))
#: The copy test: the crystal with its elements swapped for random ones (`crystext.train.relabel`), without and
#: with its new formula. Chemistry cannot tell which element comes next there; only the prompt can.
RELABELLED = ("relabelled, none", "relabelled, formula")
#: The count test: the crystal's own elements with other counts (`other_counts`). A model that reads the counts
#: scores the atoms after a crystal's first element (repeated elements, when) worse under it than under the formula.
OTHER_COUNTS = "formula, other counts"
#: Parts of the completion whose NLL is summed apart: every token; the first atom's element; an element token that
#: starts an element not written before (which element comes next: what copying the formula decides); an element
#: token repeating one already written (how many atoms of it: what the formula decides only with the cell).
PARTS = ("all tokens", "first element", "new elements", "repeated elements")
#: The new elements' NLL split in two: that an unwritten element comes now (when), and which of them (which).
WHEN_WHICH = ("new: when", "new: which")
#: Site-count formats: the count token that follows the first element's symbol, and those that follow each later new
#: element's (what copying a cell formula's counts decides; a count repeating an element is a countdown).
COUNTS = ("first count", "later counts")


@dataclass(frozen=True)
class Scored:
    """Summed NLL (nats) of one crystal's completion under one prompt, in total and by part."""

    nll: dict[str, float]


def completion_nll(model, tokenizer, prompt: str, completion: str) -> Scored:
    """NLL of `completion` after `prompt`: in all, by part of its element tokens, and a new element's split into
    when and which."""
    from crystext.train import IGNORE, tokenize_pair

    ids, labels = tokenize_pair(tokenizer, prompt, completion, completion_only=True, max_length=10_000)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    targets = torch.tensor(labels[1:])
    kept = targets != IGNORE
    log_probs = torch.log_softmax(logits[kept], -1)
    nll = -log_probs.gather(1, targets[kept][:, None])[:, 0]
    tokens = tokenizer.convert_ids_to_tokens(targets[kept].tolist())
    parts = element_parts(tokens)
    which = which_new_nll(log_probs, tokens, element_ids(tokenizer))
    counts = count_parts(tokens, parts)
    return Scored({"all tokens": float(nll.sum()), **{part: float(nll[at].sum()) for part, at in parts.items()},
                   **{part: float(nll[at].sum()) for part, at in counts.items()},
                   "new: which": which, "new: when": float(nll[parts["new elements"]].sum()) - which})


@cache
def element_ids(tokenizer) -> dict[str, int]:
    """The vocabulary's element-symbol tokens."""
    return {token: i for token, i in tokenizer.get_vocab().items() if Element.is_valid_symbol(token)}


def which_new_nll(log_probs: torch.Tensor, tokens: list[str], elements: dict[str, int]) -> float:
    """Summed NLL of each new element among the elements not yet written (the model's choice once it starts one)."""
    total = 0.0
    for i in element_parts(tokens)["new elements"]:
        written = {token for token in tokens[:i] if token in elements}
        unwritten = torch.tensor([j for symbol, j in elements.items() if symbol not in written])
        total += float(torch.logsumexp(log_probs[i, unwritten], 0) - log_probs[i, elements[tokens[i]]])
    return total


def element_parts(tokens: list[str]) -> dict[str, list[int]]:
    """Positions of the element tokens of a completion, by part (`PARTS` after "all tokens")."""
    parts: dict[str, list[int]] = {part: [] for part in PARTS[1:]}
    written: set[str] = set()
    for i, token in enumerate(tokens):
        if not Element.is_valid_symbol(token):
            continue
        part = "first element" if not written else "repeated elements" if token in written else "new elements"
        parts[part].append(i)
        written.add(token)
    return parts


def count_parts(tokens: list[str], parts: dict[str, list[int]]) -> dict[str, list[int]]:
    """Positions of the count tokens (`COUNTS`) after the first and each later new element, "Fe 2" or "Fe2"; none in
    the paper's format."""
    def count_after(i: int) -> list[int]:
        j = i + 1 + (i + 1 < len(tokens) and tokens[i + 1] == " ")
        return [j] if j < len(tokens) and tokens[j].isdigit() else []
    return {"first count": [j for i in parts["first element"] for j in count_after(i)],
            "later counts": [j for i in parts["new elements"] for j in count_after(i)]}


def other_counts(formula: str) -> str:
    """The formula's elements, in its order, with its counts moved one element on (Fe2O3 -> Fe3O2, LiFePO4 ->
    Li4Fe1P1O1, stated Li4FePO); a formula whose counts are all equal gets its first doubled (NaCl -> Na2Cl1)."""
    composition = Composition(formula)
    elements, counts = list(composition), list(composition.values())
    moved = counts[-1:] + counts[:-1] if len(set(counts)) > 1 else [2 * counts[0], *counts[1:]]
    return Composition(dict(zip(elements, moved))).formula.replace(" ", "")


def measure(
    model, tokenizer, split: str, rows: int, seed: int, options=None, cell: bool = False
) -> dict[str, dict[str, float]]:
    """Mean NLL per prompt kind and part over `rows` seeded crystals of one MP-20 split, written in the model's text
    format `options` (the paper's if None), formulas stated as the whole cell's if `cell` (as the model reads them)."""
    from crystext.data import read_split
    from crystext.prompts import Attributes, cell_formula
    from crystext.train import relabel, to_examples

    examples, _ = to_examples(read_split(SHARED / "mp_20", split), options)
    rng = np.random.default_rng(seed)
    chosen = [examples[i] for i in rng.permutation(len(examples))[:rows]]
    if cell:
        chosen = [replace(e, attributes=replace(e.attributes, formula=cell_formula(e.crystal))) for e in chosen]
    totals: dict[str, dict[str, list[float]]] = {}
    for i, example in enumerate(chosen):
        other = chosen[(i + 1) % len(chosen)].attributes  # a wrong value: the next crystal's
        cases = [(name, example.crystal, Attributes(**(
                  {attribute: getattr(example.attributes if own else other, attribute)} if attribute else {})))
                 for name, attribute, own in PROMPTS]
        if len(Composition(example.attributes.formula)) > 1:  # one element has no other counts
            cases.append((OTHER_COUNTS, example.crystal, Attributes(formula=other_counts(example.attributes.formula))))
        swapped, formula = relabel(example.crystal, rng)
        formula = cell_formula(swapped) if cell else formula
        cases += [(RELABELLED[0], swapped, Attributes()), (RELABELLED[1], swapped, Attributes(formula=formula))]
        for name, crystal, attributes in cases:
            scored = completion_nll(model, tokenizer, attributes.to_prompt(), crystal.to_str(options))
            for part in PARTS + WHEN_WHICH + COUNTS:
                totals.setdefault(name, {}).setdefault(part, []).append(scored.nll[part])
    return {name: {part: round(float(np.mean(v)), 3) for part, v in parts.items()} for name, parts in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: the shipped model)")
    parser.add_argument("--rows", type=int, default=150, help="crystals per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="default")
    args = parser.parse_args()
    from _machine import describe, machine

    from crystext.files import write_atomic
    from crystext.model import load_model, model_cell_formula, model_format

    torch.set_num_threads(1)
    model, tokenizer, info = load_model(args.model)
    model.eval()
    options = model_format(info)
    cell = model_cell_formula(info)
    results = {split: measure(model, tokenizer, split, args.rows, args.seed, options, cell)
               for split in ("train", "test")}
    command = " ".join(["python", *sys.argv])
    out = ROOT / "benchmarks" / "results"
    record = {"machine": machine(), "command": command, "model": str(args.model or "shipped"),
              "rows": args.rows, "seed": args.seed, "formulas_stated": "cell" if cell else "reduced",
              "nll_nats": results}
    write_atomic(out / f"prompt_use_{args.name}.json", json.dumps(record, indent=1) + "\n")
    lines = [f"# How much the model reads its prompt: {args.name}", "",
             describe(record["machine"], command), "",
             f"Mean negative log-likelihood (nats per crystal) of {args.rows} seeded MP-20 crystals per split "
             f"(formulas stated {'as the whole cell, Ti2Zn2O6' if cell else 'reduced, TiZnO3'}), "
             "completion only, under each prompt; 'wrong' states the next crystal's value. Lower is better; "
             "a prompt the model reads moves the element tokens most. New elements: element tokens that start an "
             "element not written before (which one comes next is what copying the formula decides); repeated: "
             "the element tokens of the atoms after that. New: when + new: which = new elements; which is the NLL "
             "of the element among those not yet written, what copying the formula decides; when is that a new one "
             "starts there, which needs the number of atoms too. Relabelled: the crystal with its elements swapped for "
             "random ones, without and with its new formula (the copy test: only copying helps which there). "
             "Other counts: the crystal's own elements, counts moved one element on (Fe2O3 -> Fe3O2; NaCl -> "
             "Na2Cl; crystals of one element left out): a model that reads counts scores repeated elements and "
             "when worse there than under the formula." + (" First count, later counts: the count token after the "
             "first element's symbol, and after each later new element's (the counts a cell formula states)."
             if options.site_counts else ""), ""]
    for split, table in results.items():
        columns = PARTS + WHEN_WHICH + (COUNTS if options.site_counts else ())
        lines += [f"## MP-20 {split}", "", "| prompt | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(f"{table[name][p]:.2f}" for p in columns) + " |" for name in table]
        lines.append("")
    write_atomic(out / f"prompt_use_{args.name}.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
