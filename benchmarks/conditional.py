"""Text-conditional generation and infill for one model directory (the paper's third task), measured here.

    python benchmarks/conditional.py [MODEL] [--prompts 300] [--per-prompt 1] [--stability-n 50] [--infill-n 50]
        [--work runs/conditional] [--name default] [--guidance 1] [--kinds formula ...]

Four prompt kinds, --prompts MP-20 test rows each (a seeded draw, four disjoint sets, the same for every model):
the row's formula alone, its space group alone, both, and its energy above hull (a stability request, mostly
"0 ev/atom"). Every prompt gets exactly --per-prompt sampling attempts (T 0.7, top-p 0.9, grammar and 0.5 A minimum
distance as `crystext sample` does). Each kind is scored with `crystext.evaluate` (paper protocol, no structure
matcher; the prompted rows are its reference set, so only they are fingerprinted): formula accuracy (reduced
formula), element-set match, space-group accuracy (spglib, symprec 0.1), over every attempt (an unreadable one
misses), how the others miss (other counts, missing elements, a foreign element; also by the prompted crystal's
formula units), the volume per atom of formula prompts' samples over the prompted crystal's (median), and space-group
accuracy per crystal system of the requested group beside its base rate (how often the model writes that group
when no group is asked). A formula is stated as the row's reduced formula (TiZnO3), or as its whole cell's
(Ti2Zn2O6) for a model trained to read it so (`crystext train --cell-formula`; --formula-form to choose). A seeded
--stability-n of the stability-prompt attempts is relaxed
(CHGNet, offline hull). Infill: --infill-n seeded test structures, one seeded element masked, every replacement
ranked by the model; the top one that changes the crystal is checked for validity and, valid, relaxed.
Every step writes into --work and resumes: a killed run is continued by running the same command. Writes
--results-dir/conditional_NAME.json and .md. Without MODEL the model shipped with crystext is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

from crystext.files import CsvLog, write_atomic
from crystext.geometry import CRYSTAL_SYSTEMS, crystal_system
from crystext.prompts import Attributes, cell_formula
from crystext.stability.relax import BUDGETS
from crystext.textformat import CrystalText, FormatOptions

if TYPE_CHECKING:
    from crystext.data import Dataset
    from crystext.sample import Sampler
    from crystext.stability import HullReference

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TEST_CSV = SHARED / "mp_20" / "test.csv"
#: Prompt kinds and the `Attributes` fields each states, in table order.
KINDS: dict[str, tuple[str, ...]] = {
    "formula": ("formula",),
    "spacegroup": ("spacegroup",),
    "formula_spacegroup": ("formula", "spacegroup"),
    "stability": ("e_above_hull",),
}
#: Seeds of the independent draws: prompt rows, the stability subset, the infill structures. Sampling takes the
#: kind's position in KINDS as its seed, so the base rate compares independent draws.
PROMPT_SEED = 0
SUBSET_SEED = 1
INFILL_SEED = 2
#: The per-row columns of the infill log (one row per masked structure).
INFILL_COLUMNS = ("id", "formula", "masked", "original_rank", "replacement", "log_prob", "struct_valid",
                  "comp_valid", "cif")
#: How a formula-prompted attempt meets its request (`formula_outcome`), and the groups `outcomes_by_units` forms.
OUTCOMES = ("formula", "counts", "missing", "foreign", "unreadable")
UNIT_GROUPS = ("1 formula unit", "2 formula units", "3 or more")
COLUMNS = ("prompts", "attempts", "readable", "formula acc.", "element set", "missing elements", "foreign element",
           "volume/atom ratio",
           "space group acc.", "space group base rate", "relaxed", "metastable", "mean E_hull", "E_hull MAE")


@dataclass(frozen=True)
class Prompt:
    """One prompt: the test row it was drawn from (position in the file) and what it states."""

    row: int
    attributes: Attributes


def draw_prompts(test: pd.DataFrame, n: int) -> dict[str, list[Prompt]]:
    """`n` prompts per kind from disjoint, seeded test rows; kind k takes every fourth row of one seeded order
    from the k-th on, so a larger `n` keeps the smaller draw's prompts."""
    if n * len(KINDS) > len(test):
        raise ValueError(f"{n} prompts of {len(KINDS)} kinds need {n * len(KINDS)} test rows; the file has {len(test)}")
    order = np.random.default_rng(PROMPT_SEED).permutation(len(test))
    prompts = {}
    for k, (kind, stated) in enumerate(KINDS.items()):
        rows = order[k :: len(KINDS)][:n].tolist()
        full = [Attributes.from_properties(test.iloc[row].to_dict()) for row in rows]
        prompts[kind] = [Prompt(row, Attributes(**{f: getattr(a, f) for f in stated})) for row, a in zip(rows, full)]
    return prompts


def stated_as_cells(
    prompts: dict[str, list[Prompt]], test: pd.DataFrame, options: FormatOptions | None = None
) -> dict[str, list[Prompt]]:
    """The prompts with each formula stated as the prompted crystal's whole cell (Ti2Zn2O6 for two TiZnO3 units), as
    a model trained with `--cell-formula` reads it: its conventional cell where the model answers with an asymmetric
    unit (`options`, the model's text format)."""
    def as_cell(prompt: Prompt) -> Prompt:
        if prompt.attributes.formula is None:
            return prompt
        structure = Structure.from_str(test.iloc[prompt.row]["cif"], fmt="cif")
        asymmetric = (options or FormatOptions()).answering(prompt.attributes.spacegroup).asymmetric_unit
        crystal = CrystalText.from_structure(structure, asymmetric)
        return Prompt(prompt.row, replace(prompt.attributes, formula=cell_formula(crystal)))
    return {kind: [as_cell(p) for p in kind_prompts] for kind, kind_prompts in prompts.items()}


def base_rates(requested: Sequence[int], background: Sequence[int]) -> list[float]:
    """For each requested space group, the share of `background` attempts (not asked for a group) that have it."""
    counts = Counter(background)
    return [counts[g] / len(background) if background else math.nan for g in requested]


def by_crystal_system(requested: Sequence[int], met: Sequence[bool], background: Sequence[int]) -> dict[str, dict]:
    """Attempts, space-group accuracy and mean base rate per crystal system of the requested group (systems
    without a request left out)."""
    rates = base_rates(requested, background)
    groups: dict[str, list[tuple[bool, float]]] = {}
    for group, hit, rate in zip(requested, met, rates):
        groups.setdefault(crystal_system(group), []).append((hit, rate))
    return {name: {"n": len(groups[name]), "accuracy": float(np.mean([h for h, _ in groups[name]])),
                   "base_rate": float(np.mean([r for _, r in groups[name]]))}
            for name, _ in CRYSTAL_SYSTEMS if name in groups}


def formula_outcome(requested: str, sample: str) -> str:
    """How a sample's formula ('' when it did not read) meets the requested one: the same reduced formula; exactly
    its elements in other counts; only some of them (it stopped early); an element not asked for; unreadable."""
    if not sample:
        return "unreadable"
    wrote, asked = Composition(sample), Composition(requested)
    if wrote.reduced_formula == asked.reduced_formula:
        return "formula"
    if set(wrote.elements) == set(asked.elements):
        return "counts"
    return "missing" if set(wrote.elements) < set(asked.elements) else "foreign"


def mean(values: Sequence[float]) -> float | None:
    """The mean, or None for no values (a column that does not apply)."""
    return float(np.mean(values)) if len(values) else None


def sample_kind(sampler: Sampler, prompts: list[Prompt], seed: int, folder: Path, args: argparse.Namespace) -> Path:
    """Sample --per-prompt attempts for every prompt of one kind into folder/samples.csv (resumed if there)."""
    from crystext.sample import SampleConfig

    folder.mkdir(parents=True, exist_ok=True)
    samples = folder / "samples.csv"
    # Attempt j asks prompt j // K: the sampler gives attempt j conditions[j % len], and makes exactly n attempts,
    # since n attempts can never hold more than n valid structures.
    conditions = [p.attributes for p in prompts for _ in range(args.per_prompt)]
    config = SampleConfig(n=len(conditions), max_attempts=len(conditions), batch_size=args.batch_size,
                          temperature=args.temperature, top_p=args.top_p, constrained=not args.no_constraint,
                          force_composition=args.force_composition, max_atoms=args.max_atoms, seed=seed,
                          guidance_scale=args.guidance, volume_floor=not args.no_volume_floor)
    sampler.sample(config, samples, conditions=conditions, resume=samples.exists())
    return samples


def evaluated(samples: Path, reference: Path, out: Path, stability: Path | None = None) -> tuple[dict, pd.DataFrame]:
    """Metrics and per-sample rows of `crystext.evaluate` for one samples CSV, kept in `out` and redone only when
    an input file changed; the per-sample rows as text, as written."""
    from crystext.evaluate import EvaluateConfig, evaluate
    from crystext.provenance import file_digest

    inputs = {"samples": file_digest(samples), "reference": file_digest(reference),
              "stability": file_digest(stability) if stability else None}
    stamp = out / "inputs.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != inputs:
        evaluation = evaluate(samples, reference, stability=stability, config=EvaluateConfig(matcher=False))
        evaluation.write(out)
        write_atomic(stamp, json.dumps(inputs) + "\n")
    per_sample = pd.read_csv(out / "per_sample.csv", dtype=str, keep_default_na=False)
    return json.loads((out / "metrics.json").read_text())["metrics"], per_sample


def requests(per_sample: pd.DataFrame) -> list[dict[str, Any]]:
    """What each attempt asked for, from the evaluation's conditions column."""
    return [json.loads(text) if text else {} for text in per_sample["conditions"]]


def volume_ratio(
    per_sample: pd.DataFrame, prompts: list[Prompt], test: pd.DataFrame, per_prompt: int
) -> float | None:
    """The median, over readable attempts, of a sample's volume per atom over that of the test crystal its prompt
    was drawn from: how dense the model writes a formula (1: as dense as the real crystal)."""
    real = [Structure.from_str(test.iloc[p.row]["cif"], fmt="cif") for p in prompts]
    ratios = [float(row["volume"]) / int(row["n_atoms"]) / (real[i].volume / len(real[i]))
              for row in per_sample.to_dict("records") if row["parsed"] == "True"
              for i in [int(row["id"][1:]) // per_prompt]]
    return float(np.median(ratios)) if ratios else None


def outcomes_by_units(
    per_sample: Sequence[pd.DataFrame], prompts: Sequence[list[Prompt]], test: pd.DataFrame, per_prompt: int
) -> dict[str, dict[str, float]]:
    """How formula-prompted attempts (of every formula kind) end, grouped by the formula units of the prompted
    crystal, and for formulas whose counts are all 1: whether a cell of several units, or counting past one, is
    what the model misses."""
    groups: dict[str, list[str]] = {}
    for rows, kind_prompts in zip(per_sample, prompts):
        cells_of = [Structure.from_str(test.iloc[p.row]["cif"], fmt="cif").composition for p in kind_prompts]
        for row in rows.to_dict("records"):
            i = int(row["id"][1:]) // per_prompt
            formula = str(kind_prompts[i].attributes.formula)
            units = int(cells_of[i].get_reduced_composition_and_factor()[1])
            outcome = formula_outcome(formula, row["formula"] if row["parsed"] == "True" else "")
            groups.setdefault(UNIT_GROUPS[min(units, 3) - 1], []).append(outcome)
            if all(count == 1 for count in Composition(formula).values()):
                groups.setdefault("counts all 1", []).append(outcome)
    return {name: {"n": len(groups[name]), **{o: mean([x == o for x in groups[name]]) for o in OUTCOMES}}
            for name in (*UNIT_GROUPS, "counts all 1") if name in groups}


def kind_row(kind: str, prompts: int, metrics: dict, per_sample: pd.DataFrame, background: list[int]) -> dict:
    """One row of the table: counts, readable rate, formula, element-set and space-group accuracy, base rate."""
    asked = requests(per_sample)
    parsed = (per_sample["parsed"] == "True").tolist()
    formulas = per_sample["formula"].tolist()
    outcomes = [formula_outcome(a["formula"], f if ok else "") for a, f, ok in zip(asked, formulas, parsed)
                if "formula" in a]
    groups = [int(a["spacegroup"]) for a in asked if "spacegroup" in a]
    return {"kind": kind, "prompts": prompts, "attempts": len(per_sample), "readable": mean(parsed),
            "formula_accuracy": metrics.get("formula_accuracy"),
            "element_set_match": mean([o in ("formula", "counts") for o in outcomes]),
            "missing_elements": mean([o == "missing" for o in outcomes]),
            "foreign_element": mean([o == "foreign" for o in outcomes]),
            "spacegroup_accuracy": metrics.get("spacegroup_accuracy"),
            "spacegroup_base_rate": mean(base_rates(groups, background))}


def system_table(per_sample: pd.DataFrame, background: list[int]) -> dict[str, dict]:
    """Space-group accuracy per crystal system for one kind's attempts that asked for a group."""
    asked = requests(per_sample)
    met = (per_sample["spacegroup_match"] == "True").tolist()
    chosen = [i for i, a in enumerate(asked) if "spacegroup" in a]
    return by_crystal_system([int(asked[i]["spacegroup"]) for i in chosen], [met[i] for i in chosen], background)


def seeded_subset(ids: Sequence[str], n: int) -> set[str]:
    """A prefix of one seeded order of `ids`: a later, larger `n` extends the relaxations already done."""
    return set(np.random.default_rng(SUBSET_SEED).permutation(list(ids))[:n].tolist())


def relax(dataset: Dataset, output: Path, reference: HullReference, budget: str) -> None:
    """Relax a dataset with CHGNet and place it on the hull, into `output` (resumed if there)."""
    from crystext.stability import StabilityConfig, relax_and_place

    relax_and_place(dataset, reference, output,
                    StabilityConfig(backend="chgnet", relax=BUDGETS[budget], resume=output.exists()))


def stability_metrics(folder: Path, test_reference: Path, hull: HullReference, args: argparse.Namespace) -> dict:
    """Relax a seeded subset of one kind's attempts (folder/samples.csv); evaluation's stability metrics over it.

    Evaluated on its own: over the whole kind, the attempts not relaxed would count as not metastable.
    """
    from crystext.stability import read_samples

    frame = pd.read_csv(folder / "samples.csv", dtype=str, keep_default_na=False)
    subset = folder / "relaxed_samples.csv"
    write_atomic(subset, frame[frame["id"].isin(seeded_subset(frame["id"], args.stability_n))].to_csv(index=False))
    output = folder / "stability.csv"
    relax(read_samples(subset), output, hull, args.budget)
    metrics, _ = evaluated(subset, test_reference, folder / "eval_relaxed", stability=output)
    return {"relaxed": metrics["n_stability_conditioned"],
            "metastable": metrics.get("stability_conditioned_metastable_rate"),
            "mean_e_above_hull": metrics.get("stability_conditioned_mean_e_above_hull"),
            "e_above_hull_mae": metrics.get("stability_conditioned_e_above_hull_mae")}


def infill_one(sampler: Sampler, structure: Structure, masked: str) -> dict[str, Any]:
    """The rank of the masked element among the model's replacements, and the best other one, checked for
    validity (CDVAE's structural and SMACT compositional checks)."""
    from crystext.evaluate.validity import compositional_validity, structural_problem

    ranked = sampler.infill(structure, masked)
    best = next(s for s in ranked if s.element != masked)
    try:
        comp_valid = compositional_validity(best.structure.composition)
    except ValueError:  # an element SMACT has no data for
        comp_valid = False
    return {"original_rank": [s.element for s in ranked].index(masked) + 1, "replacement": best.element,
            "log_prob": round(best.log_prob, 4), "struct_valid": structural_problem(best.structure) is None,
            "comp_valid": comp_valid, "cif": best.structure.to(fmt="cif")}


def infill(sampler: Sampler, test: pd.DataFrame, folder: Path, hull: HullReference, args: argparse.Namespace) -> dict:
    """Mask one seeded element of --infill-n seeded test structures, rank replacements, relax the valid top ones."""
    from crystext.data import Dataset, Record
    from crystext.evaluate.inputs import read_stability
    from crystext.evaluate.sun import stability_flags

    folder.mkdir(parents=True, exist_ok=True)
    rows = np.random.default_rng(INFILL_SEED).permutation(len(test))[:args.infill_n].tolist()
    log_path = folder / "infill.csv"
    log = CsvLog(log_path, INFILL_COLUMNS, resume=log_path.exists())
    done = log.ids()
    for row in rows:
        record = test.iloc[row]
        if record["material_id"] in done:
            continue
        structure = Structure.from_str(record["cif"], fmt="cif")
        # Per structure, so the masked element does not depend on --infill-n.
        masked = str(np.random.default_rng([INFILL_SEED, row]).choice(
            sorted(e.symbol for e in structure.composition.elements)))
        log.append([{"id": record["material_id"], "formula": structure.composition.reduced_formula,
                     "masked": masked, **infill_one(sampler, structure, masked)}])
        print(f"infill {len(log.rows)}/{len(rows)}", flush=True)
    wanted = {test.iloc[row]["material_id"] for row in rows}
    table = [r for r in log.rows if r["id"] in wanted]
    valid = [r for r in table if r["struct_valid"] == "True" and r["comp_valid"] == "True"]
    chosen = valid[:args.stability_n]  # the valid ones in draw order, as many as the stability subset
    output = folder / "stability.csv"
    records = [Record(r["id"], Structure.from_str(r["cif"], fmt="cif")) for r in chosen]
    relax(Dataset(records, [], "infill top substitutions"), output, hull, args.budget)
    energies = read_stability(output)["e_above_hull"]
    metastable, _ = stability_flags(energies.loc[[r["id"] for r in chosen]].to_numpy(float))
    ranks = [int(r["original_rank"]) for r in table]
    return {"structures": len(table), "recovery": mean([rank == 1 for rank in ranks]),
            "mean_original_rank": mean(ranks),
            "struct_valid": mean([r["struct_valid"] == "True" for r in table]),
            "comp_valid": mean([r["comp_valid"] == "True" for r in table]),
            "valid": mean([r in valid for r in table]), "relaxed": len(chosen),
            "metastable": int(metastable.sum()), "metastable_rate": mean(metastable)}


def sampling_settings(args: argparse.Namespace) -> dict:
    """What the samples in --work depend on: a work folder holds one setting's samples."""
    return {"model": str(args.model or "shipped"), "prompts": args.prompts, "per_prompt": args.per_prompt,
            "temperature": args.temperature, "top_p": args.top_p, "max_atoms": args.max_atoms,
            "batch_size": args.batch_size, "force_composition": args.force_composition,
            "constrained": not args.no_constraint, "guidance": args.guidance,
            **({"formula_form": "cell"} if args.formula_form == "cell" else {}),
            **({"volume_floor": False} if args.no_volume_floor else {})}


def check_work(args: argparse.Namespace) -> None:
    """Refuse a --work folder whose samples were made with other settings; record them in a new one."""
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "settings.json"
    wanted = sampling_settings(args)
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier != wanted:
            differ = {k: (earlier.get(k), v) for k, v in wanted.items() if earlier.get(k) != v}
            raise SystemExit(f"{args.work} holds samples made with other settings (earlier, now: {differ}); "
                             "give another --work")
    else:
        write_atomic(path, json.dumps(wanted, indent=2) + "\n")


def command() -> str:
    """This invocation's command line."""
    return " ".join(["python", *sys.argv])


def cells(values: Sequence[Any]) -> str:
    """Markdown cells: floats to three decimals, None as a dash."""
    return " | ".join("–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)


def write_results(
    args: argparse.Namespace, rows: list[dict], systems: dict[str, dict], by_units: dict[str, dict], infilled: dict
) -> str:
    """Write conditional_NAME.json/.md into --results-dir; return the Markdown."""
    from _machine import describe, machine

    settings = {**sampling_settings(args), "kinds": args.kinds, "stability_n": args.stability_n,
                "infill_n": args.infill_n,
                "budget": args.budget, "work": str(args.work)}
    result = {"machine": machine(), "command": command(), "settings": settings, "kinds": rows,
              "crystal_systems": systems, "formula_outcomes_by_units": by_units, "infill": infilled}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.results_dir / f"conditional_{args.name}.json", json.dumps(result, indent=2) + "\n")
    sg_kinds = list(systems)
    lines = [
        f"# Conditional generation on this machine: {settings['model']}",
        "",
        describe(result["machine"], result["command"]),
        (f"{args.prompts} prompts per kind from the MP-20 test split (seeded, disjoint rows), {args.per_prompt} "
         f"attempt(s) each, T {args.temperature}, top-p {args.top_p}, at most {args.max_atoms} atoms, "
         f"{'grammar and 0.5 A minimum distance' if not args.no_constraint else 'no constraint'}"
         f"{', forced composition' if args.force_composition else ''}"
         f"{', no volume floor' if args.no_volume_floor else ''}, guidance {args.guidance}, formulas stated "
         f"{args.cell_form if args.formula_form == 'cell' else 'reduced (TiZnO3)'}. Rates are over "
         "every attempt that asked (an unreadable attempt misses). Element set: the sample has exactly the "
         "requested elements (the formula, or other counts); missing elements: only some of them (it stopped "
         "early); foreign element: one not requested. Volume/atom ratio: the median, over readable attempts of a "
         "formula prompt, of the sample's volume per atom over the prompted test crystal's. Space group: spglib at "
         "symprec 0.1; its base rate is how often the samples of the prompts that ask for no group (formula, "
         "stability) have the requested group. Stability: a seeded "
         f"{args.stability_n} of the stability-prompt attempts relaxed with CHGNet ('{args.budget}' budget, offline "
         "hull); metastable over those attempts, mean E_hull and its MAE against the requested value over those "
         "that reached the hull."),
        "",
        "| Prompt kind | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
        *(f"| {r['kind']} | " + cells([r["prompts"], r["attempts"], r["readable"], r["formula_accuracy"],
                                       r["element_set_match"], r.get("missing_elements"),
                                       r.get("foreign_element"), r.get("volume_ratio"), r["spacegroup_accuracy"],
                                       r["spacegroup_base_rate"],
                                       r.get("relaxed"), r.get("metastable"), r.get("mean_e_above_hull"),
                                       r.get("e_above_hull_mae")]) + " |" for r in rows),
        "",
        "Space-group accuracy by the crystal system of the requested group (attempts, accuracy, base rate):",
        "",
        "| Crystal system | " + " | ".join(f"{k}: n | acc. | base" for k in sg_kinds) + " |",
        "|---|" + "---:|---:|---:|" * len(sg_kinds),
        *(f"| {name} | " + " | ".join(cells([s.get("n"), s.get("accuracy"), s.get("base_rate")])
                                      for s in (systems[k].get(name, {}) for k in sg_kinds)) + " |"
          for name, _ in CRYSTAL_SYSTEMS),
        "",
        ("How the formula prompts (both kinds) end, by the formula units of the prompted crystal (its counts over "
         "the formula's), and for formulas whose counts are all 1 (shares of the attempts: the formula met, its "
         "elements in other counts, some elements missing, a foreign element, unreadable):"),
        "",
        "| prompted crystal | attempts | " + " | ".join(OUTCOMES) + " |",
        "|---|---:|" + "---:|" * len(OUTCOMES),
        *(f"| {name} | " + cells([g["n"], *(g[o] for o in OUTCOMES)]) + " |" for name, g in by_units.items()),
        "",
        (f"Infill: {infilled['structures']} seeded test structures, one seeded element masked, all elements up to Pu "
         "ranked by the model. Recovery: the masked element ranked first. The best other element is substituted "
         "and checked (structural: 0.5 A, 0.1 A^3; compositional: SMACT); the valid ones (at most "
         f"{args.stability_n}) are relaxed like the samples."),
        "",
        "| structures | recovery | mean rank of original | struct. valid | comp. valid | valid | relaxed | metastable "
        "| metastable rate |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| " + cells([infilled.get(k) for k in ("structures", "recovery", "mean_original_rank", "struct_valid",
                                            "comp_valid", "valid", "relaxed", "metastable", "metastable_rate")])
        + " |",
    ]
    markdown = "\n".join(lines) + "\n"
    write_atomic(args.results_dir / f"conditional_{args.name}.md", markdown)
    return markdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: the shipped model)")
    parser.add_argument("--prompts", type=int, default=300, help="test rows (prompts) per prompt kind")
    parser.add_argument("--per-prompt", type=int, default=1, help="sampling attempts per prompt")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-atoms", type=int, default=20, help="largest cell sampled (MP-20's largest is 20)")
    parser.add_argument("--batch-size", type=int, help="default: the sampler's automatic batch")
    parser.add_argument("--force-composition", action="store_true", help="formula prompts: the grammar keeps the "
                        "requested composition")
    parser.add_argument("--no-constraint", action="store_true", help="sample without the grammar")
    parser.add_argument("--no-volume-floor", action="store_true", help="a cell-formula model's lattice may be smaller "
                        "than MP-20 gives the stated atoms (crystext sample --no-volume-floor)")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                        help="prompt kinds to run (default: all; the base rate is then over those that ask for no "
                        "space group)")
    parser.add_argument("--formula-form", choices=("model", "reduced", "cell"), default="model",
                        help="state formulas reduced (TiZnO3) or as the whole cell (Ti2Zn2O6); default: as the model "
                        "was trained to read them")
    parser.add_argument("--stability-n", type=int, default=50, help="stability-prompt attempts relaxed; also the "
                        "most infill substitutions relaxed")
    parser.add_argument("--infill-n", type=int, default=50, help="test structures for the infill task")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="steps",
                        help="relaxation budget: steps (crystext's default) or paper (30 s per structure)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "conditional")
    parser.add_argument("--name", default="default")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from crystext.sample import Sampler
    from crystext.stability import default_reference

    sampler = Sampler.from_pretrained(args.model)
    if args.formula_form == "model":
        args.formula_form = "cell" if sampler.cell_formula else "reduced"
    forms = sampler.text_format  # which cell a stated formula counts: the one the model writes for the prompt
    args.cell_form = ("as the conventional cell (rock salt: Na4Cl4)" if forms.asymmetric_unit
                      else "as the whole cell (Ti2Zn2O6), the conventional cell where a space group is stated too"
                      if forms.asymmetric_when_grouped else "as the whole cell (Ti2Zn2O6)")
    check_work(args)
    test = pd.read_csv(TEST_CSV, keep_default_na=False)
    prompts = draw_prompts(test, args.prompts)
    if args.formula_form == "cell":
        prompts = stated_as_cells(prompts, test, sampler.text_format)
    # The reference set evaluation needs: the prompted rows, so that only they are fingerprinted.
    reference = args.work / "reference.csv"
    write_atomic(reference, test.iloc[sorted(p.row for ps in prompts.values() for p in ps)].to_csv(index=False))
    hull = default_reference(SHARED)
    evaluations = {}
    kinds = {kind: stated for kind, stated in KINDS.items() if kind in args.kinds}
    for seed, kind in enumerate(KINDS):  # a kind's seed is its place in KINDS, whichever kinds are run
        if kind in kinds:
            samples = sample_kind(sampler, prompts[kind], seed, args.work / kind, args)
            evaluations[kind] = evaluated(samples, reference, args.work / kind / "eval")
    background = [int(g) for kind, stated in kinds.items() if "spacegroup" not in stated
                  for g in evaluations[kind][1]["spacegroup"]]
    rows = {kind: kind_row(kind, len(prompts[kind]), *evaluations[kind], background) for kind in kinds}
    for kind, stated in kinds.items():
        if "formula" in stated:
            rows[kind]["volume_ratio"] = volume_ratio(evaluations[kind][1], prompts[kind], test, args.per_prompt)
    for kind, stated in kinds.items():
        if "e_above_hull" in stated and args.stability_n:  # --stability-n 0: no relaxations
            rows[kind].update(stability_metrics(args.work / kind, reference, hull, args))
    systems = {kind: system_table(evaluations[kind][1], background) for kind, stated in kinds.items()
               if "spacegroup" in stated}
    formula_kinds = [kind for kind, stated in kinds.items() if "formula" in stated]
    by_units = outcomes_by_units([evaluations[k][1] for k in formula_kinds], [prompts[k] for k in formula_kinds],
                                 test, args.per_prompt)
    infilled = infill(sampler, test, args.work / "infill", hull, args) if args.infill_n else {"structures": 0}
    print(write_results(args, list(rows.values()), systems, by_units, infilled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
