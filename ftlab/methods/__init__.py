"""The method registry: each name maps to one file's ``apply(model, **options)``.

Every method lives in its own module under ``ftlab/methods/``; this file only says which
module implements which name, and imports it when first asked for, so that reading one
method never requires reading the others.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

# name -> (module, options that the name implies)
METHODS: dict[str, tuple[str, dict]] = {
    "full": ("ftlab.methods.full", {}),
    "freeze": ("ftlab.methods.freeze", {}),
    "bitfit": ("ftlab.methods.bitfit", {}),
    "adapter": ("ftlab.methods.adapter", {}),
    "lora": ("ftlab.methods.lora", {}),
    "dora": ("ftlab.methods.lora", {"use_dora": True}),
    "qlora": ("ftlab.methods.qlora", {}),
    "loha": ("ftlab.methods.loha", {}),
    "lokr": ("ftlab.methods.lokr", {}),
    "ia3": ("ftlab.methods.ia3", {}),
    "prefix": ("ftlab.methods.prefix", {}),
    "prompt": ("ftlab.methods.prompt", {}),
}


def available() -> list[str]:
    """Names of the methods whose module is present in this installation."""
    names = []
    for name, (module, _) in METHODS.items():
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def apply(model: torch.nn.Module, method: str, **options) -> torch.nn.Module:
    """Apply fine-tuning ``method`` to ``model`` and return the model, ready to train.

    Freezes what the method keeps fixed and injects what it trains; ``options`` are the
    method's keyword arguments (same names and defaults as peft's where peft has them).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(available())}")
    module_name, implied = METHODS[method]
    if importlib.util.find_spec(module_name) is None:
        raise NotImplementedError(f"method {method!r} is not implemented yet; available: {', '.join(available())}")
    module = importlib.import_module(module_name)
    return module.apply(model, **{**implied, **options})
