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
from crystext.data import DATASETS, DatasetError, dataset_dir, fetch, read_structures
from crystext.model import SCRATCH_PRESETS, LoraSettings, ModelError, ModelSpec
from crystext.textformat import CrystalText, CrystalTextError, FormatOptions, augment
from crystext.train import TrainConfig, train

Handler = Callable[[argparse.Namespace], int]
#: TrainConfig fields that the CLI exposes one-to-one as numeric options.
_TRAIN_NUMBERS = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "warmup_steps", "weight_decay",
                  "grad_clip", "infill_fraction", "eval_every", "eval_examples", "save_every", "max_length",
                  "max_atoms", "seed")


class CliError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (CliError, DatasetError, CrystalTextError) as err:
        print(f"crystext {args.command}: error: {err}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystext", description="Generate inorganic crystals with language models that read and write them as text."
    )
    parser.add_argument("--version", action="version", version=f"crystext {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    encode = _command(commands, "encode", _encode, "write structures (CIF, CSV, folder, extxyz) as crystal text")
    encode.add_argument("input", type=Path, help="a .cif, a CSV with a cif column, a folder of .cif, or .extxyz")
    encode.add_argument("-o", "--output", type=Path, help="output file (default: standard output)")
    encode.add_argument("--length-decimals", type=int, default=FormatOptions.length_decimals)
    encode.add_argument("--angle-decimals", type=int, default=FormatOptions.angle_decimals)
    encode.add_argument("--coord-decimals", type=int, default=FormatOptions.coord_decimals)
    encode.add_argument("--translate", action="store_true", help="shift all sites by one random vector")
    encode.add_argument("--permute", action="store_true", help="shuffle the order of sites")
    encode.add_argument("--seed", type=int, default=0, help="seed for --translate/--permute")
    encode.add_argument("--jsonl", action="store_true", help="JSON lines {id, text} even for one structure")

    decode = _command(commands, "decode", _decode, "read crystal text back into CIF")
    decode.add_argument("input", help="a text file with one crystal, a .jsonl of {id, text}, or - for stdin")
    decode.add_argument("-o", "--output", type=Path, help="CIF file for one crystal, folder for many")

    train = _command(commands, "train", _train, "fine-tune a causal LM (LoRA) or train a small one from scratch")
    train.add_argument("--model", default="scratch-small", help=f"{', '.join(SCRATCH_PRESETS)}, a hub id or a local dir")
    train.add_argument("--data-dir", type=Path, required=True, help="dataset folder in the CDVAE layout")
    train.add_argument("--splits", default="train,val", help="comma-separated splits to train on")
    train.add_argument("--holdout", type=float, default=0.05, help="fraction held out for the validation loss")
    train.add_argument("--out", type=Path, required=True, help="output model directory")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    defaults = TrainConfig(out=Path(), data_dir=Path())
    for name in _TRAIN_NUMBERS:
        value = getattr(defaults, name)
        kind = float if isinstance(value, float) else int
        train.add_argument("--" + name.replace("_", "-"), type=kind, default=value, help=f"default {value}")
    train.add_argument("--permute", action="store_true", help="also shuffle the order of atoms")
    train.add_argument("--full-sequence-loss", action="store_true", help="train on prompt tokens too")
    train.add_argument("--lora-rank", type=int, default=LoraSettings.rank)
    train.add_argument("--lora-alpha", type=int, default=LoraSettings.alpha)
    train.add_argument("--lora-dropout", type=float, default=LoraSettings.dropout)
    train.add_argument("--lora-targets", default=",".join(LoraSettings.target_modules))
    train.add_argument("--no-lora", action="store_true", help="fine-tune all weights of a pretrained model")
    train.add_argument("--quantization", choices=["4bit", "8bit"], help="load the base model quantized (CUDA only)")

    data = _command(commands, "data", None, "benchmark datasets: list, fetch, locate")
    data_commands = data.add_subparsers(title="data commands", metavar="ACTION")
    _command(data_commands, "list", _data_list, "the benchmark sets crystext knows")
    fetch_cmd = _command(data_commands, "fetch", _data_fetch, "download a benchmark set into the cache")
    fetch_cmd.add_argument("name", choices=sorted(DATASETS))
    fetch_cmd.add_argument("--data-dir", type=Path, help="use this local copy instead of downloading")
    return parser


def _command(
    commands: argparse._SubParsersAction, name: str, handler: Handler | None, help_text: str
) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(command=name)
    if handler is not None:
        sub.set_defaults(handler=handler)
    return sub


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


def _data_list(args: argparse.Namespace) -> int:
    for source in DATASETS.values():
        print(f"{source.name:10s} {source.description}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    folder = dataset_dir(args.name, args.data_dir) if args.data_dir else fetch(args.name)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
