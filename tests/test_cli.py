"""The command line: encode and decode through the real entry point, with bad records reported and skipped."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from pymatgen.core import Lattice, Structure

from crystext.cli import main
from crystext.textformat import decode


def test_help_lists_the_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crystext.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("encode", "decode", "train", "sample", "evaluate", "stability", "data"):
        assert re.search(rf"^    {command}\s", result.stdout, re.MULTILINE), command


def test_encode_one_cif_prints_its_text(tmp_path, capsys) -> None:
    cif = tmp_path / "fe.cif"
    Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    assert main(["encode", str(cif)]) == 0
    assert capsys.readouterr().out == "2.9 2.9 2.9\n90 90 90\nFe\n0.00 0.00 0.00\nFe\n0.50 0.50 0.50\n"


def test_encode_csv_then_decode_jsonl_round_trip(shared_data, head_csv, tmp_path, capsys) -> None:
    csv = head_csv(shared_data / "mp_20" / "test.csv", 12, tmp_path / "head.csv")
    texts = tmp_path / "texts.jsonl"
    assert main(["encode", str(csv), "-o", str(texts), "--translate", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in texts.read_text().splitlines()]
    assert [r["id"] for r in rows][:2] == ["mp-10009", "mp-1218989"]
    assert decode(rows[0]["text"]).composition.reduced_formula == "GaTe"

    rows[3]["text"] = rows[3]["text"].replace("\n", "\nZz\n", 1)  # unknown element after the lengths line
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cifs"
    capsys.readouterr()
    assert main(["decode", str(texts), "-o", str(out)]) == 1  # one record skipped
    err = capsys.readouterr().err
    assert f"crystext decode: {rows[3]['id']}: line 2: lattice angles line has 1 values, expected 3: 'Zz'" in err
    assert "decoded 11 of 12 crystals" in err
    assert len(list(out.glob("*.cif"))) == 11
    assert Structure.from_file(out / "mp-10009.cif").composition.reduced_formula == "GaTe"


def test_decode_bad_single_text_is_one_line_error(tmp_path, capsys) -> None:
    text = tmp_path / "broken.txt"
    text.write_text("4 4 4\n90 90 90\nNa\n0.1 0.2\n")
    assert main(["decode", str(text)]) == 1
    assert capsys.readouterr().err == (
        "crystext decode: error: broken: line 4: fractional coordinates line has 2 values, expected 3: '0.1 0.2'\n"
    )


def test_data_fetch_uses_a_local_copy(shared_data, capsys) -> None:
    assert main(["data", "fetch", "mp_20", "--data-dir", str(shared_data)]) == 0
    assert capsys.readouterr().out.strip() == str(shared_data / "mp_20")
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "perov_5" in listing and "mp_2023_02_07" in listing.split("hull references:")[1]


def test_data_fetch_of_the_mp_snapshot_says_how_to_use_it(tmp_path, capsys) -> None:
    entries = tmp_path / "mp_2023_02_07" / "2023-02-07-mp-computed-structure-entries.json.gz"
    entries.parent.mkdir()
    entries.write_bytes(b"")
    assert main(["data", "fetch", "mp_2023_02_07", "--data-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(entries.parent)
    assert captured.err.strip() == f"use it with: crystext stability SAMPLES --entries {entries}"


def test_encode_asymmetric_unit_writes_the_group_and_refuses_translation(tmp_path, capsys) -> None:
    cif = tmp_path / "fe.cif"
    Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    assert main(["encode", str(cif), "--asymmetric-unit"]) == 0
    assert capsys.readouterr().out == "229\n2.9 2.9 2.9\n90 90 90\nFe\n0.00 0.00 0.00\n"  # Im-3m: one orbit
    assert main(["encode", str(cif), "--asymmetric-unit", "--translate"]) == 1
    assert capsys.readouterr().err.strip() == ("crystext encode: error: --translate cannot go with --asymmetric-unit: "
                                               "its origin is its space group's")
    assert main(["encode", str(cif), "--asymmetric-unit", "--joined-counts"]) == 0  # Im-3m's 2 atoms, one orbit
    assert capsys.readouterr().out == "229\n2.9 2.9 2.9\n90 90 90\nFe2\n0.00 0.00 0.00\n"
