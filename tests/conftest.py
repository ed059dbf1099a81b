"""Shared test set-up: deterministic seeds and a small thread count (CI has 2 cores, pytest-xdist runs 2 workers)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
