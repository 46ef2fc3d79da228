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

ftlab's layers use peft's parameter names and module layout (LoRA on nn.MultiheadAttention keeps
out_proj's adapter in a wrapper at ``<attention>.base_layer.out_proj``, as peft), so translating a key
only drops (or puts back) the adapter-name segment. A few tensors have another shape in peft: DoRA's
magnitude of a conv is ``(1, out, 1, 1)`` there, IA3's vector ``(out, 1)``, ``(1, in)`` or
``(1, C, 1, 1)`` and an nn.Conv1d's LoHa/LoKr Tucker core ``(r, r, k, 1)``, where ftlab keeps plain
vectors and ``(r, r, k)``; ``PeftFormat.shapes`` lists them.

Which method writes which ``peft_type`` is each method's ``SPEC.peft`` (``ftlab.methods.registry()``);
peft options ftlab does not reproduce are refused with what ftlab offers instead, by ``import_peft``
as by ``ftlab.apply``. LoRA's ``bias="lora_only"``/``"all"`` trains base biases, which the file carries
under their own names, as peft's does.

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
import copy
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.methods import method_spec, registry
from ftlab.methods.base import (
    ALL_LINEAR,
    MethodSpec,
    PeftFormat,
    Plan,
    TrainableCopy,
    TunedLayer,
    adapter_names,
    candidate_modules,
    carry_out,
    layer_index,
    matches,
    output_head_names,
    plan_injection,
    tuned_layers,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's prefix of every key: PeftModel.base_model (the tuner) .model (the base)

# adapter_config.json fields that describe the file, not the computation
METADATA = {"peft_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision", "task_type",
            "inference_mode"}
# fields that say which modules are adapted or saved; peft_selection applies peft's rules to them
SELECTION = {"target_modules", "modules_to_save", "layers_to_transform", "layers_pattern"}


def exporting_specs() -> list[MethodSpec]:
    """The methods whose adapters peft can load (their SPEC has a peft format)."""
    return [spec for spec in registry().values() if spec.peft is not None]


def supported() -> str:
    """The ftlab methods whose adapters peft can load: "lora, dora, loha, ..." (QLoRA's LoRA adapter too)."""
    return ", ".join(spec.name for spec in exporting_specs())


def spec_for_peft_type(peft_type: str) -> MethodSpec | None:
    """The method that reads peft's ``peft_type`` adapters (LORA: lora, whose use_dora option makes DoRA)."""
    return next((spec for spec in exporting_specs() if spec.peft.peft_type == peft_type and not spec.implied), None)


def peft_key(module_name: str, tensor_name: str) -> str:
    """peft's key of the tensor ``tensor_name`` (e.g. ``lora_A.default.weight``) of ftlab's layer ``module_name``.

    ``lora_A.default.weight`` -> ``base_model.model.<module_name>.lora_A.weight``;
    ``modules_to_save.default.weight`` -> ``base_model.model.<module_name>.weight``.
    """
    parts = tensor_name.split(".")
    kept = parts[2:] if parts[0] == "modules_to_save" else parts[:1] + parts[2:]  # parts[1] is the adapter name
    return PREFIX + module_name + "." + ".".join(kept)


def layer_tensors(name: str, layer: TunedLayer, adapter: str) -> list[tuple[str, str, str, torch.Tensor, TunedLayer]]:
    """``(ftlab key, peft key, attribute, tensor, wrapper)`` of every tensor of ``adapter`` on ``layer`` (called
    ``name``) and on the wrappers inside it (nn.MultiheadAttention's out_proj); ``attribute`` is e.g. "lora_A"."""
    found = []
    for inner_name, inner in tuned_layers(layer):
        full = f"{name}.{inner_name}" if inner_name else name
        for key, tensor in inner.state_dict(keep_vars=True).items():
            attribute, _, rest = key.partition(".")
            if attribute != "base_layer" and rest.split(".")[0] == adapter:
                found.append((f"{full}.{key}", peft_key(full, key), attribute, tensor, inner))
    return found


def outer_layers(model: nn.Module) -> list[tuple[str, TunedLayer]]:
    """The wrapped layers that are not inside another wrapper: the modules an adapter file names."""
    layers = tuned_layers(model)
    return [(name, layer) for name, layer in layers
            if not any(name.startswith(other + ".") for other, _ in layers if other != name)]


def trained_biases(model: nn.Module, layers: dict[str, object], saved: list[str]) -> dict[str, nn.Parameter]:
    """``{name after wrapping: parameter}`` of the base biases that LoRA's ``bias`` option trains for ``layers``
    (``{adapted layer: options}``): "lora_only" the adapted layers' own, "all" every bias outside ``saved``.
    peft's adapter file carries them under these names ("<layer>.base_layer.bias")."""
    setting = {getattr(options, "bias", "none") for options in layers.values()}
    if setting not in ({"lora_only"}, {"all"}):
        return {}
    found = {}
    for name, p in model.named_parameters():
        owner = next((layer for layer in layers if name.startswith(layer + ".")), None)
        if owner is not None and not name.startswith(owner + ".base_layer."):
            name = f"{owner}.base_layer.{name[len(owner) + 1:]}"
        own_bias = owner is not None and name == f"{owner}.base_layer.bias"
        is_bias = "bias" in name.rsplit(".", 1)[-1] and "lora_" not in name
        if (own_bias if setting == {"lora_only"} else is_bias) and not any(name.startswith(f"{m}.") for m in saved):
            found[name] = p
    return found


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


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def peft_selection(model: nn.Module, fmt: PeftFormat, config: dict) -> tuple[list[str], list[str], dict]:
    """What peft selects in ``model`` for ``config``: ``(adapted layers, modules_to_save, flags)``.

    peft's rules: ``target_modules`` as a regex matches whole names, as a list the name or its
    dotted end (``base.matches``), and then ``layers_to_transform`` keeps the names in those blocks
    (``base.layer_index``; a name equal to an entry is kept, a regex is not filtered);
    ``"all-linear"`` is every nn.Linear and Conv1D but the output head; a module inside an entry of
    ``modules_to_save`` is never adapted; ``modules_to_save`` (and IA3's ``feedforward_modules``)
    list entries match any end of a name. ``flags`` is ``{layer: {"is_feedforward": bool}}`` for
    IA3, else ``{layer: {}}``.
    """
    candidates = candidate_modules(model)
    names = [name for name, _ in candidates]
    targets = _names_or_regex(config, "target_modules", optional=False)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        heads = output_head_names(model)
        targets = sorted({name.rsplit(".", 1)[-1] for name, module in candidates
                          if isinstance(module, (nn.Linear, Conv1D)) and name not in heads})
    adapted = [name for name in names if matches(name, targets)]
    wanted = config.get("layers_to_transform")
    if isinstance(targets, list) and wanted not in (None, []):
        wanted = [wanted] if isinstance(wanted, int) else wanted
        adapted = [name for name in adapted
                   if name in targets or layer_index(name, config.get("layers_pattern") or None) in wanted]
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

def _check_exportable(model: nn.Module, adapter: str) -> tuple[MethodSpec, list, list, dict[str, nn.Parameter]]:
    """The method, the adapted layers, the modules_to_save and the trained base biases of ``adapter``;
    ValueError if peft could not load it."""
    layers = [(name, layer) for name, layer in outer_layers(model) if adapter in layer.adapter_config]
    saved = [(name, layer) for name, layer in layers if isinstance(layer, TrainableCopy)]
    adapted = [(name, layer) for name, layer in layers if not isinstance(layer, TrainableCopy)]
    biases = trained_biases(model, {name: layer.adapter_config[adapter] for name, layer in adapted},
                            [name for name, _ in saved])
    # BitFit, prefix and prompt tuning, full fine-tuning train tensors that no adapter file carries
    carried = {id(t) for _, layer in tuned_layers(model) for a in layer.adapters for t in layer.adapter_parameters(a)}
    carried |= {id(p) for p in biases.values()}
    outside = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in carried]
    if outside:
        raise ValueError(f"{len(outside)} trainable parameters lie outside ftlab's adapter layers "
                         f"(e.g. {outside[:3]}), as BitFit, prefix/prompt tuning or full fine-tuning make them; "
                         f"a peft adapter file cannot carry them, so the export would lose them. export_peft "
                         f"writes {supported()} adapters: freeze the rest (train whole modules through "
                         f"modules_to_save)")
    if not layers:
        raise ValueError(f"the model has no adapter called {adapter!r} (its adapters: {adapter_names(model)}); "
                         f"export_peft writes adapters made by ftlab.apply with method {supported()}")
    methods = sorted({layer.method for _, layer in adapted})
    spec = method_spec(methods[0]) if len(methods) == 1 else None
    if spec is None or spec.peft is None:
        made_by = f"method {' and '.join(map(repr, methods))}" if methods else "modules_to_save alone"
        raise ValueError(f"peft cannot load adapter {adapter!r}, made by ftlab's {made_by}; export_peft writes "
                         f"only {supported()} adapters")
    for name, layer in adapted:
        check_not_broken(spec, name, layer.base_layer)
        if not isinstance(layer.base_layer, spec.peft.layer_kinds):
            kinds = ", ".join(kind.__name__ for kind in spec.peft.layer_kinds)
            raise ValueError(f"peft's {spec.peft.peft_type} does not accept {type(layer.base_layer).__name__} layers "
                             f"such as {name!r} (only {kinds}), so it could not load this adapter")
    return spec, adapted, saved, biases


def check_not_broken(spec: MethodSpec, name: str, module: nn.Module) -> None:
    """Raise ValueError if peft computes ``spec``'s adapter on ``module`` (called ``name``) wrongly."""
    for kind, why in spec.peft.broken.items():
        if isinstance(module, kind):
            raise ValueError(f"{name!r} is a {type(module).__name__}: {why}")


def _shared_value(fmt: PeftFormat, option: str, values: dict[str, object]) -> tuple[object, dict]:
    """The config's value of ``option``, plus a {regex: value} pattern for the layers that differ.

    Only options with a peft pattern field (rank_pattern, alpha_pattern) may differ per layer
    (ftlab's rank_pattern and weighted sum of adapters make such ranks). A pattern key is the
    layer's full name, escaped: peft matches it as a regex against the end of the module name.
    """
    counts = collections.Counter(json.dumps(value, sort_keys=True) for value in values.values())  # dicts too
    common = json.loads(counts.most_common(1)[0][0])
    differ = {re.escape(name): value for name, value in values.items() if value != common}
    if differ and option not in fmt.patterns.values():
        found = sorted(set(map(str, values.values())))
        raise ValueError(f"{option} differs between the layers of this adapter ({found}); "
                         f"a peft config has one value of {option} for all layers")
    return common, differ


def peft_config(model: nn.Module, adapter_name: str = "default") -> dict:
    """The adapter_config.json (as a dict) that describes ftlab's adapter ``adapter_name`` to peft."""
    spec, adapted, saved, _ = _check_exportable(model, adapter_name)
    fmt = spec.peft
    options = {name: layer.adapter_config[adapter_name] for name, layer in adapted}
    config = {
        "peft_type": fmt.peft_type,
        "task_type": None,
        "inference_mode": True,
        "base_model_name_or_path": getattr(model, "name_or_path", None) or None,
    }
    if fmt.init:  # only sets initial values, so any layer's value will do
        config[fmt.init] = getattr(next(iter(options.values())), fmt.init)
    patterns = {option: key for key, option in fmt.patterns.items()}
    for option in fmt.options:
        config[option], differ = _shared_value(fmt, option, {name: getattr(o, option) for name, o in options.items()})
        if option in patterns:
            config[patterns[option]] = differ
    if "fan_in_fan_out" in fmt.ignored:  # peft reads a layer's weight layout from this flag
        config["fan_in_fan_out"] = any(isinstance(layer.base_layer, Conv1D) for _, layer in adapted)

    names = [name for name, _ in candidate_modules(model)]
    targets = [name for name, _ in adapted]
    config["target_modules"] = _names_for_peft(targets, names, matches)
    config["modules_to_save"] = [name for name, _ in saved] or None
    for key, option in fmt.flags.items():
        config[key] = _names_for_peft([name for name in targets if getattr(options[name], option)], names, _ends_with)
    flags = {name: {option: getattr(options[name], option) for option in fmt.flags.values()} for name in targets}
    if peft_selection(model, fmt, config) != (targets, [name for name, _ in saved], flags):
        raise ValueError(f"peft's name matching would select other modules than this adapter's in "
                         f"{type(model).__name__} (e.g. a modules_to_save name that ends another module's name)")
    return config


def peft_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_name`` under peft's keys and in peft's shapes (copies, on the CPU)."""
    spec, adapted, saved, biases = _check_exportable(model, adapter_name)
    tensors = {}
    for name, layer in adapted + saved:
        for _, key, attribute, tensor, wrapper in layer_tensors(name, layer, adapter_name):
            shape = spec.peft.peft_shape(attribute, wrapper.base_layer, tensor.shape,
                                         wrapper.adapter_config[adapter_name])
            tensors[key] = tensor.detach().reshape(shape).to("cpu", copy=True)
    for name, p in biases.items():
        tensors[PREFIX + name] = p.detach().to("cpu", copy=True)
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


def _options(spec: MethodSpec, config: dict, adapted: list[str], flags: dict) -> tuple[object, dict, dict]:
    """ftlab's options for a peft config: ``(options, patterns, overrides)`` for ``plan_injection``.

    Raises ValueError for any peft option that ftlab cannot reproduce (a field not known to the
    method's peft format whose value is not empty or false), naming what ftlab offers instead,
    since the adapter would then compute something else.
    """
    fmt = spec.peft
    known = {*fmt.options, *fmt.patterns, *fmt.flags, *fmt.ignored, *METADATA, *SELECTION, fmt.init}
    for key, value in config.items():
        unknown = key not in known and value not in (None, False, "", [], {})
        if unknown or key == fmt.init and not any(value == v and type(value) is type(v) for v in fmt.init_values):
            instead = f": {fmt.refused[key]}" if key in fmt.refused else ""
            raise ValueError(f"peft option {key}={value!r} is not supported by ftlab's {spec.name}, so this adapter "
                             f"cannot be reproduced{instead}")
    for key in fmt.flags:
        if config.get(key) is None:
            raise ValueError(f"{CONFIG_NAME} has no {key}; list the module names (an empty list for none)")
    # options missing from the config take ftlab's defaults, which are peft's; the loaded tensors replace
    # the initial values, so the init option stays at its default
    values = {key: config[key] for key in fmt.options if config.get(key) is not None}
    options = spec.options(**values)
    patterns = {option: config.get(key) or None for key, option in fmt.patterns.items()}
    return options, patterns, flags


def _tensor_plan(plan: Plan, biases: dict[str, nn.Parameter]) -> dict[str, tuple[str, torch.Size, tuple]]:
    """peft key -> (ftlab state_dict key, ftlab shape, peft shape) of every tensor the adapter will have.

    Builds each layer's adapter on a throwaway wrapper of a copy of the base layer, so the model
    is not changed.
    """
    fmt = method_spec(plan.layers[0][2].method).peft
    tensors = {}
    for name, module, cls, options in plan.layers:
        base = module.base_layer if isinstance(module, TunedLayer) else module
        trial = cls(copy.deepcopy(base))
        trial.add(plan.adapter_name, options)
        for key, peft_name, attribute, tensor, wrapper in layer_tensors(name, trial, plan.adapter_name):
            shape = fmt.peft_shape(attribute, wrapper.base_layer, tensor.shape, options)
            tensors[peft_name] = (key, tensor.shape, shape)
    for name, module in plan.saved:
        base = module.base_layer if isinstance(module, TunedLayer) else module
        for inner, tensor in base.state_dict().items():
            inner = f"modules_to_save.{plan.adapter_name}.{inner}"
            tensors[peft_key(name, inner)] = (f"{name}.{inner}", tensor.shape, tuple(tensor.shape))
    for name, p in biases.items():
        tensors[PREFIX + name] = (name, p.shape, tuple(p.shape))
    return tensors


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
    spec = spec_for_peft_type(config["peft_type"])
    if spec is None:
        raise ValueError(f"ftlab cannot read peft's {config['peft_type']!r} adapters; supported peft types: "
                         f"{', '.join(s.peft.peft_type for s in exporting_specs())}")
    adapted, saved, flags = peft_selection(model, spec.peft, config)
    if not adapted:
        raise ValueError(f"target_modules {config['target_modules']!r} in {CONFIG_NAME} match no module of "
                         f"{type(model).__name__}; the adapter was made for another model")
    names = [name for name, _ in candidate_modules(model)]
    if [name for name in names if matches(name, saved)] != saved:
        raise ValueError(f"the modules_to_save {saved} cannot be selected one by one in {type(model).__name__}")
    for name in adapted:
        check_not_broken(spec, name, model.get_submodule(name))
    options, patterns, overrides = _options(spec, config, adapted, flags)
    tensors = _read_tensors(folder)
    plan = plan_injection(model, spec.layer_classes(), options, targets="|".join(re.escape(n) for n in adapted),
                          adapter_name=adapter_name, modules_to_save=saved or None, patterns=patterns,
                          overrides=overrides, method=spec.name)
    biases = trained_biases(model, {name: options for name, _, _, options in plan.layers}, saved)
    expected = _tensor_plan(plan, biases)
    _check_tensors(tensors, expected)

    carry_out(model, plan)
    model.train(model.training)  # the new layers take the model's train/eval mode (dropout)
    state = model.state_dict()
    with torch.no_grad():
        for key, (target, shape, _) in expected.items():
            state[target].copy_(tensors[key].reshape(shape))
    return model
