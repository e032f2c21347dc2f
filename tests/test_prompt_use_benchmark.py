"""benchmarks/prompt_use.py: which tokens of a completion are first, new and repeated elements, and their counts."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import prompt_use  # noqa: E402


def test_element_tokens_split_into_first_new_and_repeated() -> None:
    tokens = ["6.8", " ", "6.8", "\n", "Nd", "\n", "0.00", "\n", "Al", "\n", "0.28", "\n", "Al", "\n", "0.50", "\n",
              "Cu", "\n", "0.10", "\n", "Al", "\n", "0.90"]
    assert prompt_use.element_parts(tokens) == {"first element": [4], "new elements": [8, 16],
                                                "repeated elements": [12, 20]}
    assert prompt_use.element_parts(["5.0", "\n", "90"]) == {"first element": [], "new elements": [],
                                                             "repeated elements": []}


def test_count_tokens_are_those_after_a_new_element_spaced_or_joined() -> None:
    spaced = ["90", "\n", "Nd", " ", "1", "\n", "0.00", "\n", "Al", " ", "12", "\n", "0.28", "\n", "Al", " ", "11"]
    assert prompt_use.count_parts(spaced, prompt_use.element_parts(spaced)) == {"first count": [4],
                                                                                "later counts": [10]}
    joined = ["90", "\n", "Nd", "1", "\n", "0.00", "\n", "Al", "12", "\n", "0.28", "\n", "Al", "11"]
    assert prompt_use.count_parts(joined, prompt_use.element_parts(joined)) == {"first count": [3],
                                                                                "later counts": [8]}
    paper = ["90", "\n", "Nd", "\n", "0.00", "\n", "Al", "\n", "0.28"]
    assert prompt_use.count_parts(paper, prompt_use.element_parts(paper)) == {"first count": [], "later counts": []}


def test_which_new_element_is_its_share_among_the_unwritten_elements() -> None:
    import math

    import torch

    elements = {"Na": 0, "Cl": 1, "O": 2}
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.2],   # first atom: Na (not a new element: nothing written before)
                          [0.6, 0.2, 0.1, 0.1],   # Cl after Na: which = Cl among {Cl, O} = 0.2 / 0.3
                          [0.1, 0.1, 0.4, 0.4]])  # O after Na, Cl: the only unwritten element left, which = 1
    which = prompt_use.which_new_nll(probs.log(), ["Na", "Cl", "O"], elements)
    assert math.isclose(which, -math.log(0.2 / 0.3), rel_tol=1e-5)
    assert prompt_use.which_new_nll(probs.log(), ["Na", "Na", "\n"], elements) == 0.0


def test_other_counts_keeps_the_elements_and_changes_the_reduced_formula() -> None:
    from pymatgen.core import Composition

    assert prompt_use.other_counts("Fe2O3") == "Fe3O2"
    assert prompt_use.other_counts("NaCl") == "Na2Cl1"
    assert Composition(prompt_use.other_counts("LiFePO4")) == Composition("Li4FePO")
    for formula in ("Fe2O3", "NaCl", "LiFePO4", "RbAl(SO4)2", "Bi2Se3"):
        moved = Composition(prompt_use.other_counts(formula))
        assert list(moved) == list(Composition(formula))
        assert moved.reduced_formula != Composition(formula).reduced_formula
