"""Every bad input answered: malformed files, records and arguments get one line naming the file and record (or
the flag), the rest of the work goes on, and the exit status says whether anything was skipped.

Argument checks run before any model, dataset or hull is loaded, so these tests are fast; a test that passed a
bad setting the check missed would fail on the model it then could not load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystext.cli import main
from crystext.sample import COLUMNS

NACL = "5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"
NO_MODEL = ["--model", "/nonexistent/model"]  # reached only if the arguments were accepted


def run(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and standard error of `crystext ARGV`."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_error(capsys, command: str, *argv: str) -> str:
    """The message of a run that must fail with exactly one line `crystext COMMAND: error: ...` and exit 1."""
    code, err = run(capsys, command, *argv)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"crystext {command}: error: "), err
    return lines[0].removeprefix(f"crystext {command}: error: ")


def nacl_cif(folder: Path) -> Path:
    path = folder / "nacl.cif"
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(path))
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --------------------------------------------------------------------------- decode


def test_ids_become_safe_unique_file_names_inside_the_output_folder(tmp_path, capsys) -> None:
    ids = ["../escaped", "a/b", "x" * 300, "same", "same", "SAME", "ok"]
    texts = jsonl(tmp_path / "texts.jsonl", [{"id": i, "text": NACL} for i in ids])
    out = tmp_path / "deep" / "cifs"
    code, err = run(capsys, "decode", texts, "-o", out)
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["_escaped.cif", "a_b.cif", "x" * 100 + ".cif", "same.cif", "same-2.cif", "SAME-3.cif",
                            "ok.cif"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "texts.jsonl"]  # nothing escaped the folder
    assert "crystext decode: ../escaped: written as _escaped.cif (the id is not a safe file name)" in err
    assert "crystext decode: same: written as same-2.cif (the id repeats)" in err
    assert f"crystext decode: {'x' * 60!r}...: written as {'x' * 100}.cif" in err
    assert err.strip().splitlines()[-1] == f"decoded 7 of 7 crystals into {out} (5 under another file name, see above)"


def test_a_bad_record_is_skipped_and_the_exit_status_says_so(tmp_path, capsys) -> None:
    lines = [json.dumps({"id": "good", "text": NACL}), "not json", json.dumps({"id": "no-text"}),
             json.dumps({"id": "bad", "text": NACL.replace("Cl\n", "c1\n")}), json.dumps({"text": NACL})]
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(lines) + "\n")
    code, err = run(capsys, "decode", texts, "-o", tmp_path / "out")
    assert code == 1
    assert f"crystext decode: {texts} line 2: expected a JSON object with a 'text' string, skipped" in err
    assert f"crystext decode: {texts} line 3: expected a JSON object with a 'text' string, skipped" in err
    assert "crystext decode: bad: line 5: expected an element symbol, got 'c1'" in err
    assert f"decoded 2 of 5 crystals into {tmp_path / 'out'}" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.cif", "line5.cif"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"4 4 {'9' * 400}\n90 90 90\nNa\n0 0 0", "line 1: number '" + "9" * 40 + "...' in the lattice lengths is "
         "too large"),
        (f"{'1' + '0' * 200} {'1' + '0' * 200} {'1' + '0' * 200}\n90 90 90\nNa\n0 0 0",
         "line 1: lattice lengths too large: the cell volume is not a finite number"),
        (NACL.replace("Cl\n", "c1\n"), "line 5: expected an element symbol, got 'c1'"),
    ],
)
def test_a_text_that_is_no_finite_crystal_writes_no_cif(tmp_path, capsys, text: str, message: str) -> None:
    source = tmp_path / "crystal.txt"
    source.write_text(text)
    assert one_error(capsys, "decode", source, "-o", tmp_path / "out.cif") == f"crystal: {message}"
    assert not (tmp_path / "out.cif").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (bytes(range(256)), "invalid start byte at byte 128"),
        ((NACL + "\n# café au lait").encode("latin-1"), "invalid continuation byte at byte"),
        (NACL.encode("utf-16"), "invalid start byte at byte 0, it looks like UTF-16"),
    ],
)
@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys, content: bytes, problem: str, suffix: str) -> None:
    source = tmp_path / f"crystal{suffix}"
    source.write_bytes(content)
    message = one_error(capsys, "decode", source, "-o", tmp_path / "out")
    assert message.startswith(f"{source}: not UTF-8 text ({problem}")
    assert message.endswith("crystal text files are UTF-8")


def test_a_utf8_byte_order_mark_is_read_past(tmp_path, capsys) -> None:
    source = tmp_path / "crystal.txt"
    source.write_bytes(NACL.encode("utf-8-sig"))
    code, _ = run(capsys, "decode", source, "-o", tmp_path / "out" / "nacl.cif")
    assert code == 0 and Structure.from_file(tmp_path / "out" / "nacl.cif").composition.reduced_formula == "NaCl"


def test_several_crystals_need_a_folder_not_a_cif_name(tmp_path, capsys) -> None:
    texts = jsonl(tmp_path / "texts.jsonl", [{"id": "a", "text": NACL}, {"id": "b", "text": NACL}])
    assert one_error(capsys, "decode", texts, "-o", tmp_path / "x.cif") == (
        f"-o {tmp_path / 'x.cif'} names a file, but {texts} holds 2 crystal texts: give a folder")
    (tmp_path / "empty.jsonl").write_text("\n")
    assert one_error(capsys, "decode", tmp_path / "empty.jsonl", "-o", tmp_path) == (
        f"{tmp_path / 'empty.jsonl'}: no crystal texts in it")


# --------------------------------------------------------------------------- encode


def test_encode_output_folders(tmp_path, capsys) -> None:
    cif = nacl_cif(tmp_path)
    assert one_error(capsys, "encode", cif, "-o", tmp_path) == (
        f"-o {tmp_path} is a folder: give the name of a file to write")
    target = tmp_path / "missing" / "parents" / "nacl.txt"
    code, _ = run(capsys, "encode", cif, "-o", target)
    assert code == 0 and target.read_text() == NACL + "\n"


@pytest.mark.parametrize("flag", ["--length-decimals", "--angle-decimals", "--coord-decimals"])
@pytest.mark.parametrize("value", [-1, 9])
def test_encode_decimals_are_checked(tmp_path, capsys, flag: str, value: int) -> None:
    assert one_error(capsys, "encode", nacl_cif(tmp_path), flag, value) == (
        f"{flag} must be between 0 and 8, got {value}")


def test_encode_says_why_nothing_was_encoded_and_counts_the_skipped(tmp_path, capsys) -> None:
    header_only = tmp_path / "head.csv"
    header_only.write_text("material_id,cif\n")
    assert str(header_only) in one_error(capsys, "encode", header_only)
    table = tmp_path / "two.csv"
    pd.DataFrame({"material_id": ["good", "bad"], "cif": [nacl_cif(tmp_path).read_text(), "not a cif"]}).to_csv(
        table, index=False)
    out = tmp_path / "texts.jsonl"
    code, err = run(capsys, "encode", table, "-o", out)
    assert code == 1
    assert "crystext encode: skipped bad: " in err and f"wrote 1 crystal texts to {out}, skipped 1 of 2" in err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["good"]


# --------------------------------------------------------------------------- sample


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-n", "-5"], "-n must be at least 1, got -5"),
        (["-n", "0"], "-n must be at least 1, got 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
        (["--temperature", "0"], "--temperature must be positive (0 would write the same crystal every time), got 0.0"),
        (["--temperature", "nan"], "--temperature must be positive (0 would write the same crystal every time), "
         "got nan"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--max-atoms", "0"], "--max-atoms must be at least 1, got 0"),
        (["--max-attempts", "-1"], "--max-attempts must be at least 1, got -1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["--min-distance", "-1"], "--min-distance must be a distance >= 0 in Angstrom, got -1.0"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--formula", "Na0.5Cl", "--force-composition"], "formula Na0.5Cl has fractional amounts: a forced "
         "composition needs whole atoms per formula unit (write it as NaCl2, or a multiple of it)"),
        (["--formula", "Na30Cl30", "--force-composition"], "formula Na30Cl30 has more than max_atoms=52 atoms"),
        (["--force-composition"], "--force-composition needs a formula: --formula, or a --conditions CSV with "
         "formulas"),
        (["--formula", "NaCl", "--force-composition", "--no-constraint"], "--force-composition works through the "
         "grammar: it cannot be used with --no-constraint"),
        (["--only-matching", "--band-gap", "1"], "--only-matching checks a formula or space group: give --formula, "
         "--spacegroup, or a --conditions CSV with them"),
        (["--infill", "x.cif", "--formula", "NaCl"], "--infill ranks replacements in one given structure: it takes "
         "no conditions"),
    ],
)
def test_sample_settings_that_make_no_sense_are_refused_before_the_model_loads(
    tmp_path, capsys, argv: list[str], message: str
) -> None:
    out = tmp_path / "s.csv"
    assert one_error(capsys, "sample", *NO_MODEL, "-o", out, *argv) == message
    assert not out.exists()  # nothing left behind to block the rerun


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--spacegroup", "0"], "argument --spacegroup: space group 0 does not exist (1-230)"),
        (["--spacegroup", "231"], "argument --spacegroup: space group 231 does not exist (1-230)"),
        (["--spacegroup", "P1"], "argument --spacegroup: expected a space group number (1-230), got 'P1'"),
        (["--formula", "xx!!junk"], "argument --formula: 'xx!!junk' is not a chemical formula (e.g. LiFePO4)"),
        (["--formula", "Xx2"], "argument --formula: formula 'Xx2' has an unknown element 'Xx'"),
        (["--band-gap", "nan"], "argument --band-gap: expected a number, got 'nan'"),
    ],
)
def test_sample_conditions_that_make_no_sense_are_usage_errors(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["sample", *NO_MODEL, *argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"crystext sample: error: {message}"


def test_conditions_files_that_cannot_be_read(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.csv"
    assert one_error(capsys, "sample", *NO_MODEL, "--conditions", missing) == f"--conditions {missing}: no such file"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert one_error(capsys, "sample", *NO_MODEL, "--conditions", empty) == (
        f"--conditions {empty}: not a readable conditions CSV (No columns to parse from file)")
    no_columns = tmp_path / "ids.csv"
    no_columns.write_text("material_id\nmp-1\n")
    assert one_error(capsys, "sample", *NO_MODEL, "--conditions", no_columns) == (
        f"--conditions {no_columns}: no conditions (expected columns such as pretty_formula, spacegroup.number)")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)))
    assert one_error(capsys, "sample", *NO_MODEL, "--conditions", binary).startswith(
        f"--conditions {binary}: not a readable conditions CSV ('utf-8' codec can't decode")
    bad_row = tmp_path / "rows.csv"
    bad_row.write_text("pretty_formula,spacegroup.number\nNaCl,225\nKCl,0\n")
    assert one_error(capsys, "sample", *NO_MODEL, "--conditions", bad_row) == (
        f"--conditions {bad_row} line 3: space group 0 does not exist (1-230)")
    assert one_error(capsys, "sample", *NO_MODEL, "--conditions", bad_row, "--formula", "NaCl") == (
        "give conditions either as --conditions CSV or as --formula/--spacegroup/..., not both")


def test_sample_output_is_checked_before_the_model_loads(tmp_path, capsys) -> None:
    existing = tmp_path / "s.csv"
    existing.write_text(",".join(COLUMNS) + "\r\ns0,unconditional,{},text,,\r\n")
    cif = nacl_cif(tmp_path)
    for mode in ([], ["--infill", str(cif)]):
        assert one_error(capsys, "sample", *NO_MODEL, "-o", existing, *mode) == (
            f"{existing} exists: pass --resume to continue it, or choose another output")
        assert one_error(capsys, "sample", *NO_MODEL, "-o", tmp_path, *mode) == (
            f"{tmp_path} is a folder: give the name of a file to write")
    # a file holding only the header (a run that wrote nothing) does not block the rerun
    existing.write_text(",".join(COLUMNS) + "\r\n")
    assert one_error(capsys, "sample", *NO_MODEL, "-o", existing).startswith("cannot load model /nonexistent/model")


# --------------------------------------------------------------------------- train, stability, evaluate


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--max-steps", "-1"], "--max-steps must be at least 1, got -1"),
        (["--max-steps", "0"], "--max-steps must be at least 1, got 0"),
        (["--grad-accum", "0"], "--grad-accum must be at least 1, got 0"),
        (["--epochs", "0"], "--epochs must be positive, got 0.0"),
        (["--learning-rate=-1e-3"], "--learning-rate must be positive, got -0.001"),
        (["--max-length", "1"], "--max-length must be at least 2, got 1"),
        (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
        (["--infill-fraction", "1.5"], "--infill-fraction must be between 0 and 1, got 1.5"),
        (["--lora-rank", "0"], "--lora-rank must be at least 1, got 0"),
        (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    ],
)
def test_train_settings_that_make_no_sense(tmp_path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "model"
    assert one_error(capsys, "train", "--data-dir", tmp_path / "no-data", "--out", out, *argv) == message
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "-1"], "--limit must be at least 1, got -1"),
        (["--limit", "0"], "--limit must be at least 1, got 0"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--fmax", "0"], "--fmax must be a positive force, got 0.0"),
        (["--max-steps", "-1"], "--max-steps must be >= 0 (0: a single point, no relaxation), got -1"),
        (["--timeout", "0"], "--timeout must be positive seconds, got 0.0"),
    ],
)
def test_stability_settings_that_make_no_sense(tmp_path, capsys, argv: list[str], message: str) -> None:
    assert one_error(capsys, "stability", tmp_path / "samples.csv", *argv) == message


def test_stability_inputs_and_output_are_checked_first(tmp_path, capsys) -> None:
    samples = nacl_cif(tmp_path)
    assert one_error(capsys, "stability", samples, "-o", tmp_path) == (
        f"{tmp_path} is a folder: give the name of a file to write")
    missing = tmp_path / "train.csv"
    assert one_error(capsys, "stability", samples, "--train", missing) == f"--train {missing}: no such file or folder"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-valid", "0"], "--n-valid must be at least 1, got 0"),
        (["--max-atoms", "-3"], "--max-atoms must be at least 1, got -3"),
        (["--jobs", "0"], "--jobs must be at least 1, got 0"),
        (["--struct-cutoff", "-1"], "--struct-cutoff must be a positive distance, got -1.0"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--symprec", "0"], "--symprec must be positive, got 0.0"),
        (["--ipt-model", "m", "--ipt-translations", "1"], "--ipt-translations must be at least 2 (the structure and "
         "one translation), got 1"),
    ],
)
def test_evaluate_settings_that_make_no_sense(tmp_path, capsys, argv: list[str], message: str) -> None:
    assert one_error(capsys, "evaluate", tmp_path / "s.csv", "--reference", tmp_path / "r.csv", *argv) == message


def test_evaluate_inputs_and_output_are_checked_first(tmp_path, capsys) -> None:
    samples = nacl_cif(tmp_path)
    missing = tmp_path / "missing.csv"
    assert one_error(capsys, "evaluate", samples, "--reference", missing, "-o", tmp_path / "eval") == (
        f"--reference {missing}: no such file or folder")
    assert one_error(capsys, "evaluate", samples, "--reference", samples, "-o", samples) == (
        f"-o {samples} is a file: give the folder to write the results into")
