"""What one training step reports to the epoch loop, shared by the search strategies and retraining without
either importing the loop (:mod:`sldarts.run`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class StepOutput:
    """What one training step reports to the loop."""

    loss: Tensor  # detached scalar, on the device (no host sync)
    correct: Tensor  # detached count of correct top-1 predictions
    count: int
    skipped: bool = False  # nan_policy=skip dropped this batch


def all_finite(tensors) -> bool:
    """One host sync: whether every given tensor (None entries ignored) is finite."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None]
    return bool(torch.stack(flags).all()) if flags else True


def skipped_step(device: torch.device) -> StepOutput:
    zero = torch.zeros((), device=device)
    return StepOutput(zero, zero, 0, skipped=True)
