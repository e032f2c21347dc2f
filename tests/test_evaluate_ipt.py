"""IPT as the optional metric of `crystext evaluate`, with a tiny scratch model (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Structure

from crystext.errors import CrystextError
from crystext.evaluate import EvaluateConfig, IptSettings, evaluate


def test_ipt_through_evaluate_matches_the_function(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from crystext.evaluate.ipt import ipt
    from crystext.model import build_scratch_model, save_model, train_scratch_tokenizer
    from crystext.textformat import CrystalText

    reference = tmp_path / "reference.csv"
    pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=3).to_csv(reference, index=False)
    structures = [Structure.from_str(cif, fmt="cif") for cif in pd.read_csv(reference)["cif"][:2]]
    tokenizer = train_scratch_tokenizer(CrystalText.from_structure(s).to_str() for s in structures)
    model = build_scratch_model("scratch-tiny", tokenizer, seed=0)
    direct = ipt((model, tokenizer), structures, n_translations=4, seed=0)
    assert direct["n_structures"] == 2 and direct["ipt"] >= 0 and math.isfinite(direct["mean_min_perplexity"])

    save_model(model, tokenizer, tmp_path / "model", {"text_format": {"length_decimals": 1, "angle_decimals": 0,
                                                                      "coord_decimals": 2}})
    config = EvaluateConfig(progress=False, cache_samples=True, matcher=False,
                            ipt=IptSettings(tmp_path / "model", n_structures=2, n_translations=4, seed=0))
    result = evaluate(reference, reference, config=config)
    assert result.metrics["ipt"] == pytest.approx(direct["ipt"], rel=1e-4)
    assert result.info["ipt"]["n_translations"] == 4

    save_model(model, tokenizer, tmp_path / "orbits", {"text_format": {"asymmetric_unit": True}})
    with pytest.raises(CrystextError, match="an asymmetric unit's origin is fixed by its space group"):
        ipt(tmp_path / "orbits", structures, n_translations=4)
