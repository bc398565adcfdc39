"""Fixtures shared by every test package."""

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device device-aware tests run on: $R1KIT_TEST_DEVICE (e.g. `cuda`), the CPU by default.

    `R1KIT_TEST_DEVICE=cuda python -m pytest -q tests/generation` runs the generation tests on a GPU."""
    return torch.device(os.environ.get("R1KIT_TEST_DEVICE", "cpu"))
