"""Evaluate generated crystals with the paper's metrics, under the protocol that produced published numbers.

    from crystext.evaluate import EvaluateConfig, ProtocolSettings, evaluate
    result = evaluate("samples.csv", "mp_20/test.csv", train=["mp_20/train.csv", "mp_20/val.csv"],
                      config=EvaluateConfig(protocol=ProtocolSettings("cdvae")))
    result.metrics["cov_recall"]; result.per_sample; result.write("out/")

Modules: `validity` (structural, compositional), `fingerprints` (CrystalNN and magpie),
`profiles` (per-structure work, parallel and cached), `coverage` (COV, AMSD/AMCD, diversity),
`distributions`, `sun` (uniqueness, novelty, stability rates and S.U.N.: each defined once),
`conditions` (conditional accuracy), `protocols` (`paper` and `cdvae`), `inputs` (side columns and
stability CSVs), `ipt` (translation invariance of a model, an optional step), `evaluation` (all of it),
`cli` (the `crystext evaluate` command line, not imported by the library).
"""

from crystext.evaluate.evaluation import EvaluateConfig, Evaluation, IptSettings, evaluate
from crystext.evaluate.fingerprints import FingerprintSettings
from crystext.evaluate.inputs import EvaluateError
from crystext.evaluate.protocols import PROTOCOLS, ProtocolSettings

__all__ = [
    "PROTOCOLS",
    "EvaluateConfig",
    "EvaluateError",
    "Evaluation",
    "FingerprintSettings",
    "IptSettings",
    "ProtocolSettings",
    "evaluate",
]
