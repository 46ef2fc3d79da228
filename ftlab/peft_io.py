"""Write and read peft's adapter files, so that an adapter moves between ftlab and peft unchanged.

A peft adapter is a folder with two files, the ones ``PeftModel.save_pretrained`` writes and
``PeftModel.from_pretrained(base_model, folder)`` reads:

* ``adapter_config.json``: the method (``"peft_type": "LORA"``) and its options under peft's
  names (``r``, ``lora_alpha``, ``target_modules``, ``modules_to_save``, ...);
* ``adapter_model.safetensors``: the adapter's tensors. A key is ``base_model.model.``, the
  module's name in the base model, then the parameter's name without the adapter name:

      ftlab parameter                                  peft key
      bert...query.lora_A.default.weight               base_model.model.bert...query.lora_A.weight
      bert...query.lora_magnitude_vector.default       base_model.model.bert...query.lora_magnitude_vector
      classifier.modules_to_save.default.weight        base_model.model.classifier.weight

ftlab's layers use peft's parameter names, so translating a key only drops (or puts back) the
adapter-name segment. A few tensors have another shape in peft: DoRA's magnitude of a conv is
``(1, out, 1, 1)`` there and IA3's vector ``(out, 1)``, ``(1, in)`` or ``(1, C, 1, 1)``, where
ftlab keeps plain vectors; ``PeftFormat.shapes`` lists them.

Which modules an adapter covers is written as peft's ``target_modules`` (and
``modules_to_save``, IA3's ``feedforward_modules``); ``peft_selection`` applies peft's matching
rules to them, so export can check that peft will select exactly ftlab's layers, and import
selects what peft would.

Both directions check everything before they change anything: a failing export writes no
file, a failing import leaves the model as it was. Only safetensors are read; a pickled
``adapter_model.bin`` is refused (safe files, DESIGN.md).
"""
from __future__ import annotations

import collections
import importlib
import importlib.util
import inspect
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods import METHODS
from ftlab.methods._inject import (ALL_LINEAR, TrainableCopy, Tuned, _candidate_modules, _matches, adapter_names,
                                   find_targets, inject, tuned_layers)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's prefix of every key: PeftModel.base_model (the tuner) .model (the base)

# adapter_config.json fields that describe the file, not the computation
METADATA = {"peft_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
            "inference_mode"}


def _ia3_vector(shape: torch.Size, options: dict) -> tuple:
    """peft's IA3 vector of a Linear / Conv1D: a column (out, 1) scales the output, a row (1, in) the input."""
    return (1, shape[0]) if options["is_feedforward"] else (shape[0], 1)


@dataclass(frozen=True)
class PeftFormat:
    """How the adapters of one ftlab method are written in peft's files."""

    peft_type: str  # adapter_config.json's "peft_type"
    method: str  # ftlab's registry name, also ``Tuned.method`` of its layers
    names: str  # the ftlab method names it covers, for messages
    layer_class: str  # the Tuned subclass in the method's file
    options: tuple[str, ...]  # ftlab options stored under the same name in adapter_config.json
    rank: str | None = None  # the option that peft's rank_pattern sets per layer
    alpha: str | None = None  # the option that peft's alpha_pattern sets per layer
    init: str | None = None  # the option that only sets initial values (loaded tensors replace them)
    init_values: tuple = (True, False)  # peft's values of ``init`` that leave the base weights alone
    flags: dict[str, str] = field(default_factory=dict)  # peft list of module names -> ftlab per-layer bool option
    layer_kinds: tuple[type, ...] = (nn.Linear, Conv1D, nn.Conv2d)  # base layers peft accepts
    fan_in_fan_out: bool = False  # the config says whether targets store their weight (in, out)
    fixed: dict = field(default_factory=dict)  # peft fields whose value ftlab always has
    ignored: tuple[str, ...] = ()  # peft fields without effect once the others are supported
    shapes: dict[tuple[str, type], Callable[[torch.Size, dict], tuple]] = field(default_factory=dict)

    def peft_shape(self, parameter: str, base_layer: nn.Module, shape: torch.Size, options: dict) -> tuple:
        """peft's shape of ftlab's tensor ``parameter`` (e.g. "lora_A") of ``shape`` on ``base_layer``."""
        for (name, kind), reshape in self.shapes.items():
            if name == parameter and isinstance(base_layer, kind):  # isinstance: QLoRA's 4-bit layers too
                return tuple(reshape(shape, options))
        return tuple(shape)

    def layer(self) -> type[Tuned]:
        """The ftlab layer class (imported when first needed, so each method file stays independent)."""
        module_name = METHODS[self.method][0]
        if importlib.util.find_spec(module_name) is None:
            raise NotImplementedError(f"ftlab's {self.method!r} method is not available, so peft's "
                                      f"{self.peft_type} adapters cannot be read")
        return getattr(importlib.import_module(module_name), self.layer_class)


LYCORIS_OPTIONS = ("r", "alpha", "rank_dropout", "module_dropout", "use_effective_conv2d")

PEFT_FORMATS = [
    PeftFormat(
        "LORA", "lora", "lora, dora", "LoraLayer", ("r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora"),
        rank="r", alpha="lora_alpha", init="init_lora_weights", init_values=(True, False, "gaussian"),
        fan_in_fan_out=True, fixed={"bias": "none", "lora_bias": False},
        ignored=("qalora_group_size", "megatron_core", "loftq_config", "eva_config", "corda_config"),
        shapes={("lora_magnitude_vector", nn.Conv2d): lambda s, o: (1, s[0], 1, 1)},
    ),
    # peft refuses LoHa and LoKr on GPT-2's Conv1D
    PeftFormat("LOHA", "loha", "loha", "LoHaLayer", LYCORIS_OPTIONS, rank="r", alpha="alpha", init="init_weights",
               layer_kinds=(nn.Linear, nn.Conv2d)),
    PeftFormat("LOKR", "lokr", "lokr", "LoKrLayer",
               LYCORIS_OPTIONS + ("decompose_both", "decompose_factor", "rank_dropout_scale"),
               rank="r", alpha="alpha", init="init_weights", init_values=(True, False, "lycoris"),
               layer_kinds=(nn.Linear, nn.Conv2d)),
    PeftFormat(
        "IA3", "ia3", "ia3", "IA3Layer", (), init="init_ia3_weights",
        flags={"feedforward_modules": "is_feedforward"}, fan_in_fan_out=True,
        shapes={("ia3_l", nn.Linear): _ia3_vector, ("ia3_l", Conv1D): _ia3_vector,
                ("ia3_l", nn.Conv2d): lambda s, o: (1, s[0], 1, 1)},
    ),
]


def supported() -> str:
    """The ftlab methods whose adapters peft can load: "lora, dora, loha, ..."."""
    return ", ".join(fmt.names for fmt in PEFT_FORMATS)


def _format(*, method: str | None = None, peft_type: str | None = None) -> PeftFormat | None:
    for fmt in PEFT_FORMATS:
        if fmt.method == method or fmt.peft_type == peft_type:
            return fmt
    return None


def peft_key(module_name: str, tensor_name: str) -> str:
    """peft's key of the tensor ``tensor_name`` (e.g. ``lora_A.default.weight``) of ftlab's layer ``module_name``.

    ``lora_A.default.weight`` -> ``base_model.model.<module_name>.lora_A.weight``;
    ``modules_to_save.default.weight`` -> ``base_model.model.<module_name>.weight``.
    """
    parts = tensor_name.split(".")
    kept = parts[2:] if parts[0] == "modules_to_save" else parts[:1] + parts[2:]  # parts[1] is the adapter name
    return PREFIX + module_name + "." + ".".join(kept)


def _adapter_tensors(layer: Tuned, adapter: str) -> list[tuple[str, torch.Tensor]]:
    """``(name inside the layer, tensor)`` of every parameter and buffer of ``adapter`` on ``layer``."""
    return [(name, tensor) for name, tensor in layer.state_dict(keep_vars=True).items()
            if not name.startswith("base_layer.") and name.split(".")[1:2] == [adapter]]


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


# ---------------------------------------------------------------- peft's matching rules

def _ends_with(name: str, keys: list[str] | str) -> bool:
    """peft's rule for modules_to_save and feedforward_modules: a regex matches the whole name, a list entry its end."""
    if isinstance(keys, str):
        return re.fullmatch(keys, name) is not None
    return any(name.endswith(key) for key in keys)


def _names_or_regex(config: dict, key: str, optional: bool = True) -> list[str] | str:
    value = config.get(key)
    if value is None and optional:
        return []
    if isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{key} in {CONFIG_NAME} must be a list of module names or a regex, got {value!r}")


def peft_selection(model: nn.Module, fmt: PeftFormat, config: dict) -> tuple[list[str], list[str], dict]:
    """What peft selects in ``model`` for ``config``: ``(adapted layers, modules_to_save, flags)``.

    peft's rules: ``target_modules`` as a regex matches whole names, as a list the name or its
    dotted end (``_inject.find_targets``); ``"all-linear"`` every linear layer but the output
    head; a module inside an entry of ``modules_to_save`` is never adapted; ``modules_to_save``
    (and IA3's ``feedforward_modules``) list entries match any end of a name. ``flags`` is
    ``{layer: {"is_feedforward": bool}}`` for IA3, else ``{layer: {}}``.
    """
    names = [name for name, _ in _candidate_modules(model)]
    targets = _names_or_regex(config, "target_modules", optional=False)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        adapted = find_targets(model, ALL_LINEAR)
    else:
        adapted = [name for name in names if _matches(name, targets)]
    to_save = _names_or_regex(config, "modules_to_save")
    if isinstance(to_save, str):
        raise ValueError(f"modules_to_save in {CONFIG_NAME} must be a list of module names, got {to_save!r}")
    adapted = [name for name in adapted if not any(re.match(rf"(^|.*\.){key}($|\..*)", name) for key in to_save)]
    # entries that match nothing are fine, as in peft (task_type SEQ_CLS adds "classifier" and "score")
    saved = [name for name in names if _ends_with(name, to_save) and _has_parameters(model.get_submodule(name))]
    flags = {name: {option: _ends_with(name, _names_or_regex(config, key)) for key, option in fmt.flags.items()}
             for name in adapted}
    return adapted, saved, flags


def _names_for_peft(selected: list[str], names: list[str], rule: Callable) -> list[str] | str:
    """``selected`` as a list of full names, or as a regex if the list ``rule`` would also select other names."""
    if [name for name in names if rule(name, selected)] == selected:
        return selected
    return "|".join(re.escape(name) for name in selected)


# ---------------------------------------------------------------- ftlab -> peft

def _check_exportable(model: nn.Module, adapter: str) -> tuple[PeftFormat, list, list]:
    """The format, the adapted layers and the modules_to_save of ``adapter``; ValueError if peft could not load it."""
    # BitFit, prefix and prompt tuning, full fine-tuning train tensors that no adapter file carries
    in_adapters = {id(t) for _, layer in tuned_layers(model)
                   for a in layer.adapters for t in layer.adapter_parameters(a)}
    outside = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_adapters]
    if outside:
        raise ValueError(f"{len(outside)} trainable parameters lie outside ftlab's adapter layers "
                         f"(e.g. {outside[:3]}), as BitFit, prefix/prompt tuning or full fine-tuning make them; "
                         f"a peft adapter file cannot carry them, so the export would lose them. export_peft "
                         f"writes {supported()} adapters: freeze the rest (train whole modules through "
                         f"modules_to_save)")
    layers = [(name, layer) for name, layer in tuned_layers(model) if adapter in layer.adapter_config]
    if not layers:
        raise ValueError(f"the model has no adapter called {adapter!r} (its adapters: {adapter_names(model)}); "
                         f"export_peft writes adapters made by ftlab.apply with method {supported()}")
    saved = [(name, layer) for name, layer in layers if isinstance(layer, TrainableCopy)]
    adapted = [(name, layer) for name, layer in layers if not isinstance(layer, TrainableCopy)]
    methods = sorted({layer.method for _, layer in adapted})
    fmt = _format(method=methods[0]) if len(methods) == 1 else None
    if fmt is None:
        made_by = f"method {' and '.join(map(repr, methods))}" if methods else "modules_to_save alone"
        raise ValueError(f"peft cannot load adapter {adapter!r}, made by ftlab's {made_by}; export_peft writes "
                         f"only {supported()} adapters")
    for name, layer in adapted:
        if not isinstance(layer.base_layer, fmt.layer_kinds):
            kinds = ", ".join(kind.__name__ for kind in fmt.layer_kinds)
            raise ValueError(f"peft's {fmt.peft_type} does not accept {type(layer.base_layer).__name__} layers such "
                             f"as {name!r} (only {kinds}), so it could not load this adapter")
    return fmt, adapted, saved


def _shared_value(fmt: PeftFormat, option: str, values: dict[str, object]) -> tuple[object, dict]:
    """The config's value of ``option``, plus a {regex: value} pattern for the layers that differ.

    Only the rank and alpha may differ per layer (peft's rank_pattern / alpha_pattern; ftlab's
    weighted sum of adapters makes such ranks). A pattern key is the layer's full name, escaped:
    peft matches it as a regex against the end of the module name.
    """
    common = collections.Counter(values.values()).most_common(1)[0][0]
    differ = {re.escape(name): value for name, value in values.items() if value != common}
    if differ and option not in (fmt.rank, fmt.alpha):
        found = sorted(set(map(str, values.values())))
        raise ValueError(f"{option} differs between the layers of this adapter ({found}); "
                         f"a peft config has one value of {option} for all layers")
    return common, differ


def peft_config(model: nn.Module, adapter_name: str = "default") -> dict:
    """The adapter_config.json (as a dict) that describes ftlab's adapter ``adapter_name`` to peft."""
    fmt, adapted, saved = _check_exportable(model, adapter_name)
    options = {name: layer.adapter_config[adapter_name] for name, layer in adapted}
    unknown = sorted({key for o in options.values() for key in o} - {*fmt.options, fmt.init, *fmt.flags.values()})
    if unknown:
        raise ValueError(f"ftlab options {unknown} have no peft equivalent, so peft could not load this adapter")
    config = {
        "peft_type": fmt.peft_type,
        "task_type": None,
        "inference_mode": True,
        "base_model_name_or_path": getattr(model, "name_or_path", None) or None,
        **fmt.fixed,
    }
    if fmt.init:  # only sets initial values, so any layer's value will do
        config[fmt.init] = next(iter(options.values()))[fmt.init]
    for option in fmt.options:
        config[option], differ = _shared_value(fmt, option, {name: o[option] for name, o in options.items()})
        if option == fmt.rank:
            config["rank_pattern"] = differ
        elif option == fmt.alpha:
            config["alpha_pattern"] = differ
    if fmt.fan_in_fan_out:
        config["fan_in_fan_out"] = any(isinstance(layer.base_layer, Conv1D) for _, layer in adapted)

    names = [name for name, _ in _candidate_modules(model)]
    targets = [name for name, _ in adapted]
    config["target_modules"] = _names_for_peft(targets, names, _matches)
    config["modules_to_save"] = [name for name, _ in saved] or None
    for key, option in fmt.flags.items():
        config[key] = _names_for_peft([name for name in targets if options[name][option]], names, _ends_with)
    flags = {name: {option: options[name][option] for option in fmt.flags.values()} for name in targets}
    if peft_selection(model, fmt, config) != (targets, [name for name, _ in saved], flags):
        raise ValueError(f"peft's name matching would select other modules than this adapter's in "
                         f"{type(model).__name__} (e.g. a modules_to_save name that ends another module's name)")
    return config


def peft_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_name`` under peft's keys and in peft's shapes (copies, on the CPU)."""
    fmt, adapted, saved = _check_exportable(model, adapter_name)
    tensors = {}
    for name, layer in adapted + saved:
        options = layer.adapter_config[adapter_name]
        for inner, tensor in _adapter_tensors(layer, adapter_name):
            shape = fmt.peft_shape(inner.split(".")[0], layer.base_layer, tensor.shape, options)
            tensors[peft_key(name, inner)] = tensor.detach().reshape(shape).to("cpu", copy=True)
    return tensors


def export_peft(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write ``adapter_name`` as a peft adapter folder; ``PeftModel.from_pretrained(base_model, folder)`` loads it.

    Writes ``adapter_config.json`` and ``adapter_model.safetensors`` (creating ``folder`` if
    needed, replacing those two files if present) and returns the folder. Methods and layers
    peft cannot load (BitFit, bottleneck adapters, prefix/prompt tuning, LoHa/LoKr on GPT-2's
    Conv1D, ...) raise ValueError before anything is written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; export_peft needs a folder to write the adapter into")
    config = peft_config(model, adapter_name)
    tensors = peft_state_dict(model, adapter_name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # write both files next to the folder first, then move them in, so no half-written adapter is left
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        Path(tmp, CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        folder.mkdir(exist_ok=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(os.path.join(tmp, name), folder / name)
    return folder


# ---------------------------------------------------------------- peft -> ftlab

def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(folder)!r}; a peft adapter folder holds {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME} (what PeftModel.save_pretrained writes)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it should be the config peft saved") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ValueError(f"{path} is not a peft adapter config: it needs a 'peft_type' such as 'LORA'")
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise ValueError(f"{str(folder)!r} holds adapter_model.bin, a pickle, which ftlab never loads (unpickling "
                             f"can run code); save the adapter as safetensors (peft's default in save_pretrained)")
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {str(folder)!r}; a peft adapter folder holds {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}); the file is damaged") from None


def _layer_options(fmt: PeftFormat, config: dict, adapted: list[str], flags: dict) -> dict[str, dict]:
    """ftlab's options for each adapted layer, from a peft config.

    Raises ValueError for any peft option that ftlab cannot reproduce (a field not known to
    ``fmt`` whose value is not empty or false), since the adapter would then compute something else.
    """
    known = {*fmt.options, *fmt.ignored, *fmt.flags, *METADATA, "target_modules", "modules_to_save"}
    known |= {name for name, on in [(fmt.init, fmt.init), ("fan_in_fan_out", fmt.fan_in_fan_out),
                                    ("rank_pattern", fmt.rank), ("alpha_pattern", fmt.alpha)] if on}
    for key, value in config.items():
        if key in fmt.fixed and value != fmt.fixed[key]:
            raise ValueError(f"peft option {key}={value!r} is not supported by ftlab's {fmt.method} "
                             f"(only {key}={fmt.fixed[key]!r}), so this adapter cannot be reproduced")
        if key not in fmt.fixed and key not in known and value not in (None, False, "", [], {}):
            raise ValueError(f"peft option {key}={value!r} is not supported by ftlab's {fmt.method}, "
                             f"so this adapter cannot be reproduced")
    for key in fmt.flags:
        if config.get(key) is None:
            raise ValueError(f"{CONFIG_NAME} has no {key}; list the module names (an empty list for none)")
    if fmt.init and config.get(fmt.init, True) not in fmt.init_values:
        raise ValueError(f"{fmt.init}={config[fmt.init]!r} changes the base weights when peft loads the adapter, "
                         f"which ftlab does not do; supported: {list(fmt.init_values)}")

    # options missing from the config take ftlab's defaults, which are peft's
    add = inspect.signature(fmt.layer().add).parameters
    options = {key: p.default for key, p in add.items() if p.default is not inspect.Parameter.empty}
    options.update({key: config[key] for key in fmt.options if key in config})
    if fmt.init:
        options[fmt.init] = True  # the loaded tensors replace the initial values
    patterns = {option: config.get(key) or {} for option, key in [(fmt.rank, "rank_pattern"),
                                                                  (fmt.alpha, "alpha_pattern")] if option}
    per_layer = {}
    for name in adapted:
        layer_options = {**options, **flags[name]}
        for option, pattern in patterns.items():
            # peft's rule: the first key that, as a regex, matches the end of the name (after a dot)
            key = next((key for key in pattern if re.match(rf"(.*\.)?({key})$", name)), None)
            if key is not None:
                layer_options[option] = pattern[key]
        per_layer[name] = layer_options
    return per_layer


def _plan(model: nn.Module, fmt: PeftFormat, per_layer: dict[str, dict], saved: list[str],
          adapter: str) -> dict[str, tuple[str, torch.Size, tuple]]:
    """peft key -> (ftlab state_dict key, ftlab shape, peft shape) of every tensor the adapter will have.

    Builds each layer's adapter on a throwaway wrapper of the base layer, which is not put
    into the model, so the model is not changed.
    """
    plan = {}
    layer_class = fmt.layer()
    for name, options in per_layer.items():
        module = model.get_submodule(name)
        base = module.base_layer if isinstance(module, Tuned) else module
        try:
            layer_class.check(base, name, **options)
        except TypeError as error:
            raise TypeError(f"{name!r}: {error}") from None
        trial = layer_class(base)
        trial.add_adapter(adapter, **options)
        for inner, tensor in _adapter_tensors(trial, adapter):
            shape = fmt.peft_shape(inner.split(".")[0], base, tensor.shape, options)
            plan[peft_key(name, inner)] = (f"{name}.{inner}", tensor.shape, shape)
    for name in saved:
        module = model.get_submodule(name)
        base = module.base_layer if isinstance(module, Tuned) else module
        for inner, tensor in base.state_dict().items():
            inner = f"modules_to_save.{adapter}.{inner}"
            plan[peft_key(name, inner)] = (f"{name}.{inner}", tensor.shape, tuple(tensor.shape))
    return plan


def _check_tensors(tensors: dict[str, torch.Tensor], plan: dict) -> None:
    missing = sorted(set(plan) - set(tensors))
    unexpected = sorted(set(tensors) - set(plan))
    if missing or unexpected:
        raise ValueError(f"{WEIGHTS_NAME} does not fit this model and config: {len(missing)} tensors missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                         f"the adapter was saved for another model or configuration")
    wrong = [f"{key}: {tuple(tensors[key].shape)} instead of {shape}" for key, (_, _, shape) in plan.items()
             if tuple(tensors[key].shape) != shape]
    if wrong:
        raise ValueError(f"{len(wrong)} tensors in {WEIGHTS_NAME} have the wrong shape for this model and config "
                         f"(e.g. {wrong[:3]})")


def import_peft(model: nn.Module, folder: str | os.PathLike, adapter_name: str = "default") -> nn.Module:
    """Apply the peft adapter saved in ``folder`` to ``model`` with ftlab; returns ``model``.

    Reads ``adapter_config.json`` and ``adapter_model.safetensors`` (never a pickle), builds the
    same adapter with ftlab's layers under ``adapter_name`` and loads its tensors, so the model
    computes what ``PeftModel.from_pretrained(model, folder)`` computes. As after
    ``ftlab.apply``, the adapter is trainable. A missing, damaged or mismatching file, or a
    peft option ftlab cannot reproduce, raises before the model is changed.
    """
    folder = Path(folder)
    config = _read_config(folder)
    fmt = _format(peft_type=config["peft_type"])
    if fmt is None:
        raise ValueError(f"ftlab cannot read peft's {config['peft_type']!r} adapters; supported peft types: "
                         f"{', '.join(f.peft_type for f in PEFT_FORMATS)}")
    adapted, saved, flags = peft_selection(model, fmt, config)
    if not adapted:
        raise ValueError(f"target_modules {config['target_modules']!r} in {CONFIG_NAME} match no module of "
                         f"{type(model).__name__}; the adapter was made for another model")
    names = [name for name, _ in _candidate_modules(model)]
    if [name for name in names if _matches(name, saved)] != saved:
        raise ValueError(f"the modules_to_save {saved} cannot be selected one by one in {type(model).__name__}")
    per_layer = _layer_options(fmt, config, adapted, flags)
    tensors = _read_tensors(folder)
    plan = _plan(model, fmt, per_layer, saved, adapter_name)
    _check_tensors(tensors, plan)

    # inject validates again (adapter name, merged layers) before it changes anything
    first = next(iter(per_layer.values()))
    inject(model, fmt.layer(), "|".join(re.escape(name) for name in adapted), adapter_name, first, saved or None,
           layer_options=per_layer)
    model.train(model.training)  # the new layers take the model's train/eval mode (dropout)
    state = model.state_dict()
    with torch.no_grad():
        for key, (target, shape, _) in plan.items():
            state[target].copy_(tensors[key].reshape(shape))
    return model
