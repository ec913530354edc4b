"""BYOC loss for the reference config trn_BYOC_Arch_loss.json."""

import torch
from monai.losses import DiceLoss


class MyDiceLoss(DiceLoss):
    """Dice loss that also reports how often it ran (a user's own logic, reached through ``path``)."""

    calls = 0

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        MyDiceLoss.calls += 1
        if MyDiceLoss.calls == 1:
            print("MyDiceLoss: first call", flush=True)  # seen by a test from outside a --safe run's process
        return super().forward(input, target)
