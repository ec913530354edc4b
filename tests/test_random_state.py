"""random_states_kept: work inside the block leaves the global random generators as they were before it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clara_fl.runtime.random_state import random_states_kept


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_draws_after_the_block_are_those_that_would_have_come_without_it() -> None:
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected = draws()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)

    with random_states_kept():
        draws()
    after = draws()

    assert after == expected


def test_the_generators_are_restored_when_the_block_raises() -> None:
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = draws()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)

    with pytest.raises(RuntimeError, match="failed"), random_states_kept():
        draws()
        raise RuntimeError("failed")

    assert draws() == expected
