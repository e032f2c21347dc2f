"""Sampling with a tiny trained model: every mode, constrained decoding, forced composition, exact resume."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from pymatgen.core import Composition, Lattice, Structure
from transformers import GPT2Config, GPT2LMHeadModel

from crystext.cli import main
from crystext.constants import MAX_VOLUME_PER_ATOM, MIN_VOLUME_PER_ATOM
from crystext.evaluate.validity import structural_problem
from crystext.geometry import spacegroup_number
from crystext.grammar import min_cell_volume
from crystext.prompts import Attributes
from crystext.sample import (
    Completion,
    SampleConfig,
    Sampler,
    SampleWriter,
    attempt_row,
    parsed_structures,
    read_conditions,
    similar_elements,
    write_structures,
)
from crystext.sample import sampler as sampler_module
from crystext.textformat import FormatOptions, decode


@pytest.fixture(scope="module")
def sampler(model_dir) -> Sampler:
    return Sampler.from_pretrained(model_dir)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def small(**changes) -> SampleConfig:
    settings = {"n": 4, "batch_size": 4, "max_atoms": 4, "seed": 1}
    settings.update(changes)
    return SampleConfig(**settings)


def test_constrained_decoding_parses_every_attempt_where_free_sampling_fails(sampler, tmp_path) -> None:
    free = sampler.sample(small(constrained=False, max_attempts=4, max_new_tokens=60), tmp_path / "free.csv",
                          progress=False)
    constrained = sampler.sample(small(), tmp_path / "constrained.csv", progress=False)
    assert free.attempts == 4 and free.valid < 4  # an almost untrained model rarely writes a whole crystal
    assert all(r["error"] for r in rows(tmp_path / "free.csv") if not r["cif"])
    assert constrained.valid == constrained.attempts == 4
    for row in rows(tmp_path / "constrained.csv"):
        structure = decode(row["raw_text"])
        assert row["mode"] == "unconditional" and row["error"] == "" and 1 <= len(structure) <= 4
        assert Structure.from_str(row["cif"], fmt="cif").composition == structure.composition


def test_automatic_batch_fits_the_kv_cache_in_the_memory_allowance(sampler, monkeypatch) -> None:
    monkeypatch.setattr(sampler, "device", torch.device("cpu"))  # the CPU allowance, on a GPU machine too
    config = sampler.model.config
    # keys and values, every layer and head: bytes one sequence of 100 positions caches
    per_sequence = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 100
    per_sequence *= sampler.model.dtype.itemsize
    assert sampler.auto_batch_size(100) == sampler_module.AUTO_BATCH_MAX == 512  # a tiny model on a CPU: the cap
    monkeypatch.setattr(sampler_module, "AUTO_CACHE_CPU_BYTES", 10 * per_sequence + 1)
    assert sampler.auto_batch_size(100) == 10
    assert sampler.auto_batch_size(100_000) == 1  # never zero, however long the crystals
    # a config without head_dim and num_key_value_heads (GPT-2): every head caches hidden_size / heads values
    gpt2 = Sampler(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50)), sampler.tokenizer)
    monkeypatch.setattr(gpt2, "device", torch.device("cpu"))
    monkeypatch.setattr(sampler_module, "AUTO_CACHE_CPU_BYTES", 3 * (2 * 2 * 2 * 8 * 100 * 4) + 1)
    assert gpt2.auto_batch_size(100) == 3


def test_last_batch_is_sized_to_the_structures_still_wanted(sampler, tmp_path, monkeypatch) -> None:
    sizes = []
    generate = sampler.generate

    def counting(prompts, *rest, **options):
        sizes.append(len(prompts))
        return generate(prompts, *rest, **options)

    monkeypatch.setattr(sampler, "generate", counting)
    summary = sampler.sample(small(n=7, batch_size=5), tmp_path / "s.csv", progress=False)
    assert summary.valid == summary.attempts == 7
    assert sizes == [5, 3]  # 2 still wanted after the first batch, plus one spare; not a second batch of 5
    sizes.clear()
    sampler.sample(small(n=3, batch_size=None), tmp_path / "auto.csv", progress=False)
    assert sizes == [4]  # the automatic batch is 512, but 3 structures need only 3 + 1 attempts


def test_token_budget_counts_whole_number_tokens(sampler) -> None:
    # widest lattice "88.9 88.9 88.9\n119 119 119\n" is 12 tokens, an atom "Og\n0.89 0.89 0.89\n" 8
    assert sampler.token_budget(10) == math.ceil(1.1 * (12 + 8 * 10)) + 1
    # three-decimal coordinates are not whole-number tokens: "0", ".", "8", "8", "9" each
    finer = Sampler(sampler.model, sampler.tokenizer, FormatOptions(coord_decimals=3))
    assert finer.token_budget(10) == math.ceil(1.1 * (12 + 20 * 10)) + 1
    # the site-count format adds " 10" to every element line
    counted = Sampler(sampler.model, sampler.tokenizer, FormatOptions(site_counts=True))
    assert counted.token_budget(10) == math.ceil(1.1 * (12 + 10 * 10)) + 1


@pytest.mark.parametrize("joined", [False, True])
def test_a_model_trained_on_site_counts_samples_in_its_own_format(model_dir, tmp_path, capsys, joined) -> None:
    """The format a model was trained on comes from its directory: an untrained site-count model still writes
    grammatical site-count text, each element's atoms counted down ("Fe 2", or "Fe2" joined), and forced to a formula
    writes its elements with whole-unit counts."""
    counted = tmp_path / "counted"
    shutil.copytree(model_dir, counted)
    info = json.loads((counted / "crystext.json").read_text())
    info["text_format"].update(site_counts=True, joined_counts=joined)
    (counted / "crystext.json").write_text(json.dumps(info))
    split = re.compile(r"([A-Z][a-z]?)(\d+)" if joined else r"([A-Z][a-z]?) (\d+)")
    out, forced = tmp_path / "s.csv", tmp_path / "f.csv"
    Sampler.from_pretrained(counted).sample(small(), out, progress=False)
    Sampler.from_pretrained(counted).sample(small(n=6, force_composition=True, max_atoms=12), forced,
                                            progress=False, conditions=[Attributes(formula="Li2O")])
    assert rows(forced)
    for row in rows(out) + rows(forced):
        element_lines = row["raw_text"].split("\n")[2::2]
        species, counts = zip(*(split.fullmatch(line).groups() for line in element_lines))
        assert [int(n) for n in counts] == [species[i:].count(s) for i, s in enumerate(species)]
        assert [site.specie.symbol for site in decode(row["raw_text"])] == list(species)
    for row in rows(forced):
        assert decode(row["raw_text"]).composition.reduced_formula == "Li2O"


def test_a_cell_formula_model_says_how_it_reads_a_formula(model_dir, tmp_path, capsys) -> None:
    """A model trained with `--cell-formula` is loaded knowing it, and `sample` tells the user that NaCl asks for two
    atoms; a model trained on reduced formulas says nothing."""
    cell = tmp_path / "cell"
    shutil.copytree(model_dir, cell)
    info = json.loads((cell / "crystext.json").read_text())
    (cell / "crystext.json").write_text(json.dumps({**info, "cell_formula": True}))
    assert Sampler.from_pretrained(cell).cell_formula and not Sampler.from_pretrained(model_dir).cell_formula
    note = f"{cell} reads a formula as the whole cell's: each element's count is the number of its atoms to write"
    for model, said in ((cell, True), (model_dir, False)):
        main(["sample", "--model", str(model), "--formula", "NaCl", "-n", "1", "--max-attempts", "1",
              "--max-atoms", "4", "-o", str(tmp_path / f"{model.name}.csv")])
        assert (note in capsys.readouterr().err) is said
    main(["sample", "--model", str(model_dir), "--formula", "ClNa", "-n", "1", "--max-attempts", "1",
          "--max-atoms", "4", "-o", str(tmp_path / "ordered.csv")])
    assert ("1 formula(s) asked with their elements in the order the model writes them, by electronegativity "
            "(ClNa as NaCl)") in capsys.readouterr().err


def test_a_formula_stated_with_a_group_asks_a_cell_formula_model_for_a_cell_the_group_holds(
        model_dir, tmp_path, capsys) -> None:
    """A model that reads a formula stated with a space group as that group's conventional cell (`--cell-formula`
    with asymmetric units for stated groups) would read NaCl in 225 as 2 atoms, which no Fm-3m cell holds: `sample`
    asks for Na4Cl4, says so, and records the prompt as asked; the same typed to a reduced-formula model stays NaCl.
    A formula no cell of the group holds within --max-atoms is refused in one line."""
    both = tmp_path / "both"
    shutil.copytree(model_dir, both)
    info = json.loads((both / "crystext.json").read_text())
    info["text_format"].update(asymmetric_when_grouped=True)
    (both / "crystext.json").write_text(json.dumps({**info, "cell_formula": True}))
    asked = {}
    for model in (both, model_dir):
        out = tmp_path / f"{model.name}.csv"
        main(["sample", "--model", str(model), "--formula", "NaCl", "--spacegroup", "225", "-n", "1",
              "--max-attempts", "2", "--max-atoms", "4", "-o", str(out)])
        asked[model] = ({json.dumps(json.loads(row["conditions"])) for row in rows(out)}, capsys.readouterr().err)
    assert asked[both][0] == {json.dumps({"formula": "Na4Cl4", "spacegroup": 225})}
    assert ("1 formula(s) stated with a space group asked as the fewest formula units that group's conventional cell "
            "holds, as the model reads them (NaCl in 225 as Na4Cl4)") in asked[both][1]
    assert asked[model_dir][0] == {json.dumps({"formula": "NaCl", "spacegroup": 225})}
    assert "asked as the fewest formula units" not in asked[model_dir][1]
    assert main(["sample", "--model", str(both), "--formula", "LiFePO4", "--spacegroup", "225", "-n", "1",
                 "--max-atoms", "5", "-o", str(tmp_path / "none.csv")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "crystext sample: error: no cell of space group 225 with at most 20 atoms holds formula LiFePO4 (its orbits "
        "hold 4, 8, 24, 32, 48, 96, 192 atoms)")


def test_a_cell_formula_model_forced_writes_exactly_the_cell_asked(sampler, tmp_path) -> None:
    """Forced, a `--cell-formula` model writes the stated atoms, not as many units as the cell's volume holds."""
    cell = Sampler(sampler.model, sampler.tokenizer, cell_formula=True)
    out = tmp_path / "na2cl2.csv"
    cell.sample(small(force_composition=True, max_atoms=12), out, conditions=[Attributes(formula="Na2Cl2")],
                progress=False)
    written = [decode(row["raw_text"]).composition for row in rows(out) if row["cif"]]
    assert written and all(c == Composition("Na2Cl2") for c in written)


def test_a_cell_formula_models_lattice_holds_the_stated_atoms(tmp_path) -> None:
    """A stated cell formula floors the cell's volume at what MP-20 gives those atoms (`min_cell_volume`); the same
    seeds without the floor write smaller cells (recipes/scratch_small, read as if it had learnt cell formulas, writes
    the small cells it knows). A reduced-formula model has no floor: NaCl may be any number of units."""
    sampler = Sampler.from_pretrained(Path(__file__).resolve().parents[1] / "recipes" / "scratch_small")
    cell = Sampler(sampler.model, sampler.tokenizer, sampler.text_format, cell_formula=True)
    floor = min_cell_volume("Na6Cl6")
    volumes = {}
    for name, model, on in (("floored", cell, True), ("free", cell, False), ("reduced", sampler, True)):
        out = tmp_path / f"{name}.csv"
        model.sample(small(n=8, batch_size=8, max_atoms=12, volume_floor=on), out,
                     conditions=[Attributes(formula="Na6Cl6")], progress=False)
        volumes[name] = [decode(row["raw_text"]).volume for row in rows(out) if row["cif"]]
    assert volumes["floored"] and min(volumes["floored"]) >= floor
    assert min(volumes["free"]) < floor and min(volumes["reduced"]) < floor


def test_forced_composition_is_exact(sampler, tmp_path) -> None:
    out = tmp_path / "nacl.csv"
    config = small(force_composition=True, max_atoms=8)
    sampler.sample(config, out, conditions=[Attributes(formula="NaCl", spacegroup=225)], progress=False)
    for row in rows(out):
        assert json.loads(row["conditions"]) == {"formula": "NaCl", "spacegroup": 225}
        assert row["mode"] == "conditional"
        assert Composition(decode(row["raw_text"]).composition.reduced_formula) == Composition("NaCl")


def test_a_typed_formula_is_stated_in_the_order_the_model_writes_elements(sampler, tmp_path, monkeypatch) -> None:
    prompts = []
    generate = sampler.generate
    monkeypatch.setattr(sampler, "generate", lambda texts, *rest: prompts.extend(texts) or generate(texts, *rest))
    out = tmp_path / "ordered.csv"
    sampler.sample(small(n=2), out, conditions=[Attributes(formula="ClNa")], progress=False)
    assert set(prompts) == {Attributes(formula="NaCl").to_prompt()}
    assert {json.loads(row["conditions"])["formula"] for row in rows(out)} == {"NaCl"}


def test_guidance_samples_every_attempt(sampler, tmp_path) -> None:
    """Guided decoding end to end (its arithmetic: tests/test_decode.py)."""
    config = small(guidance_scale=3.0, max_atoms=8)
    summary = sampler.sample(config, tmp_path / "guided.csv", conditions=[Attributes(formula="NaCl")], progress=False)
    assert summary.attempts == 4 and all(r["cif"] or r["error"] for r in rows(tmp_path / "guided.csv"))


def test_conditions_come_from_a_dataset_csv(shared_data, tmp_path) -> None:
    pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=3).to_csv(tmp_path / "c.csv", index=False)
    conditions = read_conditions(tmp_path / "c.csv")
    assert conditions[0].formula == "GaTe" and conditions[0].spacegroup == 194
    (tmp_path / "empty.csv").write_text("material_id\nmp-1\n")
    with pytest.raises(ValueError, match="no conditions"):
        read_conditions(tmp_path / "empty.csv")
    (tmp_path / "bad.csv").write_text("formula,spacegroup.number\nNaCl,225\nXxO,12\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 3: formula 'XxO' has an unknown element 'Xx'$"):
        read_conditions(tmp_path / "bad.csv")


def test_resume_continues_to_exactly_n_with_the_same_samples(sampler, tmp_path) -> None:
    straight = tmp_path / "straight.csv"
    sampler.sample(small(n=6, batch_size=2), straight, progress=False)
    interrupted = tmp_path / "interrupted.csv"
    sampler.sample(small(n=2, batch_size=2), interrupted, progress=False)  # as if killed after one batch
    with open(interrupted, "a") as handle:
        handle.write('s0000002,unconditional,"{}","4.1 4')  # a row cut off mid-write
    with pytest.raises(FileExistsError, match="pass --resume"):
        sampler.sample(small(n=6, batch_size=2), interrupted, progress=False)
    summary = sampler.sample(small(n=6, batch_size=2), interrupted, resume=True, progress=False)
    assert summary.valid == summary.attempts == 6
    got = rows(interrupted)
    assert [r["id"] for r in got] == [f"s{i:07d}" for i in range(6)]
    assert [r["raw_text"] for r in got] == [r["raw_text"] for r in rows(straight)]


def test_infill_ranks_every_candidate_and_substitutes(sampler) -> None:
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ranked = sampler.infill(nacl, "Na", ["K", "Li", "Na", "Rb"])
    assert sorted(s.element for s in ranked) == ["K", "Li", "Na", "Rb"]
    assert [s.log_prob for s in ranked] == sorted((s.log_prob for s in ranked), reverse=True)
    assert all(s.log_prob < 0 for s in ranked)
    k = next(s for s in ranked if s.element == "K")
    assert k.structure.composition.reduced_formula == "KCl" and nacl.composition.reduced_formula == "NaCl"


def test_similar_elements_share_charge_and_radius() -> None:
    fe = similar_elements("Fe")
    assert {"Co", "Ni", "Mn"} <= set(fe) and "Na" not in fe and "Fe" not in fe


def test_cli_sample_and_infill(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "s.csv"
    args = ["sample", "--model", str(model_dir), "-n", "3", "--batch-size", "3", "--max-atoms", "3", "-o", str(out),
            "--formula", "NaCl", "--force-composition", "--cif-dir", str(tmp_path / "cifs"),
            "--extxyz", str(tmp_path / "s.extxyz")]
    assert main(args) == 0
    assert len(rows(out)) == 3 and len(list((tmp_path / "cifs").glob("*.cif"))) == 3
    assert write_structures(out) == 3
    cif = tmp_path / "nacl.cif"
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    capsys.readouterr()
    assert main(["sample", "--model", str(model_dir), "-n", "2", "-o", str(tmp_path / "i.csv"), "--infill", str(cif),
                 "--mask-element", "Cl", "--similar-only"]) == 0
    infill_rows = rows(tmp_path / "i.csv")
    assert len(infill_rows) == 2 and all(r["mode"] == "infill" for r in infill_rows)
    assert all(json.loads(r["conditions"])["masked"] == "Cl" for r in infill_rows)
    assert capsys.readouterr().out.count("Cl -> ") == 2
    assert main(["sample", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "x.csv")]) == 1


CROWDED = "4.0 4.0 4.0\n90 90 90\nNa\n0.00 0.00 0.00\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"


def test_atoms_closer_than_the_minimum_distance_are_an_error_row(tmp_path) -> None:
    """Two atoms on one site, where the grammar found no room for the second, make no CIF: its CIF would not
    read back; atoms 0.4 A apart make one that reads back, a structure only where no minimum distance is asked."""
    on_one_site = attempt_row("s0", "unconditional", {}, CROWDED, min_distance=0.5)
    assert on_one_site["cif"] == ""
    assert on_one_site["error"] == "atoms 0 and 1 are 0.00 A apart (< 0.5 A): no room left in the cell"
    unchecked = attempt_row("s1", "unconditional", {}, CROWDED)
    assert unchecked["cif"] == "" and unchecked["error"].startswith("its CIF does not read back: ")
    near = CROWDED.replace("Na\n0.00 0.00 0.00\nCl", "Na\n0.00 0.00 0.10\nCl")
    assert attempt_row("s2", "unconditional", {}, near, min_distance=0.5)["error"] == (
        "atoms 0 and 1 are 0.40 A apart (< 0.5 A): no room left in the cell")
    assert Structure.from_str(attempt_row("s3", "unconditional", {}, near)["cif"], fmt="cif").num_sites == 3
    # An asymmetric unit: the group's copies of one site 0.40 A apart ((x, 0, 0) and (0, x, 0), x = 0.07 of a 4 A cube)
    copies = attempt_row("s4", "unconditional", {}, "221\n4.0 4.0 4.0\n90 90 90\nNa\n0.07 0.00 0.00", min_distance=0.5)
    assert copies["cif"] == "" and re.fullmatch(
        r"atoms \d+ and \d+ are 0\.40 A apart \(< 0\.5 A\): the copies space group 221 makes of its sites land too "
        r"close", copies["error"]), copies["error"]
    out = tmp_path / "s.csv"
    SampleWriter(out, resume=False).append([on_one_site, unchecked])
    assert SampleWriter(out, resume=True).valid == 0 and list(parsed_structures(out)) == []


def test_an_attempt_the_grammar_found_no_room_for_is_not_counted(sampler, tmp_path, monkeypatch) -> None:
    """The summary counts only the attempts whose CIF reads back with its atoms apart: here 1 of 2."""
    fine = "4.0 4.0 4.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"
    monkeypatch.setattr(sampler, "generate", lambda prompts, *rest: [Completion(CROWDED), Completion(fine)])
    summary = sampler.sample(small(n=2, batch_size=2, max_attempts=2), tmp_path / "s.csv", progress=False)
    assert (summary.valid, summary.attempts) == (1, 2)
    crowded, written = rows(tmp_path / "s.csv")
    assert crowded == {"id": "s0000000", "mode": "unconditional", "conditions": "{}", "raw_text": CROWDED, "cif": "",
                       "error": "atoms 0 and 1 are 0.00 A apart (< 0.5 A): no room left in the cell"}
    assert written["error"] == "" and Structure.from_str(written["cif"], fmt="cif").num_sites == 2


def test_only_matching_keeps_the_crystals_that_have_the_prompted_formula_and_space_group(
    sampler, tmp_path, monkeypatch
) -> None:
    """Asked for NaCl in Fm-3m (225): rock salt is kept; the CsCl arrangement (Pm-3m, 221) and NaCl2 are rows
    saying what they wrote; without the option all three count."""
    rock_salt = "5.6 5.6 5.6\n90 90 90\n" + "".join(
        f"{el}\n{x} {y} {z}\n" for el, (x, y, z) in
        [("Na", (0, 0, 0)), ("Na", (0, 0.5, 0.5)), ("Na", (0.5, 0, 0.5)), ("Na", (0.5, 0.5, 0)),
         ("Cl", (0.5, 0.5, 0.5)), ("Cl", (0.5, 0, 0)), ("Cl", (0, 0.5, 0)), ("Cl", (0, 0, 0.5))]).rstrip()
    cesium_chloride = "3.3 3.3 3.3\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"
    two_chlorines = "4.0 4.0 6.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.25\nCl\n0.50 0.50 0.75"
    texts = [rock_salt, cesium_chloride, two_chlorines]
    monkeypatch.setattr(sampler, "generate", lambda prompts, *rest: [Completion(t) for t in texts])
    asked = [Attributes(formula="NaCl", spacegroup=225)]
    config = small(n=3, batch_size=3, max_attempts=3, max_atoms=8)
    kept = sampler.sample(replace(config, only_matching=True), tmp_path / "kept.csv", asked, progress=False)
    assert (kept.valid, kept.attempts, kept.refused) == (1, 3, 2)
    assert [r["error"] for r in rows(tmp_path / "kept.csv")] == [
        "", "not what the prompt asked: space group 221, asked 225",
        "not what the prompt asked: formula NaCl2, asked NaCl; space group 123, asked 225"]
    every = sampler.sample(config, tmp_path / "every.csv", asked, progress=False)
    assert (every.valid, every.refused) == (3, 0)


def test_the_shipped_model_counts_the_nacl_that_read_back(tmp_path, capsys) -> None:
    """The issue's command, cut to 4 attempts: each cell holds as many NaCl as its volume allows, and the count
    reported is that of the CIFs that read back with their atoms apart (it once said 20 of 20 where most did not)."""
    out = tmp_path / "s.csv"
    main(["sample", "-n", "4", "--batch-size", "4", "--max-attempts", "4", "--seed", "9", "--formula", "NaCl",
          "--spacegroup", "225", "--force-composition", "-o", str(out)])
    written = rows(out)
    readable = [Structure.from_str(r["cif"], fmt="cif") for r in written if r["cif"]]
    said = capsys.readouterr().err
    assert f"{len(readable)} valid structures from 4 attempts" in said
    assert "the default model reads a formula as the whole cell's" in said and "NaCl in 225 as Na4Cl4" in said
    assert all(structural_problem(s) is None for s in readable)
    for structure in map(decode, (r["raw_text"] for r in written)):
        per_atom = structure.volume / len(structure)
        assert len(structure) == 2 or MIN_VOLUME_PER_ATOM <= per_atom <= MAX_VOLUME_PER_ATOM


def test_without_a_model_the_shipped_default_samples(tmp_path) -> None:
    """`crystext sample` with no --model uses the model inside the package: float16, small, with its card."""
    from safetensors import safe_open

    from crystext.model import DEFAULT_MODEL_DIR

    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size < 25 * 2**20
    with safe_open(str(weights), "pt") as tensors:
        names = tensors.keys()  # safe_open is not iterable itself
        assert {str(tensors.get_tensor(name).dtype) for name in names} == {"torch.float16"}
    assert "10349 training structures, 545 held out" in (DEFAULT_MODEL_DIR / "README.md").read_text()
    out = tmp_path / "s.csv"
    assert main(["sample", "-n", "4", "--batch-size", "4", "--max-atoms", "8", "-o", str(out)]) == 0
    parsed = dict(parsed_structures(out))
    assert len(parsed) == 4 and all(len(s) <= 8 for s in parsed.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n": -5}, "n must be at least 1, got -5"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"temperature": 0.0}, "temperature must be positive (0 would write the same crystal every time), got 0.0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"min_distance": float("inf")}, "min_distance must be a distance >= 0 in Angstrom, got inf"),
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"guidance_scale": 0.0}, "guidance_scale must be positive (1: no guidance), got 0.0"),
    ],
)
def test_sample_config_refuses_settings_that_make_no_sense(changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        SampleConfig(**changes)
    assert str(caught.value) == message
    assert SampleConfig(top_p=1.0, min_distance=None).top_p == 1.0


def test_a_samples_file_with_only_its_header_does_not_block_a_new_run(tmp_path) -> None:
    """A run that wrote nothing (refused, killed before its first batch) leaves the header: a rerun starts afresh."""
    out = tmp_path / "s.csv"
    SampleWriter(out, resume=False)
    assert SampleWriter(out, resume=False).rows == []
    SampleWriter(out, resume=False).append([attempt_row("s0", "unconditional", {}, "no crystal")])
    with pytest.raises(FileExistsError, match="pass --resume"):
        SampleWriter(out, resume=False)
    assert len(SampleWriter(out, resume=True).rows) == 1


def test_infill_into_an_existing_file_needs_resume_and_adds_only_new_answers(model_dir, tmp_path, capsys) -> None:
    cif = tmp_path / "nacl.cif"
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    out = tmp_path / "i.csv"
    infill = ["sample", "--model", str(model_dir), "-o", str(out), "--infill", str(cif), "--mask-element", "Na"]
    assert main([*infill, "-n", "2"]) == 0
    assert main([*infill, "-n", "2"]) == 1  # refused before the model loads
    assert "i.csv exists: pass --resume" in capsys.readouterr().err
    assert main([*infill, "-n", "3", "--resume"]) == 0
    assert "2 of these answers were already in" in capsys.readouterr().err
    ids = [r["id"] for r in rows(out)]
    assert len(ids) == len(set(ids)) == 3


def sampler_writing(model_dir: Path, copy: Path, **text_format: bool) -> Sampler:
    """A sampler of the test model copied to `copy` with its text format changed as given."""
    shutil.copytree(model_dir, copy)
    info = json.loads((copy / "crystext.json").read_text())
    info["text_format"].update(text_format)
    (copy / "crystext.json").write_text(json.dumps(info))
    return Sampler.from_pretrained(copy)


def test_an_asymmetric_unit_model_writes_the_space_group_it_is_asked_for(model_dir, tmp_path) -> None:
    """A model trained on asymmetric units (here an untrained one, so the orbits are its guesses) is given the asked
    group as the first line of its text: every crystal read back has that group (or, if its sites happen to sit on
    special positions, a supergroup), and unprompted it writes a group line of its own."""
    sampler = sampler_writing(model_dir, tmp_path / "orbits", asymmetric_unit=True)
    asked, free = tmp_path / "asked.csv", tmp_path / "free.csv"
    sampler.sample(small(n=6, batch_size=6, max_atoms=3), asked, conditions=[Attributes(spacegroup=62)],
                   progress=False)
    sampler.sample(small(n=4, max_atoms=3), free, progress=False)
    readable = [row for row in rows(asked) if row["cif"]]
    assert readable and all(row["raw_text"].startswith("62\n") for row in rows(asked))
    groups = [spacegroup_number(decode(row["raw_text"])) for row in readable]
    assert sum(group == 62 for group in groups) >= len(groups) / 2, groups
    for row in rows(free):
        assert 1 <= int(row["raw_text"].split("\n")[0]) <= 230


def test_a_model_of_both_forms_answers_a_stated_group_with_an_asymmetric_unit_and_nothing_stated_with_a_cell(
        model_dir, tmp_path) -> None:
    """With `asymmetric_when_grouped` the sampler starts a space-group prompt's text with the group line (its
    crystals then read back with the group) and leaves an unprompted one the whole-cell form: lengths first."""
    sampler = sampler_writing(model_dir, tmp_path / "both", asymmetric_when_grouped=True)
    asked, free = tmp_path / "asked.csv", tmp_path / "free.csv"
    sampler.sample(small(n=4, batch_size=4, max_atoms=3), asked, conditions=[Attributes(spacegroup=62)],
                   progress=False)
    sampler.sample(small(n=4, max_atoms=3), free, progress=False)
    assert all(row["raw_text"].startswith("62\n") for row in rows(asked))
    for row in rows(free):
        assert len(row["raw_text"].split("\n")[0].split()) == 3, row["raw_text"]  # three lengths, no group line
