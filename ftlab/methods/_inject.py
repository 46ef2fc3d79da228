"""Shared machinery of the weight-space methods: find target layers, wrap them, manage adapters.

Every method that changes existing layers (LoRA, DoRA, LoHa, LoKr, IA3, QLoRA, ...) works the
same way, so the common steps live here once:

1. ``find_targets(model, targets)`` turns ``targets`` into module names with peft's rules
   (a list matches name suffixes, a string is a full regex, ``"all-linear"`` is every linear
   layer but the output head; ``None`` is the family default, ``DEFAULT_TARGETS``);
2. ``inject(model, layer_class, targets, adapter_name, options, modules_to_save)`` validates
   everything first (so a failing call leaves the model untouched), then replaces each target
   by ``layer_class(target)`` (or adds an adapter to an existing wrapper), freezes the base
   model and leaves only the active adapter's parameters trainable;
3. the model-level functions ``merge``, ``unmerge``, ``merge_and_unload``, ``add_adapter``,
   ``set_adapter``, ``disable_adapters``, ``delete_adapter`` work on every ``Tuned`` layer,
   whatever the method.

How a new method plugs in (see ``ftlab/methods/lora.py`` for a complete example):

* subclass ``Tuned`` and set ``method = "name"`` (the registry name in ``ftlab.methods``);
* ``check(base_layer, name, **options)`` (classmethod): raise ``ValueError``/``TypeError`` if
  the options do not fit this layer; it runs for every target before anything is changed.
  Call ``layer_features(base_layer)`` in it to reject unsupported layer kinds;
* ``add(adapter, **options)``: create the adapter's parameters, each stored in an
  ``nn.ModuleDict`` or ``nn.ParameterDict`` attribute keyed by the adapter name (that is how
  ``adapter_parameters``, ``remove`` and ``delete_adapter`` find them without more code);
* ``adapter_forward(x, adapter, *args, **kwargs)``: the layer's output with that adapter;
* ``delta_weight(adapter)``: the change of the base weight, in the base weight's own layout
  (``merge``/``unmerge`` add/subtract it). Methods whose merge is not additive (DoRA, IA3)
  override ``_merge``/``_unmerge``; methods that cannot merge set ``mergeable = False``;
* the method file's ``apply(model, ..., targets=None, adapter_name="default", **options)``
  calls ``inject``; ``ftlab.apply(model, "name", ...)`` and ``add_adapter`` then work.

Supported base layers: ``nn.Linear`` (weight ``(out, in)``), transformers' GPT-2 ``Conv1D``
(weight stored transposed, ``(in, out)``) and ``nn.Conv2d`` (weight ``(out, in, kh, kw)``).
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import re
from typing import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

ALL_LINEAR = "all-linear"

# Every nn.Conv2d inside torchvision ResNet's residual stages: conv1, conv2 (conv3 in
# Bottleneck blocks) and the 1x1 shortcut convolution ``downsample.0``; the stem conv and
# the fc head are left alone. A regex, so the same string can be given to peft.
RESNET_STAGE_CONVS = r"layer[1-4]\.\d+\.(conv\d+|downsample\.0)"

# Default targets per model family, the same as peft's defaults for bert and gpt2.
DEFAULT_TARGETS: dict[str, list[str] | str] = {
    "bert": ["query", "value"],
    "gpt2": ["c_attn"],
    "resnet": RESNET_STAGE_CONVS,
}

# Top-level attribute names of output heads, left out by "all-linear" (peft uses
# the output embedding, "classifier" and "score"; torchvision calls its head "fc").
HEAD_NAMES = ("lm_head", "classifier", "score", "fc")


def model_family(model: nn.Module) -> str | None:
    """The model family: ``config.model_type`` for transformers models, ``"resnet"`` for torchvision's."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None):
        return config.model_type
    if type(model).__name__ == "ResNet" and all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return "resnet"
    return None


def default_targets(model: nn.Module) -> list[str] | str:
    """The default ``targets`` for the model's family (``DEFAULT_TARGETS``)."""
    family = model_family(model)
    if family not in DEFAULT_TARGETS:
        raise ValueError(
            f"no default targets for {type(model).__name__} (family {family!r}); pass targets=, e.g. "
            f"{ALL_LINEAR!r} or a list of module names such as {_linear_leaf_names(model)[:4]}"
        )
    return DEFAULT_TARGETS[family]


def layer_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a supported layer; ``TypeError`` for any other kind.

    nn.Linear: weight (out, in); Conv1D: weight (in, out); nn.Conv2d: weight (out, in, kh, kw).
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape
        return n_in, n_out
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise TypeError(f"grouped convolutions (groups={module.groups}) are not supported; "
                            f"target a conv with groups=1")
        if module.padding_mode != "zeros":
            raise TypeError(f"convolutions with padding_mode={module.padding_mode!r} are not supported, only 'zeros'")
        return module.in_channels, module.out_channels
    raise TypeError(
        f"cannot adapt a {type(module).__name__}: supported layers are nn.Linear, transformers' Conv1D "
        f"and nn.Conv2d; choose targets that name such layers"
    )


def weight_out_in(layer: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's weight (or ``weight``, in the layer's layout) with the output dimension first.

    Conv1D stores ``(in, out)`` and is transposed; Linear ``(out, in)`` and Conv2d
    ``(out, in, kh, kw)`` are returned as they are. Its own inverse: ``weight_out_in(layer, t)``
    maps an out-first tensor back to the layer's layout.
    """
    weight = layer.weight if weight is None else weight
    return weight.T if isinstance(layer, Conv1D) else weight


class Tuned(nn.Module):
    """Base class of an injected layer: the frozen ``base_layer`` plus adapters keyed by name.

    State: ``active_adapter`` (the adapter used in forward, or None), ``merged_adapter``
    (the adapter whose change is currently inside the base weight, or None) and
    ``disabled`` (forward returns the base layer's output). ``adapter_config[name]`` keeps
    the options each adapter was built with.
    """

    method: str = ""
    mergeable: bool = True

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.adapter_config: dict[str, dict] = {}
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None
        self.disabled = False

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, **options) -> None:
        """Raise if ``options`` do not fit ``base_layer`` (named ``name``); default: supported kind only."""
        layer_features(base_layer)

    def add(self, adapter: str, **options) -> None:
        """Create the parameters of ``adapter`` (subclasses)."""
        raise NotImplementedError

    def adapter_forward(self, x: torch.Tensor, adapter: str, *args, **kwargs) -> torch.Tensor:
        """The layer's output with ``adapter`` applied (subclasses)."""
        raise NotImplementedError

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """Change of the base weight that ``adapter`` makes, in the base weight's own layout (subclasses)."""
        raise NotImplementedError

    @property
    def adapters(self) -> list[str]:
        return list(self.adapter_config)

    def add_adapter(self, adapter: str, **options) -> None:
        """Build ``adapter`` on this layer; it becomes active if no adapter is."""
        if adapter in self.adapter_config:
            raise ValueError(f"adapter {adapter!r} already exists on this layer; choose another adapter_name")
        self.add(adapter, **options)
        self.adapter_config[adapter] = dict(options)
        if self.active_adapter is None:
            self.active_adapter = adapter

    def adapter_parameters(self, adapter: str) -> Iterator[nn.Parameter]:
        """The parameters of ``adapter``: its entries in every ModuleDict / ParameterDict attribute."""
        for child in self.children():
            if isinstance(child, nn.ModuleDict) and adapter in child:
                yield from child[adapter].parameters()
            elif isinstance(child, nn.ParameterDict) and adapter in child:
                yield child[adapter]

    def remove(self, adapter: str) -> None:
        """Delete ``adapter``'s parameters and options from this layer."""
        for child in self.children():
            if isinstance(child, (nn.ModuleDict, nn.ParameterDict)) and adapter in child:
                del child[adapter]
        del self.adapter_config[adapter]
        if self.active_adapter == adapter:
            self.active_adapter = self.adapters[0] if self.adapters else None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # A merged adapter is already inside the base weight, so the base layer computes it.
        if self.disabled or self.merged_adapter is not None or self.active_adapter not in self.adapter_config:
            return self.base_layer(x, *args, **kwargs)
        return self.adapter_forward(x, self.active_adapter, *args, **kwargs)

    def merge(self) -> None:
        """Add the active adapter's change into the base weight: W <- W + delta_weight.

        A quantised base layer (QLoRA) is first replaced by its dequantised float layer, which
        stays in place after ``unmerge``.
        """
        if not self.mergeable:
            raise TypeError(f"{type(self).__name__} adapters cannot be merged into the base weight")
        if self.merged_adapter is not None:
            raise ValueError(f"adapter {self.merged_adapter!r} is already merged; unmerge() before merging again")
        if self.active_adapter not in self.adapter_config:
            raise ValueError("this layer has no active adapter to merge; set_adapter() first")
        if hasattr(self.base_layer, "dequantized"):
            # 4 bits cannot hold W + delta without rounding it again, so the merge is into float weights
            self.base_layer = self.base_layer.dequantized()
        with torch.no_grad():
            self._merge(self.active_adapter)
        self.merged_adapter = self.active_adapter

    def unmerge(self) -> None:
        """Take the merged adapter's change out of the base weight again."""
        if self.merged_adapter is None:
            raise ValueError("no adapter is merged into this layer, so there is nothing to unmerge")
        with torch.no_grad():
            self._unmerge(self.merged_adapter)
        self.merged_adapter = None

    def _merge(self, adapter: str) -> None:
        self.base_layer.weight += self.delta_weight(adapter)

    def _unmerge(self, adapter: str) -> None:
        self.base_layer.weight -= self.delta_weight(adapter)

    def unload(self) -> nn.Module:
        """The plain module that replaces this wrapper in ``merge_and_unload``: the base layer, merged."""
        if self.merged_adapter is None and self.active_adapter in self.adapter_config:
            self.merge()
        return self.base_layer


class TrainableCopy(Tuned):
    """``modules_to_save``: a trainable copy of a whole module per adapter, the original kept frozen.

    Forward uses the active adapter's copy (the original when disabled), as peft's
    ModulesToSaveWrapper does; so ``disable_adapters`` still gives the base model's output.
    """

    method = "modules_to_save"
    mergeable = False

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.modules_to_save = nn.ModuleDict()

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, **options) -> None:
        if not any(True for _ in base_layer.parameters()):
            raise ValueError(f"modules_to_save names {name!r}, which has no parameters to train")

    def add(self, adapter: str, **options) -> None:
        self.modules_to_save[adapter] = copy.deepcopy(self.base_layer)

    def adapter_forward(self, x, adapter, *args, **kwargs):
        return self.modules_to_save[adapter](x, *args, **kwargs)

    def unload(self) -> nn.Module:
        if self.active_adapter in self.adapter_config:
            return self.modules_to_save[self.active_adapter]
        return self.base_layer


# ---------------------------------------------------------------- finding targets

def _wrapped_prefixes(model: nn.Module) -> list[str]:
    return [name + "." for name, module in model.named_modules() if isinstance(module, Tuned)]


def _candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module a target may name: not the root, nothing inside a wrapper."""
    inside = _wrapped_prefixes(model)
    return [(name, module) for name, module in model.named_modules()
            if name and not any(name.startswith(prefix) for prefix in inside)]


def _linear_leaf_names(model: nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, module in _candidate_modules(model)
             if isinstance(module, (nn.Linear, Conv1D))}
    return sorted(names)


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the output head's modules (output embedding, lm_head, classifier, score, fc) and everything in them."""
    heads = [getattr(model, attr) for attr in HEAD_NAMES if isinstance(getattr(model, attr, None), nn.Module)]
    get_output = getattr(model, "get_output_embeddings", None)
    if callable(get_output) and get_output() is not None:
        heads.append(get_output())
    head_names = [name for name, module in model.named_modules() if any(module is head for head in heads)]
    return {name for name, _ in model.named_modules()
            if any(name == head or name.startswith(head + ".") for head in head_names)}


def _matches(name: str, targets: list[str] | str) -> bool:
    """peft's rule: a string is a full regex; a list matches ``name == key`` or a ``"." + key`` suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == key or name.endswith("." + key) for key in targets)


def _no_match_error(model: nn.Module, what: str, keys: list[str]) -> ValueError:
    names = [name for name, _ in _candidate_modules(model)]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
    close = []
    for key in keys:
        close += difflib.get_close_matches(key, leaves, n=5, cutoff=0.5)
        close += difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"close candidates: {sorted(set(close))}" if close else f"module names end with e.g. {leaves[:12]}"
    shown = keys if len(keys) > 1 else keys[0]
    return ValueError(f"{what} {shown!r} match no module of {type(model).__name__}; {hint}")


def find_targets(model: nn.Module, targets: list[str] | str | None = None, *, what: str = "targets") -> list[str]:
    """Names of the modules ``targets`` selects, in model order (peft's target_modules rules).

    * a list of strings: module names equal to, or ending in ``"." +``, one of them
      (``["query", "value"]``); every entry must match something;
    * a string: a regex that must match the whole name (``re.fullmatch``);
    * ``"all-linear"``: every nn.Linear and Conv1D except the output head;
    * ``None``: the family default, ``default_targets(model)``.

    Modules inside an existing wrapper (``...query.base_layer``) are never selected; the
    wrapper itself is. Raises ValueError naming close candidates when a target matches nothing.
    """
    if targets is None:
        targets = default_targets(model)
    candidates = _candidate_modules(model)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        heads = output_head_names(model)
        names = [name for name, module in candidates if name not in heads and (
            isinstance(module, (nn.Linear, Conv1D))
            or (isinstance(module, Tuned) and isinstance(module.base_layer, (nn.Linear, Conv1D))))]
        if not names:
            raise ValueError(f"{what}={ALL_LINEAR!r} found no linear layer outside the output head "
                             f"of {type(model).__name__}")
        return names
    if isinstance(targets, str):
        names = [name for name, _ in candidates if _matches(name, targets)]
        if not names:
            raise _no_match_error(model, f"{what} regex", [targets])
        return names
    if not isinstance(targets, (list, tuple, set)) or not all(isinstance(key, str) for key in targets):
        raise TypeError(f"{what} must be a list of module names, a regex string or {ALL_LINEAR!r}, got {targets!r}")
    missing = [key for key in targets if not any(_matches(name, [key]) for name, _ in candidates)]
    if missing:
        raise _no_match_error(model, what, missing)
    return [name for name, _ in candidates if _matches(name, list(targets))]


# ---------------------------------------------------------------- changing the model

def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule called ``name`` (dotted) is; return the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def freeze(model: nn.Module) -> None:
    """Set ``requires_grad = False`` on every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad_(False)


def tuned_layers(model: nn.Module) -> list[tuple[str, Tuned]]:
    """``(name, layer)`` of every injected layer in ``model``."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, Tuned)]


def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter name present in ``model``, in the order they were added."""
    names: dict[str, None] = {}
    for _, layer in tuned_layers(model):
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def active_adapter(model: nn.Module) -> str | None:
    """The adapter the model's injected layers use (None when there is none)."""
    for _, layer in tuned_layers(model):
        if layer.active_adapter is not None:
            return layer.active_adapter
    return None


def _make_trainable(model: nn.Module) -> None:
    """Freeze everything, then let only the active adapter's parameters train."""
    freeze(model)
    for _, layer in tuned_layers(model):
        if layer.active_adapter in layer.adapter_config:
            for p in layer.adapter_parameters(layer.active_adapter):
                p.requires_grad_(True)


def _check_unmerged(model: nn.Module, doing: str) -> None:
    merged = [name for name, layer in tuned_layers(model) if layer.merged_adapter is not None]
    if merged:
        raise ValueError(f"cannot {doing} while adapters are merged (e.g. in {merged[0]!r}); call unmerge(model) first")


def inject(model: nn.Module, layer_class: type[Tuned], targets: list[str] | str | None, adapter_name: str,
           options: dict, modules_to_save: list[str] | None = None,
           layer_options: dict[str, dict] | None = None) -> nn.Module:
    """Wrap every target of ``model`` in ``layer_class`` with adapter ``adapter_name``; return ``model``.

    Validates everything first (targets exist and are supported layers, ``options`` fit
    every layer, the adapter name is new, nothing is merged), so an error leaves the model
    untouched. Then freezes the base model: only the active adapter's parameters (and the
    copies of ``modules_to_save``) train. The first adapter becomes active; later ones
    are added inactive, as in peft (``set_adapter`` switches). ``layer_options`` maps a
    target's name to options that differ for that layer only (IA3's feedforward layers).
    """
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty string without '.', got {adapter_name!r}")
    if adapter_name in adapter_names(model):
        raise ValueError(f"adapter {adapter_name!r} already exists in the model (adapters: {adapter_names(model)}); "
                         f"choose another adapter_name or delete_adapter() it first")
    _check_unmerged(model, "add an adapter")
    names = find_targets(model, targets)
    saved = find_targets(model, list(modules_to_save), what="modules_to_save") if modules_to_save else []
    overlap = set(names) & set(saved)
    if overlap:
        raise ValueError(f"{sorted(overlap)} are both targets and modules_to_save; a module can be one or the other")
    plan = []
    for name in names + saved:
        cls = layer_class if name in names else TrainableCopy
        module = model.get_submodule(name)
        if isinstance(module, Tuned) and not isinstance(module, cls):
            raise TypeError(f"{name!r} already carries a {module.method!r} adapter; one method per layer, "
                            f"so target other layers or delete_adapter() first")
        base = module.base_layer if isinstance(module, Tuned) else module
        layer_opts = {} if cls is TrainableCopy else {**options, **(layer_options or {}).get(name, {})}
        try:
            cls.check(base, name, **layer_opts)
        except TypeError as error:  # say which module, since a pattern may match more than intended
            raise TypeError(f"{name!r}: {error}") from None
        plan.append((name, module, cls, layer_opts))

    active = active_adapter(model) or adapter_name
    for name, module, cls, layer_opts in plan:
        if not isinstance(module, Tuned):
            training = module.training
            module = cls(module)
            module.train(training)  # a new wrapper would start in train mode: keep the model's mode
            replace_module(model, name, module)
        module.add_adapter(adapter_name, **layer_opts)
        module.train(module.base_layer.training)  # new dropout layers follow the base layer's mode
        module.active_adapter = active
    _make_trainable(model)
    return model


# ---------------------------------------------------------------- model-level adapter functions

def _mergeable(model: nn.Module) -> list[tuple[str, Tuned]]:
    return [(name, layer) for name, layer in tuned_layers(model)
            if layer.mergeable and layer.active_adapter in layer.adapter_config]


def merge(model: nn.Module) -> nn.Module:
    """Merge the active adapter into the base weights of every injected layer (W <- W + delta)."""
    layers = _mergeable(model)
    if not layers:
        raise ValueError("the model has no active adapter to merge; apply a method first")
    merged = [name for name, layer in layers if layer.merged_adapter is not None]
    if merged:
        raise ValueError(f"adapters are already merged (e.g. in {merged[0]!r}); unmerge(model) before merging again")
    for _, layer in layers:
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take the merged adapters out of the base weights again (the inverse of ``merge``)."""
    layers = [layer for _, layer in tuned_layers(model) if layer.merged_adapter is not None]
    if not layers:
        raise ValueError("no adapter is merged, so there is nothing to unmerge; merge(model) first")
    for layer in layers:
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and put the original module classes back; returns the plain model.

    Inactive adapters are dropped; ``modules_to_save`` are replaced by their trained copy.
    The parameters stay frozen (call ``p.requires_grad_(True)`` to train the result).
    """
    if not tuned_layers(model):
        raise ValueError("the model has no injected layers to unload; apply a method first")
    for name, layer in reversed(tuned_layers(model)):
        replace_module(model, name, layer.unload())
    return model


def add_adapter(model: nn.Module, name: str, method: str = "lora", **options) -> nn.Module:
    """Add another adapter called ``name`` with ``ftlab.apply(model, method, adapter_name=name, **options)``.

    The active adapter stays as it is (as in peft); ``set_adapter(model, name)`` switches to
    the new one and makes it the trainable one. Duplicate names raise ValueError.
    """
    from ftlab.methods import apply  # the registry imports method files, which import this file

    return apply(model, method, adapter_name=name, **options)


def set_adapter(model: nn.Module, name: str) -> nn.Module:
    """Make ``name`` the active adapter of every injected layer; only its parameters train."""
    if name not in adapter_names(model):
        raise ValueError(f"no adapter called {name!r}; the model has {adapter_names(model)}")
    _check_unmerged(model, "switch adapters")
    for _, layer in tuned_layers(model):
        layer.active_adapter = name
    _make_trainable(model)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Context manager in which the model computes exactly the base model's output.

    Used as the frozen reference model in DPO and RLHF. Merged adapters are unmerged on
    entry and merged again on exit.

        with disable_adapters(model):
            reference_logits = model(x)
    """
    layers = [layer for _, layer in tuned_layers(model)]
    merged = [layer for layer in layers if layer.merged_adapter is not None]
    for layer in merged:
        layer.unmerge()
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False
        for layer in merged:
            layer.merge()


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove adapter ``name`` everywhere; layers left without adapters become plain modules again.

    If ``name`` was active, the first remaining adapter becomes active.
    """
    if name not in adapter_names(model):
        raise ValueError(f"no adapter called {name!r}; the model has {adapter_names(model)}")
    _check_unmerged(model, "delete an adapter")
    was_active = active_adapter(model) == name
    for layer_name, layer in reversed(tuned_layers(model)):
        if name in layer.adapter_config:
            layer.remove(name)
            if not layer.adapters:
                replace_module(model, layer_name, layer.base_layer)
    remaining = adapter_names(model)
    if was_active and remaining:
        for _, layer in tuned_layers(model):
            layer.active_adapter = remaining[0]
    _make_trainable(model)
    return model
