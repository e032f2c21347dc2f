"""crystext: generate inorganic crystals with language models that read and write them as text.

The pipeline, one module each: `textformat` (crystals as text) -> `data` (datasets) -> model ->
train -> sample -> evaluate -> report.
"""

from crystext.textformat import CrystalText, CrystalTextError, FormatOptions, augment, decode, encode

__version__ = "0.1.0"

__all__ = ["CrystalText", "CrystalTextError", "FormatOptions", "__version__", "augment", "decode", "encode"]
