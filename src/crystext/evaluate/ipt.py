"""IPT, the increase in perplexity under transformation (Gruver et al. 2024, the translation-invariance measure).

For a structure s and random translations g of all its sites, IPT(s) = E_g[PPL(g s)] - min_g PPL(g s):
how much worse, on average, the model finds a translated copy than the copy it likes best. A model
that has learned translation invariance scores 0. Perplexity is over the crystal text (the
completion after the unconditional generation prompt, end-of-sequence included), tokenised exactly
as training tokenises it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from crystext.errors import CrystextError

__all__ = ["ipt"]


def ipt(
    model_dir: str | Path | tuple[Any, Any],
    structures: Sequence[Structure],
    n_translations: int = 20,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean IPT over ``structures`` (and the per-structure values) for a `crystext train` model directory.

    ``model_dir`` may also be a ready (model, tokenizer) pair. The untranslated text is one of the
    copies, so min PPL is over it and ``n_translations - 1`` random translations.
    """
    import torch
    from tqdm.auto import tqdm

    from crystext.prompts import Attributes, generation_example
    from crystext.textformat import CrystalText, FormatOptions, augment
    from crystext.train import IGNORE, collate, tokenize_pair

    if isinstance(model_dir, tuple):
        model, tokenizer = model_dir
        options = FormatOptions()
    else:
        from crystext.model import load_model

        model, tokenizer, info = load_model(model_dir)
        fmt = (info.get("config") or {}).get("text_format") or info.get("text_format") or {}
        options = FormatOptions(**fmt) if isinstance(fmt, dict) and fmt else FormatOptions()
    if options.asymmetric_unit:
        raise CrystextError("IPT measures how a model's likelihood changes as a crystal is translated; an asymmetric "
                         "unit's origin is fixed by its space group, so the measure does not apply")
    model.eval()
    rng = np.random.default_rng(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    values, ppl_min, ppl_mean = [], [], []
    for structure in tqdm(structures, desc="IPT", disable=not progress):
        crystal = CrystalText.from_structure(structure)
        copies = [crystal] + [augment(crystal, rng) for _ in range(n_translations - 1)]
        rows = [tokenize_pair(tokenizer, *generation_example(c, Attributes(), options), True, 10**6) for c in copies]
        ppl = []
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start:start + batch_size], pad)
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            mask = labels != IGNORE
            token_lp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            nll = -(token_lp.sum(1) / mask.sum(1).clamp(min=1))
            ppl.extend(math.exp(float(x)) for x in nll)
        ppl_arr = np.array(ppl)
        values.append(float(ppl_arr.mean() - ppl_arr.min()))
        ppl_min.append(float(ppl_arr.min()))
        ppl_mean.append(float(ppl_arr.mean()))
    return {
        "ipt": float(np.mean(values)) if values else math.nan,
        "n_structures": len(values),
        "n_translations": n_translations,
        "per_structure": values,
        "mean_min_perplexity": float(np.mean(ppl_min)) if ppl_min else math.nan,
        "mean_perplexity": float(np.mean(ppl_mean)) if ppl_mean else math.nan,
    }
