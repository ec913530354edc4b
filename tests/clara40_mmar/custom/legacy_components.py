"""BYOC code as Clara 4.0 MMARs wrote it: a handler reading MONAI 0.5's batched engine output, and losses that
build the nested component configs they are given as plain dicts."""

import json
import os

import monai.losses
import torch
from ignite.engine import Events


class BatchRecorder:
    """Writes what it saw of ``engine.state.output`` at every iteration: MONAI 0.5 gave one batched dict."""

    def __init__(self, output_file):
        self.output_file = output_file
        self.seen = []

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine):
        output = engine.state.output
        if not isinstance(output, dict):
            raise TypeError(f"expected the batched output dict of MONAI 0.5, got {type(output).__name__}")
        self.seen.append({"batch": int(output["pred"].shape[0]), "loss": float(output["loss"])})
        os.makedirs(os.path.dirname(self.output_file), exist_ok=True)
        with open(self.output_file, "w") as f:
            json.dump(self.seen, f)


class ConfiguredLoss(torch.nn.Module):
    """Builds its inner loss from a component config (``{"name": ..., "args": ...}``), as Clara 4.0 passed it."""

    def __init__(self, base):
        super().__init__()
        if not isinstance(base, dict):
            raise TypeError(f"expected the nested component config as a dict, got {type(base).__name__}")
        self.base = getattr(monai.losses, base["name"])(**base.get("args", {}))

    def forward(self, pred, label):
        return self.base(pred, label)


class SummedLoss(torch.nn.Module):
    """The sum of losses built from a list of component configs, as Clara 4.0 passed them (plain dicts)."""

    def __init__(self, losses):
        super().__init__()
        if not all(isinstance(config, dict) for config in losses):
            raise TypeError(f"expected nested component configs as dicts, got {[type(c).__name__ for c in losses]}")
        self.losses = torch.nn.ModuleList(getattr(monai.losses, c["name"])(**c.get("args", {})) for c in losses)

    def forward(self, pred, label):
        return sum(loss(pred, label) for loss in self.losses)
