"""The `crystext` command line: a thin layer over the library, one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np

from crystext import __version__
from crystext.data import DATASETS, REFERENCES, dataset_dir, fetch, read_structures
from crystext.errors import CrystextError, flag_message, option_flags
from crystext.evaluate import cli as evaluate_cli
from crystext.files import CsvLog
from crystext.grammar import Grammar
from crystext.model import SCRATCH_PRESETS, LoraSettings, ModelError, ModelSpec, model_info
from crystext.prompts import Attributes, formula_problem, plain_formula
from crystext.sample import (
    COLUMNS,
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
from crystext.train import TrainConfig, earlier_recipe, train
from crystext.tune import cli as tune_cli

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]
#: TrainConfig fields that the CLI exposes one-to-one as numeric options.
_TRAIN_NUMBERS = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "warmup_steps", "weight_decay",
                  "grad_clip", "infill_fraction", "eval_every", "eval_examples", "save_every", "max_length",
                  "max_atoms", "seed")
#: Settings fields and the flags that set them, to name the flag when a setting is refused.
_TRAIN_FLAGS = option_flags((*_TRAIN_NUMBERS, "holdout", "attribute_rate", "unconditional_rate", "relabel_rate",
                             "element_weight"))
_LORA_FLAGS = option_flags(("rank", "alpha", "dropout", "target_modules"), rank="--lora-rank", alpha="--lora-alpha",
                           dropout="--lora-dropout", target_modules="--lora-targets")
_FORMAT_FLAGS = option_flags(("length_decimals", "angle_decimals", "coord_decimals", "site_counts", "joined_counts",
                               "asymmetric_unit", "asymmetric_when_grouped"))
_SAMPLE_FLAGS = option_flags(("n", "batch_size", "temperature", "top_p", "max_atoms", "min_distance", "max_new_tokens",
                              "max_attempts", "seed", "guidance_scale"), n="-n")
#: Longest file name (without .cif) `decode` gives a crystal; longer ids are cut.
MAX_FILE_STEM = 100
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._+=@-]+")
Settings = TypeVar("Settings")


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
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"crystext {args.command}: error: {message}", file=sys.stderr)
        return 1


def _settings(factory: Callable[..., Settings], flags: Mapping[str, str], **values: Any) -> Settings:
    """`factory(**values)`, a settings object; a setting it refuses (ValueError) becomes a CliError naming the flag."""
    try:
        return factory(**values)
    except ValueError as err:
        raise CliError(flag_message(err, flags)) from None


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
    parser.add_argument("--site-counts", action="store_true",
                        help="element lines count their atoms down, 'Fe 2', 'Fe 1' (sites grouped by element)")
    parser.add_argument("--joined-counts", action="store_true",
                        help="site counts written against the symbol, 'Fe2', 'Fe1' (implies --site-counts)")
    parser.add_argument("--asymmetric-unit", action="store_true",
                        help="a first line with the space group, its conventional cell, one site per orbit (with "
                        "--site-counts each element line counts that element's atoms still to write, orbit by orbit)")
    parser.add_argument("--translate", action="store_true", help="shift all sites by one random vector")
    parser.add_argument("--permute", action="store_true", help="shuffle the order of sites")
    parser.add_argument("--seed", type=int, default=0, help="seed for --translate/--permute")
    parser.add_argument("--jsonl", action="store_true", help="JSON lines {id, text} even for one structure")
    parser.add_argument("--structure-column", metavar="NAME",
                        help="a CSV input's structure column (default: cif, structure, cif_string)")


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
    parser.add_argument("--attribute-rate", type=float,
                        help="state each known attribute in a generation prompt with this probability "
                        "(default: the paper's scheme, every number of attributes equally likely)")
    parser.add_argument("--unconditional-rate", type=float, default=TrainConfig.unconditional_rate,
                        help="share of generation prompts that state no attribute (conditioning dropout)")
    parser.add_argument("--relabel-rate", type=float, default=TrainConfig.relabel_rate,
                        help="share of the other generation prompts whose crystal has its elements swapped for "
                        "random ones, stating the new formula (teaches copying a formula from the prompt)")
    parser.add_argument("--element-weight", type=float, default=TrainConfig.element_weight,
                        help="loss weight of the tokens where a generation example's composition is decided (each "
                        "element, the end, and the line break before an element), every other token weighing 1 "
                        "(copying a formula is decided there; default 1)")
    parser.add_argument("--translate", action=argparse.BooleanOptionalAction,
                        help="shift each crystal's sites by one random vector, or keep the written coordinates "
                        "(default: translate, or as the run that wrote --model did)")
    parser.add_argument("--permute", action="store_true", help="also shuffle the order of atoms")
    parser.add_argument("--site-counts", action=argparse.BooleanOptionalAction,
                        help="write each element line with the atoms of that element still to come, 'Fe 2', 'Fe 1' "
                        "(sites grouped by element), so the model states each element's count as it starts it "
                        "(default: off, or as the run that wrote --model did)")
    parser.add_argument("--joined-counts", action=argparse.BooleanOptionalAction,
                        help="write each site count against its symbol, 'Fe2', as a formula writes it, so a count is "
                        "copied from the prompt's formula like its element (implies --site-counts; default: off, or "
                        "as the run that wrote --model did)")
    parser.add_argument("--asymmetric-unit", action=argparse.BooleanOptionalAction,
                        help="write each crystal as its space group (a first line), its conventional cell and one site "
                        "per orbit, so that a model asked for a group writes it by construction; no translation; site "
                        "counts count each element's atoms in the conventional cell down orbit by orbit, and a cell "
                        "formula is the conventional cell's (default: off, or as the run that wrote --model did)")
    parser.add_argument("--asymmetric-when-grouped", action=argparse.BooleanOptionalAction,
                        help="one model, both forms: a crystal whose prompt states a space group is written as its "
                        "asymmetric unit (as --asymmetric-unit writes it), any other as its whole cell, so that "
                        "formulas and unprompted crystals keep the whole-cell form (replaces a recipe's "
                        "--asymmetric-unit; default: off, or as the run that wrote --model did)")
    parser.add_argument("--cell-formula", action=argparse.BooleanOptionalAction,
                        help="prompts state the formula of the whole cell (Ti2Zn2O6), so the model copies each count; "
                        "a model trained so reads --formula NaCl as a 2-atom cell (default: the reduced formula, or as "
                        "the run that wrote --model did)")
    parser.add_argument("--full-sequence-loss", action="store_true", help="train on prompt tokens too")
    parser.add_argument("--lora-rank", type=int, default=LoraSettings.rank)
    parser.add_argument("--lora-alpha", type=int, default=LoraSettings.alpha)
    parser.add_argument("--lora-dropout", type=float, default=LoraSettings.dropout)
    parser.add_argument("--lora-targets", default=",".join(LoraSettings.target_modules))
    parser.add_argument("--lora", action=argparse.BooleanOptionalAction,
                        help="train LoRA adapters, or all weights, of a pretrained model (default: LoRA, or as the run "
                        "that wrote --model did; a LoRA run continued goes on training its own adapters, or with "
                        "--no-lora every weight with them merged in)")
    parser.add_argument("--quantization", choices=["4bit", "8bit"], help="load the base model quantized (CUDA only)")


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path,
                        help="a model directory written by `crystext train` (default: the model shipped with crystext)")
    parser.add_argument("-n", type=int, default=100,
                        help="valid structures wanted, whose CIF reads back (infill: answers kept)")
    parser.add_argument("-o", "--out", type=Path, default=Path("samples.csv"), help="samples CSV (one row per attempt)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run up to -n")
    parser.add_argument("--batch-size", type=int,
                        help="sequences decoded together (default: as many as fit in memory, at most 512)")
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
    conditions.add_argument("--formula", type=_formula, help="e.g. LiFePO4")
    conditions.add_argument("--spacegroup", type=_spacegroup, help="space group number, 1-230")
    conditions.add_argument("--e-above-hull", type=_finite, help="eV/atom")
    conditions.add_argument("--formation-energy", type=_finite, help="eV/atom")
    conditions.add_argument("--band-gap", type=_finite, help="eV")
    conditions.add_argument("--conditions", type=Path, help="CSV of conditions, one per row (dataset columns)")
    conditions.add_argument("--guidance-scale", type=float, default=SampleConfig.guidance_scale,
                            help="classifier-free guidance: >1 follows the conditions more closely at twice the "
                            "compute per token (default 1: none)")
    conditions.add_argument("--force-composition", action="store_true",
                            help="cells hold whole formula units only, as many as the written cell holds at "
                            "MP-20's volume for those elements")
    conditions.add_argument("--no-volume-floor", action="store_true",
                            help="a model trained with --cell-formula may write a cell smaller than MP-20 gives the "
                            "stated atoms (default: the grammar keeps the lattice at least that large)")
    conditions.add_argument("--only-matching", action="store_true",
                            help="keep only crystals with the stated formula and space group (pymatgen's reduced "
                            "formula, spglib at symprec 0.1); the others stay in -o as rows saying what they wrote. "
                            "Energies are not checked. Raise --max-attempts for a prompt the model rarely meets")
    infill = parser.add_argument_group("infill (element substitution)")
    infill.add_argument("--infill", type=Path, help="a structure file (CIF, or CSV/extxyz: first record); "
                        "into an existing -o only with --resume (answers already there are not repeated)")
    infill.add_argument("--mask-element", help="the element to replace (default: a random one of the structure)")
    infill.add_argument("--similar-only", action="store_true", help="only elements of similar ionic radius and charge")
    outputs = parser.add_argument_group("extra outputs")
    outputs.add_argument("--cif-dir", type=Path, help="also write each parseable sample as a .cif file here")
    outputs.add_argument("--extxyz", type=Path, help="also write the parseable samples into one extxyz file")


def _formula(text: str) -> str:
    problem = formula_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _spacegroup(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a space group number (1-230), got {text!r}") from None
    problem = Attributes(spacegroup=number).problem()
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return number


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(title="data commands", metavar="ACTION")
    _command(actions, "list", _data_list, "the benchmark sets and hull references crystext knows", lambda _: None)
    _command(actions, "fetch", _data_fetch, "download a benchmark set or hull reference into the cache",
             _data_fetch_arguments)


def _data_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted([*DATASETS, *REFERENCES]))
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


def _check_output_file(path: Path | None, flag: str = "-o") -> None:
    """Refuse an output file that is a folder, before any work is done."""
    if path is not None and path.is_dir():
        raise CliError(f"{flag} {path} is a folder: give the name of a file to write")


def _open_output(path: Path | None) -> TextIO:
    """The output file (its missing folders made), or standard output for None."""
    if path is None:
        return sys.stdout
    _check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8")
    except OSError as err:
        raise CliError(f"cannot write {path}: {err.strerror or err}") from None


def _shown(rid: str, limit: int = 60) -> str:
    """An id as messages show it: as it is if short and plain, else quoted and cut (no line breaks in a message)."""
    if rid and rid.isprintable() and rid.strip() == rid and len(rid) <= limit:
        return rid
    return repr(rid[:limit]) + ("..." if len(rid) > limit else "")


def _encode(args: argparse.Namespace) -> int:
    options = _settings(FormatOptions, _FORMAT_FLAGS, length_decimals=args.length_decimals,
                        angle_decimals=args.angle_decimals, coord_decimals=args.coord_decimals,
                        site_counts=args.site_counts or args.joined_counts, joined_counts=args.joined_counts,
                        asymmetric_unit=args.asymmetric_unit)
    if args.asymmetric_unit and args.translate:
        raise CliError("--translate cannot go with --asymmetric-unit: its origin is its space group's")
    _check_output_file(args.output)
    dataset = read_structures(args.input, structure_column=args.structure_column, progress=args.output is not None)
    for rid, reason in dataset.skipped:
        print(f"crystext encode: skipped {_shown(rid)}: {reason}", file=sys.stderr)
    total = len(dataset) + len(dataset.skipped)
    if not len(dataset):
        held = f"none of its {total} records is a readable structure" if total else "it holds no structures"
        raise CliError(f"{args.input}: nothing to encode: {held}")
    rng = np.random.default_rng(args.seed)
    as_jsonl = args.jsonl or total != 1  # one record per input record, whether or not some are skipped
    written = 0
    out = _open_output(args.output)
    try:
        for record in dataset:
            try:
                crystal = CrystalText.from_structure(record.structure, options.asymmetric_unit)
            except CrystalTextError as err:
                print(f"crystext encode: skipped {_shown(record.id)}: {err}", file=sys.stderr)
                continue
            text = augment(crystal, rng, translate=args.translate, permute=args.permute).to_str(options)
            out.write(json.dumps({"id": record.id, "text": text}) + "\n" if as_jsonl else text + "\n")
            written += 1
    finally:
        if args.output:
            out.close()
    skipped = f", skipped {total - written} of {total}" if written < total else ""
    if args.output:
        print(f"wrote {written} crystal texts to {args.output}{skipped}", file=sys.stderr)
    elif skipped:
        print(f"crystext encode: wrote {written} crystal texts{skipped}", file=sys.stderr)
    if not written and args.output:
        args.output.unlink(missing_ok=True)  # the empty file this run opened
    return 0 if written == total else 1


def _read_content(source: str) -> tuple[str, str]:
    """The text of a file (or of standard input for -) and its name; a file that is not UTF-8 text is refused."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", None)
        data, name, label = (stream.read() if stream else sys.stdin.read()), "stdin", "standard input"
    else:
        path = Path(source)
        if not path.is_file():
            raise CliError(f"{path}: no such file")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CliError(f"cannot read {path}: {err.strerror or err}") from None
        name, label = path.stem, str(path)
    if isinstance(data, str):
        return data, name
    try:
        return data.decode("utf-8-sig"), name
    except UnicodeDecodeError as err:
        hint = ", it looks like UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise CliError(
            f"{label}: not UTF-8 text ({err.reason} at byte {err.start}{hint}); crystal text files are UTF-8"
        ) from None


def _read_texts(source: str) -> tuple[list[tuple[str, str]], int]:
    """(id, text) pairs from a plain text file (one crystal) or a JSON-lines file of {id, text}, and how many
    lines of the latter were not such an object (each reported and skipped)."""
    content, name = _read_content(source)
    if not source.endswith(".jsonl"):
        return [(name, content)], 0
    pairs, bad = [], 0
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            text, rid = item["text"], item.get("id")
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            text = rid = None
        if not isinstance(text, str):
            print(f"crystext decode: {source} line {number}: expected a JSON object with a 'text' string, skipped",
                  file=sys.stderr)
            bad += 1
            continue
        pairs.append((f"line{number}" if rid is None or rid == "" else str(rid), text))
    return pairs, bad


def _file_stems(ids: Sequence[str]) -> list[tuple[str, str]]:
    """A file name (without .cif) per id, safe and unique, and why it is not the id ("" if it is).

    Characters other than letters, digits and ._+=@- become _, leading dots go (no hidden files, no ..), long
    ids are cut, and a repeated name gets -2, -3, ... (compared without case, for case-insensitive file systems).
    """
    used: set[str] = set()
    stems = []
    for rid in ids:
        base = _UNSAFE_FILE_CHARS.sub("_", rid).lstrip(".")[:MAX_FILE_STEM] or "crystal"
        stem, copy = base, 1
        while stem.casefold() in used:
            copy += 1
            stem = f"{base}-{copy}"
        used.add(stem.casefold())
        why = "" if stem == rid else "the id is not a safe file name" if base != rid else "the id repeats"
        stems.append((stem, why))
    return stems


def _decode(args: argparse.Namespace) -> int:
    pairs, bad = _read_texts(args.input)
    total = len(pairs) + bad
    if not pairs:
        raise CliError(f"{args.input}: no crystal texts in it" + (f" ({bad} lines skipped)" if bad else ""))
    if total == 1 and pairs and (args.output is None or args.output.suffix == ".cif"):
        rid, text = pairs[0]
        try:
            cif = CrystalText.from_str(text).to_structure().to(fmt="cif")
        except CrystalTextError as err:
            raise CliError(f"{_shown(rid)}: {err}") from None
        if args.output is None:
            sys.stdout.write(cif)
        else:
            with _open_output(args.output) as out:
                out.write(cif)
        return 0
    if args.output is None:
        raise CliError("several crystals need -o FOLDER for their CIF files")
    if args.output.suffix == ".cif" or (args.output.exists() and not args.output.is_dir()):
        raise CliError(f"-o {args.output} names a file, but {args.input} holds {total} crystal texts: give a folder")
    args.output.mkdir(parents=True, exist_ok=True)
    good = renamed = 0
    for (rid, text), (stem, why) in zip(pairs, _file_stems([rid for rid, _ in pairs])):
        try:
            structure = CrystalText.from_str(text).to_structure()
        except CrystalTextError as err:
            print(f"crystext decode: {_shown(rid)}: {err}", file=sys.stderr)
            continue
        if why:
            print(f"crystext decode: {_shown(rid)}: written as {stem}.cif ({why})", file=sys.stderr)
            renamed += 1
        try:
            structure.to(filename=str(args.output / f"{stem}.cif"))
        except OSError as err:
            print(f"crystext decode: {_shown(rid)}: cannot write {stem}.cif: {err.strerror or err}", file=sys.stderr)
            continue
        good += 1
    note = f" ({renamed} under another file name, see above)" if renamed else ""
    print(f"decoded {good} of {total} crystals into {args.output}{note}", file=sys.stderr)
    return 0 if good == total else 1


def _train(args: argparse.Namespace) -> int:
    lora = _settings(LoraSettings, _LORA_FLAGS, rank=args.lora_rank, alpha=args.lora_alpha,
                     dropout=args.lora_dropout, target_modules=tuple(args.lora_targets.split(",")))
    earlier = earlier_recipe(args.model)
    use_lora = earlier.get("lora", True) if args.lora is None else args.lora
    if use_lora and earlier.get("lora"):  # a LoRA run goes on training its own adapters (`load_pretrained`)
        lora = LoraSettings(**model_info(args.model)["model"]["lora"])
    grouped = (earlier.get("asymmetric_when_grouped", False) and not args.asymmetric_unit
               if args.asymmetric_when_grouped is None else args.asymmetric_when_grouped)  # one replaces the other
    asymmetric = (earlier.get("asymmetric_unit", False) and not grouped if args.asymmetric_unit is None
                  else args.asymmetric_unit)
    if asymmetric:  # an asymmetric unit's origin is its group's: a recipe's translation does not carry over to one
        earlier = {**earlier, "translate": False}
    translate = earlier.get("translate", True) if args.translate is None else args.translate
    if args.joined_counts and args.site_counts is False:
        raise CliError("--joined-counts is a way of writing site counts: it cannot go with --no-site-counts")
    site_flag = True if args.joined_counts else args.site_counts  # joined counts are site counts
    site_counts = earlier.get("site_counts", False) if site_flag is None else site_flag
    joined_counts = site_counts and (earlier.get("joined_counts", False) if args.joined_counts is None
                                     else args.joined_counts)
    cell_formula = earlier.get("cell_formula", False) if args.cell_formula is None else args.cell_formula
    unset = {"lora": args.lora, "translate": args.translate, "site_counts": site_flag,
             "joined_counts": args.joined_counts, "cell_formula": args.cell_formula,
             "asymmetric_unit": args.asymmetric_unit, "asymmetric_when_grouped": args.asymmetric_when_grouped}
    # Said when a flag left out takes the earlier run's setting where a fresh run would take another (LoRA and
    # translation on, every text form off).
    fresh = {name: name in ("lora", "translate") for name in unset}
    if earlier and any(given is None and earlier[name] != fresh[name] for name, given in unset.items()):
        extras = [(name, flag) for on, name, flag in ((site_counts, "site counts", "site-counts"),
                                                      (joined_counts, "joined counts", "joined-counts"),
                                                      (cell_formula, "cell formulas", "cell-formula"),
                                                      (asymmetric, "asymmetric units", "asymmetric-unit"),
                                                      (grouped, "asymmetric units for stated space groups",
                                                       "asymmetric-when-grouped")) if on]
        print(f"continuing the recipe of {args.model}: {'LoRA adapters' if use_lora else 'all weights'}, coordinates "
              f"{'translated' if translate else 'as written'}{''.join(f', {name}' for name, _ in extras)} "
              f"(--[no-]lora, --[no-]translate{''.join(f', --[no-]{flag}' for _, flag in extras)} to change)",
              file=sys.stderr)
    text_format = _settings(FormatOptions, _FORMAT_FLAGS, site_counts=site_counts, joined_counts=joined_counts,
                            asymmetric_unit=asymmetric, asymmetric_when_grouped=grouped)
    config = _settings(
        TrainConfig,
        _TRAIN_FLAGS,
        out=args.out,
        data_dir=args.data_dir,
        model=ModelSpec(args.model, lora if use_lora else None, args.quantization),
        splits=tuple(args.splits.split(",")),
        holdout=args.holdout,
        translate=translate,
        permute=args.permute,
        completion_only=not args.full_sequence_loss,
        attribute_rate=args.attribute_rate,
        unconditional_rate=args.unconditional_rate,
        relabel_rate=args.relabel_rate,
        element_weight=args.element_weight,
        cell_formula=cell_formula,
        text_format=text_format,
        **{name: getattr(args, name) for name in _TRAIN_NUMBERS},
    )
    try:
        out = train(config, resume=args.resume)
    except (FileExistsError, FileNotFoundError, ValueError, ModelError) as err:
        raise CliError(flag_message(err, _TRAIN_FLAGS)) from None
    print(f"model written to {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    config = _settings(
        SampleConfig, _SAMPLE_FLAGS,
        n=args.n, batch_size=args.batch_size, temperature=args.temperature, top_p=args.top_p,
        constrained=not args.no_constraint, force_composition=args.force_composition, max_atoms=args.max_atoms,
        min_distance=args.min_distance or None,
        max_new_tokens=args.max_new_tokens, max_attempts=args.max_attempts, seed=args.seed,
        guidance_scale=args.guidance_scale, only_matching=args.only_matching, volume_floor=not args.no_volume_floor,
    )
    # Everything the arguments alone can refuse is refused before the model loads.
    given = Attributes(args.formula, args.spacegroup, args.e_above_hull, args.formation_energy, args.band_gap)
    if args.conditions and given.to_dict():
        raise CliError("give conditions either as --conditions CSV or as --formula/--spacegroup/..., not both")
    conditions = _read_conditions(args.conditions) if args.conditions else ([given] if given.to_dict() else None)
    if args.infill and (conditions or config.force_composition):
        raise CliError("--infill ranks replacements in one given structure: it takes no conditions")
    if config.force_composition:
        _check_forced_compositions(config, conditions or [])
    if config.only_matching and not any(c.formula or c.spacegroup for c in conditions or []):
        raise CliError("--only-matching checks a formula or space group: give --formula, --spacegroup, or a "
                       "--conditions CSV with them")
    CsvLog.check_output(args.out, COLUMNS, args.resume)
    try:
        sampler = Sampler.from_pretrained(args.model)
    except (OSError, ModelError) as err:
        raise CliError(f"cannot load model {args.model or '(default)'}: {str(err).splitlines()[0]}") from None
    if sampler.cell_formula and any(c.formula for c in conditions or []):
        print(f"{args.model or 'the default model'} reads a formula as the whole cell's: each element's count is the "
              "number of its atoms to write (NaCl asks for 2 atoms, Na4Cl4 for 8)", file=sys.stderr)
    try:
        scaled = {(c.formula, c.spacegroup): asked for c in conditions or []
                  if c.formula and (asked := sampler.as_read(c, config.max_atoms).formula) != c.in_site_order().formula}
    except ValueError as err:
        raise CliError(str(err)) from None
    if scaled:
        (typed, group), asked = next(iter(scaled.items()))
        print(f"{len(scaled)} formula(s) stated with a space group asked as the fewest formula units that group's "
              f"conventional cell holds, as the model reads them ({typed} in {group} as {asked})", file=sys.stderr)
    reordered = {c.formula: asked for c in conditions or []
                 if c.formula and (asked := c.in_site_order().formula) != plain_formula(c.formula)}
    if reordered:
        typed, asked = next(iter(reordered.items()))
        print(f"{len(reordered)} formula(s) asked with their elements in the order the model writes them, by "
              f"electronegativity ({typed} as {asked})", file=sys.stderr)
    if args.infill:
        return _infill(args, config, sampler)
    try:
        summary = sampler.sample(config, args.out, conditions, resume=args.resume)
    except (FileExistsError, ValueError) as err:
        raise CliError(str(err)) from None
    refused = f", {summary.refused} refused as not what the prompt asked" if config.only_matching else ""
    print(
        f"{summary.valid} valid structures from {summary.attempts} attempts in {args.out}{refused} "
        f"({summary.valid_per_second:.2f} per second this run)",
        file=sys.stderr,
    )
    if args.cif_dir or args.extxyz:
        write_structures(args.out, args.cif_dir, args.extxyz)
    return 0 if summary.valid >= config.n else 1


def _read_conditions(path: Path) -> list[Attributes]:
    """The conditions of a --conditions CSV (`read_conditions` checks each row's formula and space group)."""
    if not path.is_file():
        raise CliError(f"--conditions {path}: no such file")
    try:
        conditions = read_conditions(path)
    except ValueError as err:  # pandas' EmptyDataError and ParserError, UnicodeDecodeError, a bad number
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if message.startswith(str(path)):  # read_conditions' own message, naming the file (and line)
            raise CliError(f"--conditions {message}") from None
        raise CliError(f"--conditions {path}: not a readable conditions CSV ({message})") from None
    except OSError as err:
        raise CliError(f"--conditions {path}: cannot read it ({err.strerror or err})") from None
    return conditions


def _check_forced_compositions(config: SampleConfig, conditions: Sequence[Attributes]) -> None:
    """Refuse --force-composition where it cannot act: no formula, no grammar, or a formula no grammar can force."""
    formulas = sorted({c.formula for c in conditions if c.formula})
    if not formulas:
        raise CliError("--force-composition needs a formula: --formula, or a --conditions CSV with formulas")
    if not config.constrained:
        raise CliError("--force-composition works through the grammar: it cannot be used with --no-constraint")
    for formula in formulas:
        try:
            Grammar.for_formula(formula, max_atoms=config.max_atoms)
        except ValueError as err:
            raise CliError(flag_message(err, _SAMPLE_FLAGS)) from None


def _infill(args: argparse.Namespace, config: SampleConfig, sampler: Sampler) -> int:
    dataset = read_structures(args.infill)
    if not dataset.records:
        raise CliError(f"{args.infill}: no readable structure ({dataset.summary()})")
    record = dataset.records[0]
    elements = sorted({site.specie.symbol for site in record.structure})
    element = args.mask_element or str(np.random.default_rng(config.seed).choice(elements))
    if element not in elements:
        raise CliError(f"{_shown(record.id)} has no {element} (elements: {' '.join(elements)})")
    candidates = similar_elements(element) if args.similar_only else None
    if candidates is not None and not candidates:
        raise CliError(f"no elements of similar charge and ionic radius are known for {element}")
    ranked = sampler.infill(record.structure, element, candidates)[: config.n]
    rows = [
        substitution_row(f"{record.id}-{element}-{s.element}", record.id, element, s) for s in ranked
    ]
    writer = SampleWriter(args.out, resume=args.resume)
    done = writer.ids()
    writer.append([row for row in rows if row["id"] not in done])
    for s in ranked:
        print(f"{element} -> {s.element:3s} log p = {s.log_prob:8.3f}  {s.structure.composition.reduced_formula}")
    repeated = sum(1 for row in rows if row["id"] in done)
    if repeated:
        print(f"crystext sample: {repeated} of these answers were already in {args.out}, not written again",
              file=sys.stderr)
    return 0


def _data_list(args: argparse.Namespace) -> int:
    for heading, sources in (("benchmark sets", DATASETS), ("hull references", REFERENCES)):
        print(f"{heading}:")
        for source in sources.values():
            print(f"  {source.name:14s} {source.description}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    folder = dataset_dir(args.name, args.data_dir) if args.data_dir else fetch(args.name)
    print(folder)
    if args.name in REFERENCES:
        entries = folder / REFERENCES[args.name].filename("entries")
        print(f"use it with: crystext stability SAMPLES --entries {entries}", file=sys.stderr)
    return 0


#: Every subcommand, in pipeline order: (help, arguments, handler); the handler is None for `data` (its actions).
SUBCOMMANDS: dict[str, tuple[str, Arguments, Handler | None]] = {
    "encode": ("write structures (CIF, CSV, folder, extxyz) as crystal text", _encode_arguments, _encode),
    "decode": ("read crystal text back into CIF", _decode_arguments, _decode),
    "train": ("fine-tune a causal LM (LoRA) or train a small one from scratch", _train_arguments, _train),
    "sample": ("sample crystals: unconditional, conditional or infill", _sample_arguments, _sample),
    "evaluate": (evaluate_cli.HELP, evaluate_cli.add_arguments, evaluate_cli.run),
    "stability": (stability_cli.HELP, stability_cli.add_arguments, stability_cli.run),
    "tune": (tune_cli.HELP, tune_cli.add_arguments, tune_cli.run),
    "data": ("benchmark datasets: list them, fetch one", _data_arguments, None),
}


if __name__ == "__main__":
    raise SystemExit(main())
