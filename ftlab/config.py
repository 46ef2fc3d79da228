"""Run mode, seeding and device choice.

FAST mode (environment variable ``FTLAB_FAST=1``, set by the test configuration) shrinks
steps, examples and sequence lengths so that every code path still runs in CI. Classroom
mode, the default, uses the full sizes the notebooks were written for.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

FAST: bool = os.environ.get("FTLAB_FAST", "0").strip().lower() in {"1", "true", "yes"}


def pick(classroom, fast):
    """Return ``fast`` in FAST mode and ``classroom`` otherwise, e.g. ``pick(300, 20)`` steps."""
    return fast if FAST else classroom


def mode() -> str:
    """The name of the current run mode: ``"FAST"`` or ``"classroom"``."""
    return "FAST" if FAST else "classroom"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) with one number."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``. ``FTLAB_DEVICE`` overrides it."""
    name = os.environ.get("FTLAB_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
