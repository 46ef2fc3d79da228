"""The models that later notebooks reuse: shipped with ftlab, kept in a cache, or trained.

The SFT model (notebook 10) and the reward model (notebook 11) take minutes to train, and
notebooks 11 and 12 start from them. ``load_or_train`` gives such a model from the first
place that has it:

1. **shipped**: ``data/<kind>_tiny/``, made by ``tools/train_alignment_models.py``, when the
   settings it records equal the code's current ones;
2. **cache**: ``$FTLAB_CACHE`` (default ``~/.cache/ftlab``), one folder per kind and settings;
3. **trained** here and now, then saved to the cache.

An entry, shipped or cached, is a folder with ``model.safetensors`` and ``info.json``:
``{"kind", "version", "settings", "sha256", "shapes", "results"}``. ``settings`` names
everything the weights depend on: the hyperparameters and seed, the SHA-256 of the starting
checkpoint, and ``CACHE_VERSION``, which is raised whenever the training code changes what
it produces; a cache folder's name is a hash of them. An entry is used only when its
``info.json`` is an object of this version with exactly these settings, and its weights file
has the recorded SHA-256 and the recorded shapes, which fit the model. Anything else (damaged,
another model's weights, an older version) is trained again, with a ``CacheWarning``.

Writing is atomic: each writer builds the entry in a temporary folder of its own and renames
it into place, so a reader sees a whole entry or none, and two processes writing the same key
never share a file. A cache that cannot be written warns and still returns the trained model.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ftlab.validate import check_choice
from ftlab.zoo import DATA_DIR, file_sha256

CACHE_VERSION = 2  # raise it when a change to the training code changes the models it produces
SOURCES = ("auto", "shipped", "train")
ENTRY_FILES = ("model.safetensors", "info.json")


class CacheWarning(UserWarning):
    """A cached model could not be used or saved; ftlab trained it (again) instead."""


def default_cache_dir() -> Path:
    """Where trained models are kept for later notebooks: ``$FTLAB_CACHE``, else ``~/.cache/ftlab``."""
    return Path(os.environ.get("FTLAB_CACHE") or Path.home() / ".cache" / "ftlab")


def shipped_dir(kind: str) -> Path:
    """The folder of the shipped model of ``kind``: ``data/<kind>_tiny``."""
    return DATA_DIR / f"{kind}_tiny"


def display_path(folder: str | Path) -> str:
    """``folder`` as shown to users: relative to the repository (``data/sft_tiny``) or to the cache
    (``$FTLAB_CACHE/sft-...`` or ``~/.cache/ftlab/sft-...``), never an absolute path of this machine,
    unless it lies elsewhere (a ``cache_dir`` given explicitly)."""
    folder = Path(folder).absolute()
    cache_label = "$FTLAB_CACHE" if os.environ.get("FTLAB_CACHE") else "~/.cache/ftlab"
    for root, label in ((default_cache_dir().absolute(), cache_label), (DATA_DIR.parent, None)):
        if folder.is_relative_to(root):
            relative = folder.relative_to(root).as_posix()
            return f"{label}/{relative}" if label else relative
    return str(folder)


def settings_key(settings: dict) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as sorted JSON: the same settings, the same key."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(kind: str, settings: dict, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir / "<kind>-<settings_key(settings)>"``.

    ``settings`` must name everything the trained weights depend on (hyperparameters, seed, the
    SHA-256 of the starting checkpoint, ``CACHE_VERSION``), so that a change to any of them
    gives a new folder.
    """
    return Path(cache_dir or default_cache_dir()) / f"{kind}-{settings_key(settings)}"


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in sorted(state.items())}


def save_entry(model: nn.Module, folder: str | Path, kind: str, settings: dict, results: dict, *,
               dtype: torch.dtype | None = None, files: dict[str, str] | None = None) -> bool:
    """Write ``model`` as an entry (see the module docstring) to ``folder``, atomically; True when saved.

    ``dtype=torch.float16`` stores the floating-point weights at half the bytes (the shipped
    models); ``files``: more text files for the folder, e.g. ``{"README.md": card}``. When the
    folder cannot be written, a ``CacheWarning`` says so and False is returned: the caller
    keeps its model, only the shortcut is lost.
    """
    from safetensors.torch import load_file, save_model

    folder = Path(folder)
    partial = folder.parent / f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"  # this writer's own
    try:
        partial.mkdir(parents=True)
        weights = partial / "model.safetensors"
        save_model(copy.deepcopy(model).to(dtype) if dtype else model, str(weights))  # tied weights stored once
        info = {"kind": kind, "version": CACHE_VERSION, "settings": settings, "sha256": file_sha256(weights),
                "shapes": _shapes(load_file(str(weights))), "results": results}
        (partial / "info.json").write_text(json.dumps(info, indent=1) + "\n")
        for name, text in (files or {}).items():
            (partial / name).write_text(text)
        _move_into_place(partial, folder)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        warnings.warn(f"could not save the {kind} model to {display_path(folder)} ({err.strerror or err}); the "
                      f"trained model is returned but not kept, so it will be trained again next time. Set "
                      f"$FTLAB_CACHE to a folder you can write to keep it.", CacheWarning, stacklevel=3)
        return False
    return True


def _move_into_place(partial: Path, folder: Path) -> None:
    """Rename the finished ``partial`` folder to ``folder``, replacing an older entry there.

    If another process has put an entry there in the meantime, theirs (made with the same
    settings) is kept and ours dropped: either way the folder holds one writer's whole entry.
    """
    if folder.exists():
        stale = folder.parent / f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}.stale"
        with contextlib.suppress(FileNotFoundError):  # another writer moved it first
            folder.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        partial.rename(folder)
    except OSError:
        if not (folder / "info.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def read_entry(model: nn.Module, folder: str | Path, kind: str,
               settings: dict) -> tuple[dict | None, str | None]:
    """Load the entry at ``folder`` into ``model`` if it is the one expected.

    Returns ``(info, None)`` after loading; ``(None, None)`` when there is no entry; ``(None,
    reason)`` when there is one that cannot be used (damaged, foreign, another version or other
    settings). In both failing cases ``model`` is left exactly as it was: every check runs
    before a weight is copied. The weights file is read once, and that one read is hashed and
    loaded, so the weights are the ones the SHA-256 vouches for.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    folder = Path(folder)
    if not any((folder / name).exists() for name in ENTRY_FILES):
        return None, None
    try:
        info = json.loads((folder / "info.json").read_text())
        data = (folder / "model.safetensors").read_bytes()
    except (OSError, ValueError) as err:  # a missing file, unreadable JSON
        return None, f"it cannot be read ({type(err).__name__}: {err})"
    if not isinstance(info, dict):
        return None, f"its info.json holds a JSON {type(info).__name__}, not an object"
    if info.get("version") != CACHE_VERSION:
        return None, f"it was written by cache version {info.get('version')!r}, this is version {CACHE_VERSION}"
    if info.get("kind") != kind or info.get("settings") != settings:
        difference = _difference(info.get("settings"), settings)
        return None, f"it holds a {info.get('kind')!r} model made with other settings ({difference})"
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        return None, "its weights do not have the SHA-256 its info.json records (damaged, or another model's)"
    try:
        state = load_bytes(data)
    except (SafetensorError, ValueError) as err:
        return None, f"its weights cannot be read ({err})"
    problem = _fit_problem(model, state, info.get("shapes"))
    if problem:
        return None, problem
    model.load_state_dict(state, strict=False)  # the keys left out are tied to loaded ones (checked above)
    return info, None


def _difference(found, expected: dict) -> str:
    if not isinstance(found, dict):
        return f"settings {found!r}"
    keys = sorted(set(found) | set(expected), key=str)
    return ", ".join(f"{k}: {found.get(k)!r} there, {expected.get(k)!r} here" for k in keys
                     if found.get(k) != expected.get(k))


def _fit_problem(model: nn.Module, state: dict[str, torch.Tensor], shapes) -> str | None:
    """Why ``state`` (read from an entry recording ``shapes``) cannot be loaded into ``model``; None when it can."""
    if _shapes(state) != shapes:
        return "its weights do not have the shapes its info.json records"
    expected = model.state_dict()
    unknown = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    loaded = {expected[k].data_ptr() for k in state if k in expected}
    missing = sorted(k for k in set(expected) - set(state) if expected[k].data_ptr() not in loaded)  # not tied
    if unknown or wrong or missing:
        return (f"its weights do not fit this {type(model).__name__}: unknown {unknown[:3]}, other shapes "
                f"{wrong[:3]}, missing {missing[:3]}")
    return None


def load_or_train(kind: str, settings: dict, model: nn.Module, train: Callable[[], tuple[nn.Module, dict]], *,
                  source: str = "auto", cache_dir: str | Path | None = None) -> dict:
    """The model of ``kind`` made with ``settings``: shipped, cached, or trained now (see the module docstring).

    ``model``: a model of the right architecture; the weights of a shipped or cached entry are
    loaded into it. ``train()``: trains one and returns ``(trained_model, results)``, results
    being a JSON-ready dict (metrics, losses) kept with the weights. ``source``:

    * ``"auto"``: shipped if it matches ``settings``, else the cache, else train and save;
    * ``"shipped"``: the shipped model, or a ValueError saying why it does not match;
    * ``"train"``: train now (the lesson of notebooks 10 and 11), and save to the cache.

    Returns ``{"model", "results", "source"}`` (``"shipped"``, ``"cache"`` or ``"trained"``),
    ``"folder"`` (where the weights are, as shown to users: ``display_path``) and ``"saved"``
    (False when a trained model could not be written to the cache).
    """
    check_choice("source", source, SOURCES)
    folder = cache_folder(kind, settings, cache_dir)
    if source != "train":
        shipped = shipped_dir(kind)
        info, problem = read_entry(model, shipped, kind, settings)
        if info is not None:
            return {"model": model, "results": info["results"], "source": "shipped",
                    "folder": display_path(shipped), "saved": True}
        if source == "shipped":
            raise ValueError(f"the shipped {kind} model ({display_path(shipped)}) cannot be used: "
                             f"{problem or 'it is missing'}. Regenerate it with "
                             f"`python tools/train_alignment_models.py` (classroom mode), or pass source='auto' to "
                             f"load a cached one or train it here")
        info, problem = read_entry(model, folder, kind, settings)
        if info is not None:
            return {"model": model, "results": info["results"], "source": "cache", "folder": display_path(folder),
                    "saved": True}
        if problem is not None:
            warnings.warn(f"ignoring the cached {kind} model {display_path(folder)}: {problem}; training it again",
                          CacheWarning, stacklevel=3)
    trained, results = train()
    saved = save_entry(trained, folder, kind, settings, results)
    return {"model": trained, "results": results, "source": "trained", "folder": display_path(folder),
            "saved": saved}
