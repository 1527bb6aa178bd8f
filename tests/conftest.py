"""Fixtures and pytest hooks; the shared helper functions and constants are in helpers.py."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
