"""The `crystext` command line: a thin layer over the library, one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from crystext import __version__
from crystext.data import DATASETS, dataset_dir, fetch, read_structures
from crystext.errors import CrystextError
from crystext.evaluate import cli as evaluate_cli
from crystext.model import SCRATCH_PRESETS, LoraSettings, ModelError, ModelSpec
from crystext.prompts import Attributes
from crystext.sample import (
    SampleConfig,
    Sampler,
    SampleWriter,
    read_conditions,
    similar_elements,
    substitution_row,
    write_structures,
)
from crystext.stability import cli as stability_cli
from crystext.textformat import CrystalText, CrystalTextError, FormatOptions, augment
from crystext.train import TrainConfig, train

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]
#: TrainConfig fields that the CLI exposes one-to-one as numeric options.
_TRAIN_NUMBERS = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "warmup_steps", "weight_decay",
                  "grad_clip", "infill_fraction", "eval_every", "eval_examples", "save_every", "max_length",
                  "max_atoms", "seed")


class CliError(CrystextError):
    """A command-line problem the user can fix; printed as one line without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except CrystextError as err:
        print(f"crystext {args.command}: error: {err}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystext",
        description="Generate inorganic crystals with language models that read and write them as text.",
    )
    parser.add_argument("--version", action="version", version=f"crystext {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (help_text, arguments, handler) in SUBCOMMANDS.items():
        _command(commands, name, handler, help_text, arguments)
    return parser


def _encode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="a .cif, a CSV with a cif column, a folder of .cif, or .extxyz")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: standard output)")
    parser.add_argument("--length-decimals", type=int, default=FormatOptions.length_decimals)
    parser.add_argument("--angle-decimals", type=int, default=FormatOptions.angle_decimals)
    parser.add_argument("--coord-decimals", type=int, default=FormatOptions.coord_decimals)
    parser.add_argument("--translate", action="store_true", help="shift all sites by one random vector")
    parser.add_argument("--permute", action="store_true", help="shuffle the order of sites")
    parser.add_argument("--seed", type=int, default=0, help="seed for --translate/--permute")
    parser.add_argument("--jsonl", action="store_true", help="JSON lines {id, text} even for one structure")


def _decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a text file with one crystal, a .jsonl of {id, text}, or - for stdin")
    parser.add_argument("-o", "--output", type=Path, help="CIF file for one crystal, folder for many")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="scratch-small",
                        help=f"{', '.join(SCRATCH_PRESETS)}, a hub id or a local dir")
    parser.add_argument("--data-dir", type=Path, required=True, help="dataset folder in the CDVAE layout")
    parser.add_argument("--splits", default="train,val", help="comma-separated splits to train on")
    parser.add_argument("--holdout", type=float, default=0.05, help="fraction held out for the validation loss")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    defaults = TrainConfig(out=Path(), data_dir=Path())
    for name in _TRAIN_NUMBERS:
        value = getattr(defaults, name)
        kind = float if isinstance(value, float) else int
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value, help=f"default {value}")
    parser.add_argument("--no-translate", action="store_true", help="keep the written coordinates (no random shift)")
    parser.add_argument("--permute", action="store_true", help="also shuffle the order of atoms")
    parser.add_argument("--full-sequence-loss", action="store_true", help="train on prompt tokens too")
    parser.add_argument("--lora-rank", type=int, default=LoraSettings.rank)
    parser.add_argument("--lora-alpha", type=int, default=LoraSettings.alpha)
    parser.add_argument("--lora-dropout", type=float, default=LoraSettings.dropout)
    parser.add_argument("--lora-targets", default=",".join(LoraSettings.target_modules))
    parser.add_argument("--no-lora", action="store_true", help="fine-tune all weights of a pretrained model")
    parser.add_argument("--quantization", choices=["4bit", "8bit"], help="load the base model quantized (CUDA only)")


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path,
                        help="a model directory written by `crystext train` (default: the model shipped with crystext)")
    parser.add_argument("-n", type=int, default=100, help="parseable structures wanted (infill: answers kept)")
    parser.add_argument("-o", "--out", type=Path, default=Path("samples.csv"), help="samples CSV (one row per attempt)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run up to -n")
    parser.add_argument("--batch-size", type=int,
                        help="sequences decoded together (default: as many as fit in memory, at most 256)")
    parser.add_argument("--temperature", type=float, default=SampleConfig.temperature)
    parser.add_argument("--top-p", type=float, default=SampleConfig.top_p)
    parser.add_argument("--seed", type=int, default=SampleConfig.seed)
    parser.add_argument("--max-atoms", type=int, default=SampleConfig.max_atoms)
    parser.add_argument("--min-distance", type=float, default=SampleConfig.min_distance,
                        help="constrained: keep each new atom this many Angstrom from the earlier ones "
                        f"(default {SampleConfig.min_distance}, the validity cut-off; 0: off)")
    parser.add_argument("--max-new-tokens", type=int, help="default: enough for --max-atoms atoms")
    parser.add_argument("--max-attempts", type=int, help="give up after this many attempts (default 10 n)")
    parser.add_argument("--no-constraint", action="store_true", help="sample without the grammar constraint")
    conditions = parser.add_argument_group("conditions (text-conditional generation)")
    conditions.add_argument("--formula", help="e.g. LiFePO4")
    conditions.add_argument("--spacegroup", type=int, help="space group number, 1-230")
    conditions.add_argument("--e-above-hull", type=float, help="eV/atom")
    conditions.add_argument("--formation-energy", type=float, help="eV/atom")
    conditions.add_argument("--band-gap", type=float, help="eV")
    conditions.add_argument("--conditions", type=Path, help="CSV of conditions, one per row (dataset columns)")
    conditions.add_argument("--force-composition", action="store_true", help="cells hold whole formula units only")
    infill = parser.add_argument_group("infill (element substitution)")
    infill.add_argument("--infill", type=Path, help="a structure file (CIF, or CSV/extxyz: first record)")
    infill.add_argument("--mask-element", help="the element to replace (default: a random one of the structure)")
    infill.add_argument("--similar-only", action="store_true", help="only elements of similar ionic radius and charge")
    outputs = parser.add_argument_group("extra outputs")
    outputs.add_argument("--cif-dir", type=Path, help="also write each parseable sample as a .cif file here")
    outputs.add_argument("--extxyz", type=Path, help="also write the parseable samples into one extxyz file")


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="data commands", metavar="ACTION")
    _command(actions, "list", _data_list, "the benchmark sets crystext knows", lambda _: None)
    _command(actions, "fetch", _data_fetch, "download a benchmark set into the cache", _data_fetch_arguments)


def _data_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", type=Path, help="use this local copy instead of downloading")


def _command(
    commands: argparse._SubParsersAction, name: str, handler: Handler | None, help_text: str, arguments: Arguments
) -> None:
    """Register one subcommand: its help, its arguments, and the handler that runs it (None: it has actions)."""
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(command=name)
    if handler is not None:
        sub.set_defaults(handler=handler)
    arguments(sub)


def _open_output(path: Path | None) -> TextIO:
    return open(path, "w") if path else sys.stdout


def _encode(args: argparse.Namespace) -> int:
    options = FormatOptions(args.length_decimals, args.angle_decimals, args.coord_decimals)
    dataset = read_structures(args.input, progress=args.output is not None)
    for rid, reason in dataset.skipped:
        print(f"crystext encode: skipped {rid}: {reason}", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    as_jsonl = args.jsonl or len(dataset) != 1
    written = 0
    out = _open_output(args.output)
    try:
        for record in dataset:
            try:
                crystal = CrystalText.from_structure(record.structure)
            except CrystalTextError as err:
                print(f"crystext encode: skipped {record.id}: {err}", file=sys.stderr)
                continue
            text = augment(crystal, rng, translate=args.translate, permute=args.permute).to_str(options)
            out.write(json.dumps({"id": record.id, "text": text}) + "\n" if as_jsonl else text + "\n")
            written += 1
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {written} crystal texts to {args.output}", file=sys.stderr)
    return 0 if written else 1


def _read_texts(source: str) -> list[tuple[str, str]]:
    """(id, text) pairs from a plain text file (one crystal) or a JSON-lines file of {id, text}."""
    if source == "-":
        content, name = sys.stdin.read(), "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            raise CliError(f"{path}: no such file")
        content, name = path.read_text(), path.stem
    if not source.endswith(".jsonl"):
        return [(name, content)]
    pairs = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pairs.append((str(item.get("id", f"line{number}")), str(item["text"])))
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise CliError(f"{source} line {number}: expected a JSON object with a 'text' field") from None
    return pairs


def _decode(args: argparse.Namespace) -> int:
    pairs = _read_texts(args.input)
    if len(pairs) == 1 and (args.output is None or args.output.suffix == ".cif"):
        rid, text = pairs[0]
        try:
            cif = CrystalText.from_str(text).to_structure().to(fmt="cif")
        except CrystalTextError as err:
            raise CliError(f"{rid}: {err}") from None
        with _open_output(args.output) as out:
            out.write(cif)
        return 0
    if args.output is None:
        raise CliError("several crystals need -o FOLDER for their CIF files")
    args.output.mkdir(parents=True, exist_ok=True)
    good = 0
    for rid, text in pairs:
        try:
            structure = CrystalText.from_str(text).to_structure()
        except CrystalTextError as err:
            print(f"crystext decode: {rid}: {err}", file=sys.stderr)
            continue
        structure.to(filename=str(args.output / f"{rid}.cif"))
        good += 1
    print(f"decoded {good} of {len(pairs)} crystals into {args.output}", file=sys.stderr)
    return 0 if good else 1


def _train(args: argparse.Namespace) -> int:
    lora = LoraSettings(args.lora_rank, args.lora_alpha, args.lora_dropout, tuple(args.lora_targets.split(",")))
    config = TrainConfig(
        out=args.out,
        data_dir=args.data_dir,
        model=ModelSpec(args.model, None if args.no_lora else lora, args.quantization),
        splits=tuple(args.splits.split(",")),
        holdout=args.holdout,
        translate=not args.no_translate,
        permute=args.permute,
        completion_only=not args.full_sequence_loss,
        **{name: getattr(args, name) for name in _TRAIN_NUMBERS},
    )
    try:
        out = train(config, resume=args.resume)
    except (FileExistsError, FileNotFoundError, ValueError, ModelError) as err:
        raise CliError(str(err)) from None
    print(f"model written to {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    config = SampleConfig(
        n=args.n, batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p,
        constrained=not args.no_constraint, force_composition=args.force_composition, max_atoms=args.max_atoms,
        min_distance=args.min_distance or None,
        max_new_tokens=args.max_new_tokens, max_attempts=args.max_attempts, seed=args.seed,
    )
    try:
        sampler = Sampler.from_pretrained(args.model)
    except (OSError, ModelError) as err:
        raise CliError(f"cannot load model {args.model or '(default)'}: {str(err).splitlines()[0]}") from None
    if args.infill:
        return _infill(args, sampler)
    given = Attributes(args.formula, args.spacegroup, args.e_above_hull, args.formation_energy, args.band_gap)
    try:
        conditions = read_conditions(args.conditions) if args.conditions else ([given] if given.to_dict() else None)
        summary = sampler.sample(config, args.out, conditions, resume=args.resume)
    except (FileExistsError, ValueError) as err:
        raise CliError(str(err)) from None
    print(
        f"{summary.valid} parseable structures from {summary.attempts} attempts in {args.out} "
        f"({summary.valid_per_second:.2f} per second this run)",
        file=sys.stderr,
    )
    if args.cif_dir or args.extxyz:
        write_structures(args.out, args.cif_dir, args.extxyz)
    return 0 if summary.valid >= config.n else 1


def _infill(args: argparse.Namespace, sampler: Sampler) -> int:
    dataset = read_structures(args.infill)
    if not dataset.records:
        raise CliError(f"{args.infill}: no readable structure ({dataset.summary()})")
    record = dataset.records[0]
    elements = sorted({site.specie.symbol for site in record.structure})
    element = args.mask_element or str(np.random.default_rng(args.seed).choice(elements))
    if element not in elements:
        raise CliError(f"{record.id} has no {element} (elements: {' '.join(elements)})")
    candidates = similar_elements(element) if args.similar_only else None
    if candidates is not None and not candidates:
        raise CliError(f"no elements of similar charge and ionic radius are known for {element}")
    ranked = sampler.infill(record.structure, element, candidates)[: args.n]
    rows = [
        substitution_row(f"{record.id}-{element}-{s.element}", record.id, element, s) for s in ranked
    ]
    SampleWriter(args.out, resume=False).append(rows)
    for s in ranked:
        print(f"{element} -> {s.element:3s} log p = {s.log_prob:8.3f}  {s.structure.composition.reduced_formula}")
    return 0


def _data_list(args: argparse.Namespace) -> int:
    for source in DATASETS.values():
        print(f"{source.name:10s} {source.description}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    folder = dataset_dir(args.name, args.data_dir) if args.data_dir else fetch(args.name)
    print(folder)
    return 0


#: Every subcommand, in pipeline order: (help, arguments, handler); the handler is None for `data` (its actions).
SUBCOMMANDS: dict[str, tuple[str, Arguments, Handler | None]] = {
    "encode": ("write structures (CIF, CSV, folder, extxyz) as crystal text", _encode_arguments, _encode),
    "decode": ("read crystal text back into CIF", _decode_arguments, _decode),
    "train": ("fine-tune a causal LM (LoRA) or train a small one from scratch", _train_arguments, _train),
    "sample": ("sample crystals: unconditional, conditional or infill", _sample_arguments, _sample),
    "evaluate": (evaluate_cli.HELP, evaluate_cli.add_arguments, evaluate_cli.run),
    "stability": (stability_cli.HELP, stability_cli.add_arguments, stability_cli.run),
    "data": ("benchmark datasets: list them, fetch one", _data_arguments, None),
}


if __name__ == "__main__":
    raise SystemExit(main())
