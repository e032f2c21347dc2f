"""trl's DPO with real training crystals mixed in: the "pretraining mix" of RLHF, for `TuneConfig.data_weight`.

DPO alone moves the model toward the crystals its rewards prefer, and what it writes narrows (every tuned model lost
coverage of MP-20 test). Each step here also takes a batch of the training set, made as the model's own training
made its examples, and adds `weight` times its next-token loss (`crystext.train.weighted_loss`) to trl's DPO loss.
Imported only where a round updates its model: trl is slow to import.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from trl import DPOTrainer

from crystext.train import weighted_loss

__all__ = ["MixedDPOTrainer"]


class MixedDPOTrainer(DPOTrainer):
    """trl's `DPOTrainer` whose training loss adds `data_weight` times the loss of the next batch of `data` (None:
    plain DPO); that loss is logged as `data_loss`."""

    def __init__(self, *args: Any, data: Iterator[dict[str, torch.Tensor]] | None = None, data_weight: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data, self.data_weight = data, data_weight

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.data is None or not model.training:
            return result
        batch = {name: value.to(self.accelerator.device) for name, value in next(self.data).items()}
        data_loss = weighted_loss(model, batch)
        self._metrics["train"]["data_loss"].append(data_loss.item())
        if return_outputs:
            loss, outputs = result
            return loss + self.data_weight * data_loss, outputs
        return result + self.data_weight * data_loss
