"""The process's random generators, kept as they were around work that must not change what follows it.

A MONAI/PyTorch data loader draws its shuffling seed from torch's global generator each time it is iterated, so
an extra evaluator run (a site option such as ``keep_better_model``) would shift every random crop and shuffle of
the training after it: the site would send a different model for having scored one. Python's ``random``, NumPy's
global generator, torch's CPU generator and, where CUDA is in use, every CUDA device's generator are restored.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["random_states_kept"]


@contextmanager
def random_states_kept() -> Iterator[None]:
    """Run the block, then put the global random generators back as they were before it (also when it raises).

    torch's generators are torch's own :func:`torch.random.fork_rng`'s; it is given the CUDA devices only where
    CUDA is already in use, since asking for a device's state would start CUDA in a process that never uses it.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    cuda_in_use = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda_in_use else []
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
