"""crystext: generate inorganic crystals with language models that read and write them as text.

The pipeline, one step per module, in order:

- `textformat`: a crystal as text (`CrystalText`, `encode`, `decode`, augmentation).
- `data`: benchmark datasets and structure files read into records, fetched where there is network.
- `prompts`: the generation and infill prompts shared by training and sampling.
- `model`: scratch presets and their tokenizer; pretrained models with LoRA; save and load.
- `train`: the training loop, with exact resume.
- `grammar`: the crystal grammar as an automaton, and the logits processor that keeps sampling inside it.
- `sample`: the batched sampler, the samples CSV, conditions, infill, export.
- `evaluate`: validity, fingerprints, coverage, distributions, uniqueness/novelty/S.U.N., the two protocols.
- `stability`: relaxation with a machine-learned potential, convex-hull references, the resumable run.
- `report`: the paper's table in Markdown and an HTML report with plots.

Shared by all: `constants` (the paper's numbers, named once), `errors` (`CrystextError`), `files` (atomic
writes, the append-only CSV), `provenance` (package versions, file digests); `cli` is the command line.
"""

from crystext.textformat import CrystalText, CrystalTextError, FormatOptions, augment, decode, encode

__version__ = "0.1.0"

__all__ = ["CrystalText", "CrystalTextError", "FormatOptions", "__version__", "augment", "decode", "encode"]
