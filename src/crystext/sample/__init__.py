"""Sample crystals from a trained model: unconditional, text-conditional, and infill (element substitution).

- `sampler`: `Sampler` (a loaded model; batched, grammar-constrained decoding) and `SampleConfig`.
- `samples_csv`: the samples CSV, one row per attempt (id, mode, conditions, raw_text, cif, error), appended a
  batch at a time so a killed run keeps what it made and resumes to the requested count.
- `conditions`: prompts' conditions read from a dataset-style CSV.
- `infill`: ranking replacements for a masked element by the model's log-probability.
- `chemistry`: elements of similar charge and ionic radius, the candidates of a `--similar-only` infill.
- `export`: parseable samples as a folder of CIF files or one extxyz file.
"""

from crystext.sample.chemistry import similar_elements
from crystext.sample.conditions import read_conditions
from crystext.sample.export import write_structures
from crystext.sample.infill import Substitution, rank_substitutions, substitution_row
from crystext.sample.sampler import Completion, SampleConfig, Sampler, SampleSummary
from crystext.sample.samples_csv import COLUMNS, SampleWriter, attempt_row, parsed_structures

__all__ = [
    "COLUMNS",
    "Completion",
    "SampleConfig",
    "SampleSummary",
    "SampleWriter",
    "Sampler",
    "Substitution",
    "attempt_row",
    "parsed_structures",
    "rank_substitutions",
    "read_conditions",
    "similar_elements",
    "substitution_row",
    "write_structures",
]
