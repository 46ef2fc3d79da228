"""What every method that changes existing layers shares: targets, wrappers, named adapters, merging.

LoRA, DoRA, LoHa, LoKr, IA3, QLoRA and bottleneck adapters all work the same way:

1. ``find_targets(model, targets)`` turns ``targets`` into module names with peft's rules: a list
   matches whole names or their dotted ends, a string is a regex over the whole name,
   ``"all-linear"`` is every linear layer but the output head, ``None`` the family default
   (``DEFAULT_TARGETS``); ``layers_to_transform`` keeps the blocks with those numbers;
2. ``inject(model, layer_classes, options, targets=...)`` checks everything first (so that a failing
   call leaves the model as it was), then wraps each target in the first of ``layer_classes`` that
   accepts it (``layer_class(target)``, or adds an adapter to the wrapper already there), freezes the
   base model and leaves only the active adapter trainable;
3. the model-level functions ``merge``, ``unmerge``, ``merge_and_unload``, ``set_adapter``,
   ``disable_adapters`` and ``delete_adapter`` work on every ``TunedLayer``, whatever the method
   (``add_adapter`` lives with ``apply`` in ``ftlab.methods``, which knows every method).

A method file defines an options dataclass (one adapter's options, peft's names and defaults), a
``TunedLayer`` subclass and ``apply``, and declares itself with a ``MethodSpec`` called ``SPEC``;
the package docstring of ``ftlab.methods`` is the recipe.

Layers, with their weight "output first" (``weight_out_in``): ``nn.Linear`` (out, in); GPT-2's
``Conv1D`` stores (in, out); ``nn.Conv1d/2d/3d`` (out, in / groups, *kernel); ``nn.Embedding``
stores (num_embeddings, dim), seen as (dim, num_embeddings): a token id picks a column.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import importlib
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ftlab.validate import check_int

ALL_LINEAR = "all-linear"
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Every nn.Conv2d inside torchvision ResNet's residual stages: conv1, conv2 (conv3 in its
# Bottleneck blocks) and the 1x1 shortcut convolution ``downsample.0``; the stem conv and
# the fc head are left alone. A regex, so the same string can be given to peft.
RESNET_STAGE_CONVS = r"layer[1-4]\.\d+\.(conv\d+|downsample\.0)"

# LoRA-style default targets per model family: peft's defaults for these families
# (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); peft has none for a ResNet.
DEFAULT_TARGETS: dict[str, list[str] | str] = {
    "bert": ["query", "value"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj", "fc1", "fc2"],
    "resnet": RESNET_STAGE_CONVS,
}

# Top-level attribute names of output heads, left out by "all-linear" (peft uses
# the output embedding, "classifier" and "score"; torchvision calls its head "fc").
HEAD_NAMES = ("lm_head", "classifier", "score", "fc")


# ---------------------------------------------------------------- what the registry knows of a method

@dataclass(frozen=True)
class PeftFormat:
    """How peft stores one ftlab method's adapters (``ftlab.peft_io`` reads it).

    ``options`` are peft config fields with the same meaning as the ftlab options of the same name;
    ``patterns``
    maps peft's per-layer pattern fields to the option they set (``rank_pattern`` -> ``r``);
    ``flags`` maps peft's lists of module names to per-layer bool options (IA3's
    ``feedforward_modules`` -> ``is_feedforward``); ``init`` only sets initial values, which loaded
    tensors replace (``init_values``: the values that leave the base weights alone). ``refused``
    names peft options ftlab does not reproduce, each with what ftlab offers instead; ``ignored``
    fields have no effect once the others are honoured. ``layer_kinds``: the layers peft accepts;
    ``shapes``: tensors that peft stores in another shape, ``{(tensor name, layer kind): reshape}``;
    ``broken``: layer kinds peft accepts but computes wrongly, with why (no file is written or read for them).
    """

    peft_type: str
    options: tuple[str, ...] = ()
    patterns: dict[str, str] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    init: str | None = None
    init_values: tuple = (True, False)
    refused: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    layer_kinds: tuple[type, ...] = (nn.Linear, Conv1D, nn.Conv2d)
    shapes: dict[tuple[str, type], Callable[[torch.Size, object], tuple]] = field(default_factory=dict)
    broken: dict[type, str] = field(default_factory=dict)

    def peft_shape(self, tensor: str, base_layer: nn.Module, shape: torch.Size, options) -> tuple:
        """peft's shape of ftlab's tensor ``tensor`` (e.g. "lora_A") of ``shape`` on ``base_layer`` with ``options``."""
        for (name, kind), reshape in self.shapes.items():
            if name == tensor and isinstance(base_layer, kind):
                return tuple(reshape(shape, options))
        return tuple(shape)


@dataclass(frozen=True)
class MethodSpec:
    """One method in the registry (``ftlab.methods.registry()``): each method file ends with ``SPEC = MethodSpec(...)``.

    ``apply(model, **options)`` applies it; ``options`` is the dataclass of one adapter's options
    (None for methods without adapters); ``layers`` the ``"module:Class"`` paths of its layer
    classes, the first that accepts a target wraps it (named, not imported, so that a method file
    never imports the files that build on it); ``peft`` how peft stores it (None: peft cannot);
    ``lr`` a learning rate that works for it (measured on the sentiment task: MiniLM, 150 steps,
    batch 16, the classifier trained in full). ``implied``: options the name stands for ("dora" is
    ``lora.apply`` with ``use_dora=True``).
    """

    name: str
    apply: Callable[..., nn.Module]
    lr: float
    options: type | None = None
    layers: tuple[str, ...] = ()
    peft: PeftFormat | None = None
    implied: dict = field(default_factory=dict)

    def layer_classes(self) -> list[type[TunedLayer]]:
        """The classes named in ``layers``, imported."""
        classes = []
        for path in self.layers:
            module, _, name = path.partition(":")
            classes.append(getattr(importlib.import_module(module), name))
        return classes


# ---------------------------------------------------------------- layers

def layer_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a layer kind that methods adapt; ``TypeError`` for any other kind.

    nn.Linear: weight (out, in); Conv1D: weight (in, out); nn.Conv1d/2d/3d: channels;
    nn.Embedding: (num_embeddings, embedding_dim); nn.MultiheadAttention: (embed_dim, embed_dim).
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape
        return n_in, n_out
    if isinstance(module, CONVS):
        if module.padding_mode != "zeros":
            raise TypeError(f"convolutions with padding_mode={module.padding_mode!r} are not supported, only 'zeros'")
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    raise TypeError(
        f"cannot adapt a {type(module).__name__}: supported layers are nn.Linear, transformers' Conv1D, "
        f"nn.Conv1d/2d/3d, nn.Embedding and nn.MultiheadAttention (each method says which of them it takes); "
        f"choose targets that name such layers"
    )


def weight_out_in(layer: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's weight (or ``weight``, in the layer's layout) with the output dimension first.

    Conv1D stores (in, out) and nn.Embedding (num_embeddings, dim): both are transposed; Linear
    (out, in) and convolutions (out, in / groups, *kernel) are returned as they are. Its own
    inverse: ``weight_out_in(layer, t)`` maps an out-first tensor back to the layer's layout.
    """
    weight = layer.weight if weight is None else weight
    return weight.T if isinstance(layer, (Conv1D, nn.Embedding)) else weight


def apply_weight(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s operation on ``x`` with ``weight`` (output first) in place of its own, without bias: W x.

    Linear and Conv1D: x W^T; convolutions: the same stride, padding, dilation and groups;
    nn.Embedding: the columns of ``weight`` (dim, num_embeddings) picked by the token ids.
    """
    if isinstance(layer, CONVS):
        conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 3]
        return conv(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.Embedding):
        return F.embedding(x, weight.T, layer.padding_idx, layer.max_norm, layer.norm_type,
                           layer.scale_grad_by_freq, layer.sparse)  # (..., dim)
    return F.linear(x, weight)  # (..., out)


def per_output(layer: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """A per-output vector (out,) shaped to broadcast against ``layer``'s output: (out, 1, ...) for convolutions."""
    return v.view(-1, *[1] * (layer.weight.dim() - 2)) if isinstance(layer, CONVS) else v


def per_row(weight: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A per-output vector (out,) shaped to broadcast against an out-first ``weight``: (out, 1, ...)."""
    return v.view(-1, *[1] * (weight.dim() - 1))


def warn_rank(name: str, r: int, n_in: int, n_out: int) -> None:
    """Warn when a rank-r factorisation of a layer with ``n_in`` inputs and ``n_out`` outputs wastes parameters.

    A product B A with B (out, r), A (r, in) has rank at most min(in, out): the ranks beyond it add
    r (in + out) parameters that reach nothing a rank of min(in, out) could not (peft allows it too).
    """
    if r > min(n_in, n_out):
        warnings.warn(f"r={r} on {name!r} ({n_in} inputs, {n_out} outputs): its change has rank at most "
                      f"{min(n_in, n_out)}, so {r - min(n_in, n_out)} of the ranks only add parameters; "
                      f"r={min(n_in, n_out)} can reach every change of this layer", stacklevel=3)


class TunedLayer(nn.Module):
    """Base class of a wrapped layer: the frozen ``base_layer`` plus adapters of one method, keyed by name.

    State: ``adapter_config[name]`` (the adapter's options dataclass, whole), ``active`` (the
    adapter forward uses, or None), ``merged`` (the adapter whose change is inside the base
    weight, or None) and ``disabled`` (forward computes the base layer alone).

    A subclass sets ``method``, ``options_class`` and ``kinds`` (the base layer types it wraps) and
    writes ``check`` (options that do not fit the layer), ``build`` (create one adapter's
    parameters, each in an ``nn.ModuleDict`` or ``nn.ParameterDict`` keyed by the adapter name),
    ``forward`` (starting with ``adapter = self.adapter_in_use()``) and ``delta_weight`` (what
    merging adds); methods whose merge is not additive override ``merge_adapter`` /
    ``unmerge_adapter``, methods that cannot merge set ``mergeable = False``.
    """

    method: str = ""
    options_class: type | None = None
    kinds: tuple[type, ...] = ()
    mergeable: bool = True

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.adapter_config: dict[str, object] = {}
        self.active: str | None = None
        self.merged: str | None = None
        self.disabled = False

    @classmethod
    def accepts(cls, module: nn.Module, options) -> bool:
        """Whether this class wraps ``module`` with ``options`` (the first accepting class of a method wins)."""
        return isinstance(module, cls.kinds)

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options) -> None:
        """Raise ValueError / TypeError if ``options`` do not fit ``base_layer`` (called ``name``)."""

    def build(self, adapter: str, options) -> None:
        """Create the parameters of ``adapter``."""
        raise NotImplementedError

    def delta_weight(self, adapter: str) -> torch.Tensor:
        """Change of the base weight that ``adapter`` makes, in the base weight's own layout."""
        raise NotImplementedError

    @property
    def adapters(self) -> list[str]:
        return list(self.adapter_config)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer computes with: the base weight plus the active adapter's change.

        For code that reads a layer's weight instead of calling it: nn.MultiheadAttention reads
        ``out_proj.weight``, and nn.TransformerEncoderLayer's inference fast path reads every weight.
        """
        adapter = self.adapter_in_use()
        if adapter is None:
            return self.base_layer.weight
        if not self.mergeable:  # not an AttributeError, which would fall back to the base layer's weight
            raise TypeError(f"{type(self).__name__}'s adapter is not a change of the weight, so code that reads the "
                            f"weight instead of calling the layer cannot use it; for nn.Transformer layers turn their "
                            f"fast path off: torch.backends.mha.set_fastpath_enabled(False)")
        return self.base_layer.weight + self.delta_weight(adapter)

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias this layer computes with (see ``weight``): the base bias, changed by the methods that change it."""
        adapter = self.adapter_in_use()
        return self.base_layer.bias if adapter is None else self.effective_bias(adapter)

    def effective_bias(self, adapter: str) -> torch.Tensor | None:
        """The bias with ``adapter`` active (LoRA's lora_bias and IA3's output scaling change it)."""
        return self.base_layer.bias

    def add(self, adapter: str, options=None, **kwargs) -> None:
        """Build adapter ``adapter`` from ``options`` (the method's options dataclass) or keyword options.

        Missing options take the method's defaults. The adapter becomes active if none is.
        """
        if adapter in self.adapter_config:
            raise ValueError(f"adapter {adapter!r} already exists on this layer; choose another name")
        if options is None:
            options = self.options_class(**kwargs)
        elif kwargs:
            options = dataclasses.replace(options, **kwargs)
        self.check(self.base_layer, type(self.base_layer).__name__, options)
        self.adapter_config[adapter] = options
        self.build(adapter, options)
        if self.active is None:
            self.active = adapter

    def adapter_in_use(self) -> str | None:
        """The adapter forward must add, or None: when disabled, when merged (the base weight holds it), or
        without an active adapter."""
        if self.disabled or self.merged is not None or self.active not in self.adapter_config:
            return None
        return self.active

    def adapter_parameters(self, adapter: str) -> Iterator[nn.Parameter]:
        """The parameters of ``adapter``: its entries in every ModuleDict / ParameterDict attribute."""
        for child in self.children():
            if isinstance(child, nn.ModuleDict) and adapter in child:
                yield from child[adapter].parameters()
            elif isinstance(child, nn.ParameterDict) and adapter in child:
                yield child[adapter]

    def trainable_parameters(self, adapter: str) -> Iterator[nn.Parameter]:
        """What trains while ``adapter`` is active: its parameters (LoRA may add base biases)."""
        yield from self.adapter_parameters(adapter)

    def remove(self, adapter: str) -> None:
        """Delete ``adapter``'s parameters and options from this layer."""
        for child in self.children():
            if isinstance(child, (nn.ModuleDict, nn.ParameterDict)) and adapter in child:
                del child[adapter]
        del self.adapter_config[adapter]
        if self.active == adapter:
            self.active = self.adapters[0] if self.adapters else None

    def merge(self) -> None:
        """Put the active adapter's change into the base weight (W <- W + delta_weight for additive methods).

        In float32 and float64, unmerge gives the original weight back to rounding (1e-7 relative
        in float32); in float16 / bfloat16 the sum W + delta is rounded to 11 / 8 significant bits,
        so merge -> unmerge moves a weight by up to about one unit in its last place (2^-11 resp.
        2^-8 relative to the larger of W and delta). Keep a float32 copy if that matters.
        """
        if not self.mergeable:
            raise TypeError(f"{type(self).__name__} adapters cannot be merged into the base weight")
        if self.merged is not None:
            raise ValueError(f"adapter {self.merged!r} is already merged; unmerge() before merging again")
        if self.active not in self.adapter_config:
            raise ValueError("this layer has no active adapter to merge; set_adapter() first")
        self.check_mergeable()
        self.prepare_merge()
        with torch.no_grad():
            self.merge_adapter(self.active)
        self.merged = self.active

    def unmerge(self) -> None:
        """Take the merged adapter's change out of the base weight again (see ``merge`` on low precision)."""
        if self.merged is None:
            raise ValueError("no adapter is merged into this layer, so there is nothing to unmerge")
        with torch.no_grad():
            self.unmerge_adapter(self.merged)
        self.merged = None

    def check_mergeable(self) -> None:
        """Raise TypeError if the active adapter's change cannot be written into the base weight."""

    def prepare_merge(self) -> None:
        """Hook run before a merge, to make ``base_layer`` able to hold the merged weight (QLoRA dequantises)."""

    def merge_adapter(self, adapter: str) -> None:
        self.base_layer.weight += self.delta_weight(adapter)

    def unmerge_adapter(self, adapter: str) -> None:
        self.base_layer.weight -= self.delta_weight(adapter)

    def unload(self) -> nn.Module:
        """The plain module that replaces this wrapper in ``merge_and_unload``: the base layer, merged."""
        if self.merged is None and self.active in self.adapter_config:
            self.merge()
        return self.base_layer


class TrainableCopy(TunedLayer):
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
    def accepts(cls, module: nn.Module, options) -> bool:
        return True

    @classmethod
    def check(cls, base_layer: nn.Module, name: str, options) -> None:
        if not any(True for _ in base_layer.parameters()):
            raise ValueError(f"modules_to_save names {name!r}, which has no parameters to train")

    def add(self, adapter: str, options=None, **kwargs) -> None:
        self.modules_to_save[adapter] = copy.deepcopy(self.base_layer)
        self.adapter_config[adapter] = None
        if self.active is None:
            self.active = adapter

    def forward(self, *args, **kwargs):
        adapter = self.adapter_in_use()
        module = self.base_layer if adapter is None else self.modules_to_save[adapter]
        return module(*args, **kwargs)

    @property
    def weight(self) -> torch.Tensor:
        adapter = self.adapter_in_use()
        return (self.base_layer if adapter is None else self.modules_to_save[adapter]).weight

    @property
    def bias(self) -> torch.Tensor | None:
        adapter = self.adapter_in_use()
        return (self.base_layer if adapter is None else self.modules_to_save[adapter]).bias

    def unload(self) -> nn.Module:
        return self.modules_to_save[self.active] if self.active in self.adapter_config else self.base_layer


class WholeModelAdapter(nn.Module):
    """Base class of methods that wrap the whole model rather than layers (prefix and prompt tuning).

    ``disabled`` makes forward call the base model alone: ``disable_adapters`` sets it.
    """

    def __init__(self, base_model: nn.Module):
        super().__init__()
        self.base_model = base_model
        self.disabled = False


# ---------------------------------------------------------------- finding targets

def model_family(model: nn.Module) -> str | None:
    """The model family: ``config.model_type`` for transformers models, ``"resnet"`` for torchvision's."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", None):
        return config.model_type
    if type(model).__name__ == "ResNet" and all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return "resnet"
    return None


def default_targets(model: nn.Module, table: dict | None = None, method: str = "lora"):
    """The entry of ``table`` (default ``DEFAULT_TARGETS``) for the model's family; ValueError if there is none."""
    table = DEFAULT_TARGETS if table is None else table
    family = model_family(model)
    if family not in table:
        raise ValueError(
            f"no default {method} targets for {type(model).__name__} (family {family!r}; known: "
            f"{', '.join(sorted(table))}); pass targets=, e.g. {ALL_LINEAR!r} or a list of module names "
            f"such as {linear_leaf_names(model)[:4]}"
        )
    return table[family]


def candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module a target may name: not the root, nothing inside a wrapper."""
    inside = [name + "." for name, module in model.named_modules() if isinstance(module, TunedLayer)]
    return [(name, module) for name, module in model.named_modules()
            if name and not any(name.startswith(prefix) for prefix in inside)]


def linear_leaf_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the linear layers of ``model`` (for suggestions)."""
    names = {name.rsplit(".", 1)[-1] for name, module in candidate_modules(model)
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


def matches(name: str, targets: list[str] | str) -> bool:
    """peft's rule: a string is a regex that must match the whole name; a list entry the name or its dotted end."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == key or name.endswith("." + key) for key in targets)


def layer_index(name: str, layers_pattern: list[str] | str | None = None) -> int | None:
    """The block number in ``name`` as peft reads it: the first number after ``layers_pattern`` (any name if None).

    ``"model.layers.3.self_attn.q_proj"`` -> 3; ``layers_pattern="h"`` reads ``"transformer.h.1.attn"`` -> 1.
    """
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern or [r"[^.]*"]
    for pattern in patterns:
        # the first numbered segment, not the last: experts in a block are numbered too
        match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
        if match:
            return int(match.group("idx"))
    return None


def is_mha_out_proj(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is the ``out_proj`` of an nn.MultiheadAttention, which reads its weight without calling it."""
    parent, _, child = name.rpartition(".")
    return child == "out_proj" and isinstance(model.get_submodule(parent), nn.MultiheadAttention)


def _all_linear(model: nn.Module, candidates: list[tuple[str, nn.Module]], what: str) -> list[str]:
    """Every nn.Linear / Conv1D / nn.MultiheadAttention outside the output head (an attention's out_proj goes
    with the attention)."""
    heads = output_head_names(model)
    kinds = (nn.Linear, Conv1D, nn.MultiheadAttention)
    names = [name for name, module in candidates if name not in heads and not is_mha_out_proj(model, name) and (
        isinstance(module, kinds) or isinstance(module, TunedLayer) and isinstance(module.base_layer, kinds))]
    if not names:
        raise ValueError(f"{what}={ALL_LINEAR!r} found no linear layer outside the output head of "
                         f"{type(model).__name__}")
    return names


def _no_match_error(model: nn.Module, what: str, keys: list[str], regex: bool) -> ValueError:
    names = [name for name, _ in candidate_modules(model)]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
    close = []
    for key in keys:
        close += difflib.get_close_matches(key, leaves, n=5, cutoff=0.5)
        close += difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"close candidates: {sorted(set(close))}" if close else f"module names end with e.g. {leaves[:12]}"
    if regex and any(matches(name, keys) for name in names):
        hint = (f"a string is a regex that must match the whole module name (peft's rule); as a list, "
                f"{what}={keys!r} would select the modules whose names end in '.{keys[0]}'")
    shown = keys if len(keys) > 1 else keys[0]
    return ValueError(f"{what}{' regex' if regex else ''} {shown!r} match no module of {type(model).__name__}; {hint}")


def find_targets(model: nn.Module, targets: list[str] | str | None = None, *, what: str = "targets",
                 layers_to_transform: list[int] | int | None = None,
                 layers_pattern: list[str] | str | None = None) -> list[str]:
    """Names of the modules ``targets`` selects, in model order (peft's ``target_modules`` rules).

    * a list of strings: module names equal to, or ending in ``"." +``, one of them
      (``["query", "value"]``); every entry must match something;
    * a string: a regex that must match the whole name (``re.fullmatch``);
    * ``"all-linear"``: every nn.Linear, Conv1D and nn.MultiheadAttention except the output head
      (peft would pick an attention's ``out_proj``, which nn.MultiheadAttention never calls);
    * ``None``: the family default, ``default_targets(model)``.

    ``layers_to_transform`` (a block number or a list of them) keeps the targets inside those
    blocks; ``layers_pattern`` names the block list (e.g. ``"layers"`` or ``"h"``) when the first
    number in a name is not the block's. Modules inside a wrapper (``...query.base_layer``) are
    never selected, the wrapper itself is. Raises ValueError, naming close candidates, when a
    target matches nothing.
    """
    if targets is None:
        targets = default_targets(model)
    candidates = candidate_modules(model)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        names = _all_linear(model, candidates, what)
    elif isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as error:
            raise ValueError(f"{what}={targets!r} is not a valid regular expression ({error}); pass a valid regex "
                             f"or a list of module names such as {linear_leaf_names(model)[:3]}") from None
        names = [name for name, _ in candidates if matches(name, targets)]
        if not names:
            raise _no_match_error(model, what, [targets], regex=True)
    else:
        if not isinstance(targets, (list, tuple, set)) or not all(isinstance(key, str) for key in targets):
            raise TypeError(f"{what} must be a list of module names, a regex string or {ALL_LINEAR!r}, "
                            f"got {targets!r}")
        if not targets:
            raise ValueError(f"{what}=[] selects no module, so nothing would be trained; name at least one module "
                             f"(e.g. {linear_leaf_names(model)[:3]}) or leave {what}=None for the family default")
        missing = [key for key in targets if not any(matches(name, [key]) for name, _ in candidates)]
        if missing:
            raise _no_match_error(model, what, missing, regex=False)
        names = [name for name, _ in candidates if matches(name, list(targets))]
    if layers_to_transform is not None:
        names = _in_layers(names, targets, layers_to_transform, layers_pattern, what)
    elif layers_pattern is not None:
        raise ValueError("layers_pattern only says where to read block numbers for layers_to_transform; "
                         "pass layers_to_transform too")
    return names


def _in_layers(names: list[str], targets, layers_to_transform, layers_pattern, what: str) -> list[str]:
    """The ``names`` inside the blocks numbered ``layers_to_transform`` (peft's rule, see ``layer_index``)."""
    wanted = layers_to_transform if isinstance(layers_to_transform, (list, tuple)) else [layers_to_transform]
    if not wanted:
        raise ValueError("layers_to_transform=[] keeps no block; give block numbers, or None for every block")
    for i in wanted:
        check_int("layers_to_transform", i, minimum=0)
    if isinstance(targets, str) and targets.lower() != ALL_LINEAR:
        raise ValueError("layers_to_transform works with a list of targets (peft ignores it for a regex); "
                         "put the block numbers into the regex instead, or pass targets as a list")
    found = {name: layer_index(name, layers_pattern) for name in names}
    kept = [name for name, index in found.items() if index in wanted]
    if not kept:
        numbers = sorted({index for index in found.values() if index is not None})
        raise ValueError(f"layers_to_transform={layers_to_transform!r} keeps none of the {len(names)} {what}; "
                         f"their block numbers are {numbers}" + (" (set layers_pattern to the name of the block "
                                                                 "list, e.g. 'layers' or 'h')" if numbers else ""))
    return kept


def pattern_value(name: str, pattern: dict | None):
    """The value of the first key of ``pattern`` that, as a regex, matches the end of ``name`` (peft's
    ``rank_pattern`` / ``alpha_pattern`` rule), or None."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return None


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


def tuned_layers(model: nn.Module) -> list[tuple[str, TunedLayer]]:
    """``(name, layer)`` of every wrapped layer in ``model`` (a wrapper inside another one included)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, TunedLayer)]


def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter name present in ``model``, in the order they were added."""
    names: dict[str, None] = {}
    for _, layer in tuned_layers(model):
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def active_adapter(model: nn.Module) -> str | None:
    """The adapter the model's wrapped layers use (None when there is none)."""
    for _, layer in tuned_layers(model):
        if layer.active is not None:
            return layer.active
    return None


def make_trainable(model: nn.Module) -> None:
    """Freeze everything, then let only what the active adapter trains have gradients."""
    freeze(model)
    layers = [layer for _, layer in tuned_layers(model) if layer.active in layer.adapter_config]
    for layer in layers:
        for p in layer.trainable_parameters(layer.active):
            p.requires_grad_(True)
    if any(getattr(layer.adapter_config[layer.active], "bias", "none") == "all" for layer in layers):
        # LoRA's bias="all" (peft's option) trains every bias of the model; saved modules train as copies
        saved = [name for name, layer in tuned_layers(model) if isinstance(layer, TrainableCopy)]
        for name, p in model.named_parameters():
            if "bias" in name.rsplit(".", 1)[-1] and "lora_" not in name and not any(
                    name.startswith(f"{module}.") for module in saved):
                p.requires_grad_(True)


def check_unmerged(model: nn.Module, doing: str) -> None:
    """Raise ValueError if an adapter is merged (``doing`` says what cannot be done then)."""
    merged = [name for name, layer in tuned_layers(model) if layer.merged is not None]
    if merged:
        raise ValueError(f"cannot {doing} while adapters are merged (e.g. in {merged[0]!r}); call unmerge(model) first")


def check_one_method(model: nn.Module, method: str) -> None:
    """Raise ValueError if ``model`` already carries another method that ``method`` would silently freeze or hide.

    ftlab trains one kind of method at a time: layer adapters (LoRA, IA3, ...) and whole-model
    wrappers (prefix, prompt) or flag-setting methods (full, freeze, BitFit) would freeze each
    other's parameters. To combine them, bake the first into the weights with
    ``merge_and_unload(model)``, then apply the second.
    """
    if isinstance(model, WholeModelAdapter):
        raise ValueError(f"the model is already wrapped by {type(model).__name__}; ftlab trains one method at a time, "
                         f"and {method} would freeze its virtual tokens. Apply {method} to the base model instead "
                         f"(before prefix or prompt tuning, then merge_and_unload it)")
    layers = [(name, layer) for name, layer in tuned_layers(model) if not isinstance(layer, TrainableCopy)]
    if layers and method in ("full", "freeze", "bitfit", "prefix", "prompt"):
        name, layer = layers[0]
        raise ValueError(f"the model already carries {layer.method!r} adapters (e.g. on {name!r}); {method} would "
                         f"freeze or bypass them, as ftlab trains one method at a time. To combine, merge the "
                         f"adapters into the weights first: ftlab.merge_and_unload(model), then apply {method!r}")


@dataclass
class Plan:
    """What ``inject`` will do, all checked: ``layers`` are ``(name, module, class, options)``, ``saved`` the
    modules_to_save."""

    adapter_name: str
    layers: list[tuple[str, nn.Module, type[TunedLayer], object]]
    saved: list[tuple[str, nn.Module]]


def plan_injection(model: nn.Module, layer_classes: Sequence[type[TunedLayer]], options, *,
                   targets: list[str] | str | None = None, adapter_name: str = "default",
                   modules_to_save: list[str] | None = None, patterns: dict[str, dict] | None = None,
                   overrides: dict[str, dict] | None = None, layers_to_transform: list[int] | int | None = None,
                   layers_pattern: list[str] | str | None = None, method: str = "") -> Plan:
    """Check an injection and say what it will do, changing nothing (``inject`` carries it out).

    Each target gets ``options``, with the fields in ``patterns`` (``{"r": rank_pattern}``) and in
    ``overrides`` (``{name: {field: value}}``) replaced for the layers they name, then, if the options
    class has one, ``options.for_layer(name)`` (options that follow from a layer's name, as
    BD-LoRA's block-diagonal factor); every layer's options are checked against it by its layer class.
    """
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty string without '.', got {adapter_name!r}")
    if adapter_name in adapter_names(model):
        raise ValueError(f"adapter {adapter_name!r} already exists in the model (adapters: {adapter_names(model)}); "
                         f"choose another adapter_name or delete_adapter() it first")
    method = method or layer_classes[0].method
    check_one_method(model, method)
    check_unmerged(model, "add an adapter")
    names = find_targets(model, targets, layers_to_transform=layers_to_transform, layers_pattern=layers_pattern)
    if modules_to_save is not None and (isinstance(modules_to_save, str) or not modules_to_save):
        raise ValueError(f"modules_to_save must be a non-empty list of module names (or None), got {modules_to_save!r}")
    saved = find_targets(model, list(modules_to_save), what="modules_to_save") if modules_to_save else []
    overlap = set(names) & set(saved)
    if overlap:
        raise ValueError(f"{sorted(overlap)} are both targets and modules_to_save; a module can be one or the other")
    for option, pattern in (patterns or {}).items():
        if pattern is not None and not isinstance(pattern, dict):
            raise TypeError(f"the pattern for {option} must be a dict from module-name regex to value, got {pattern!r}")
    layers = []
    for name in names:
        module = model.get_submodule(name)
        if is_mha_out_proj(model, name):
            raise TypeError(f"{name!r} is nn.MultiheadAttention's output projection, whose forward the attention "
                            f"never calls (it reads the weight directly), so an adapter there would do nothing; "
                            f"target the attention module {name.rpartition('.')[0]!r} instead")
        base = module.base_layer if isinstance(module, TunedLayer) else module
        layer_options = options
        changes = {option: pattern_value(name, pattern) for option, pattern in (patterns or {}).items()}
        changes = {**{k: v for k, v in changes.items() if v is not None}, **(overrides or {}).get(name, {})}
        if changes:
            try:
                layer_options = dataclasses.replace(options, **changes)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{name!r}: {error}") from None
        for_layer = getattr(layer_options, "for_layer", None)  # options that depend on the layer's name (BD-LoRA)
        if for_layer is not None:
            try:
                layer_options = for_layer(name)
            except ValueError as error:
                raise ValueError(f"{name!r}: {error}") from None
        if isinstance(module, TunedLayer):  # another adapter on a wrapped layer: the same kind of wrapper only
            cls = type(module)
            if not (any(issubclass(cls, c) for c in layer_classes) and cls.accepts(base, layer_options)):
                raise TypeError(f"{name!r} already carries a {module.method!r} adapter ({cls.__name__}); one kind of "
                                f"adapter per layer, so target other layers or delete_adapter() first")
        else:
            cls = next((c for c in layer_classes if c.accepts(base, layer_options)), None)
            if cls is None:
                kinds = sorted({kind.__name__ for c in layer_classes for kind in c.kinds})
                raise TypeError(f"{name!r}: {method} cannot adapt a {type(base).__name__}; it adapts "
                                f"{', '.join(kinds)}. Choose targets that name such layers")
        try:
            cls.check(base, name, layer_options)
        except (TypeError, ValueError) as error:  # say which module: a pattern may match more than intended
            raise type(error)(f"{name!r}: {error}") from None
        layers.append((name, module, cls, layer_options))
    saved_modules = []
    for name in saved:
        module = model.get_submodule(name)
        if isinstance(module, TunedLayer) and not isinstance(module, TrainableCopy):
            raise TypeError(f"modules_to_save names {name!r}, which already carries a {module.method!r} adapter")
        TrainableCopy.check(module, name, None)
        saved_modules.append((name, module))
    return Plan(adapter_name, layers, saved_modules)


def carry_out(model: nn.Module, plan: Plan) -> nn.Module:
    """Wrap the layers of a checked ``plan`` and add its adapter; the first adapter becomes active, later ones
    are added inactive, as in peft (``set_adapter`` switches). Only the active adapter trains."""
    active = active_adapter(model) or plan.adapter_name
    steps = [(name, module, cls, options) for name, module, cls, options in plan.layers]
    steps += [(name, module, TrainableCopy, None) for name, module in plan.saved]
    for name, module, cls, options in steps:
        if not isinstance(module, TunedLayer):
            training = module.training
            module = cls(module)
            module.train(training)  # a new wrapper would start in train mode: keep the model's mode
            replace_module(model, name, module)
        module.add(plan.adapter_name, options)
        module.train(module.base_layer.training)  # new dropout layers follow the base layer's mode
        for layer in module.modules():
            if isinstance(layer, TunedLayer):
                layer.active = active
    make_trainable(model)
    return model


def inject(model: nn.Module, layer_classes: Sequence[type[TunedLayer]], options, **plan_options) -> nn.Module:
    """Wrap ``model``'s targets with adapter ``adapter_name``; returns ``model``, changed in place.

    Everything is checked first (``plan_injection``: targets exist and are supported layers,
    ``options`` fit every layer, the adapter name is new, nothing is merged), so an error leaves
    the model untouched. Then the base model is frozen: only the active adapter's parameters
    (and the copies of ``modules_to_save``) train.
    """
    return carry_out(model, plan_injection(model, layer_classes, options, **plan_options))


# ---------------------------------------------------------------- model-level adapter functions

def _mergeable(model: nn.Module) -> list[tuple[str, TunedLayer]]:
    return [(name, layer) for name, layer in tuned_layers(model)
            if layer.mergeable and layer.active in layer.adapter_config]


def _check_mergeable(layers: list[tuple[str, TunedLayer]]) -> None:
    """Raise before any layer is merged if one of them cannot be (a grouped convolution's LoRA)."""
    for name, layer in layers:
        try:
            layer.check_mergeable()
        except TypeError as error:
            raise TypeError(f"{name!r}: {error}") from None


def merge(model: nn.Module) -> nn.Module:
    """Merge the active adapter into the base weights of every wrapped layer (W <- W + delta).

    Exact to rounding in float32 / float64; in float16 and bfloat16 each merged weight is
    rounded once more, so ``unmerge`` gives the original back only to about one unit in the last
    place (see ``TunedLayer.merge``).
    """
    layers = _mergeable(model)
    if not layers:
        raise ValueError("the model has no active adapter to merge; apply a method first")
    merged = [name for name, layer in layers if layer.merged is not None]
    if merged:
        raise ValueError(f"adapters are already merged (e.g. in {merged[0]!r}); unmerge(model) before merging again")
    _check_mergeable(layers)
    for _, layer in layers:
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take the merged adapters out of the base weights again (the inverse of ``merge``, see its note on precision)."""
    layers = [layer for _, layer in tuned_layers(model) if layer.merged is not None]
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
    layers = tuned_layers(model)
    if not layers:
        raise ValueError("the model has no wrapped layers to unload; apply a method first")
    _check_mergeable([(name, layer) for name, layer in _mergeable(model) if layer.merged is None])
    for name, layer in reversed(layers):  # inner wrappers first
        replace_module(model, name, layer.unload())
    return model


def set_adapter(model: nn.Module, name: str) -> nn.Module:
    """Make ``name`` the active adapter of every wrapped layer; only its parameters train."""
    if name not in adapter_names(model):
        raise ValueError(f"no adapter called {name!r}; the model has {adapter_names(model)}")
    check_unmerged(model, "switch adapters")
    for _, layer in tuned_layers(model):
        layer.active = name
    make_trainable(model)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Context manager in which the model computes exactly the base model's output.

    Works for every method that leaves the base weights alone: wrapped layers compute their base
    layer, prefix and prompt tuning call the base model. Used as the frozen reference model in
    DPO and RLHF. Merged adapters are unmerged on entry and merged again on exit. Methods that
    train the base model's own weights in place (full, freeze, BitFit, LoRA's ``bias`` option)
    have nothing to disable: ValueError.

        with disable_adapters(model):
            reference_logits = model(x)
    """
    layers = [layer for _, layer in tuned_layers(model)]
    wrappers = [m for m in model.modules() if isinstance(m, WholeModelAdapter)]
    biased = [layer for layer in layers if getattr(layer.adapter_config.get(layer.active), "bias", "none") != "none"]
    if biased:
        raise ValueError(f"the active adapter trains the base model's own biases (bias="
                         f"{biased[0].adapter_config[biased[0].active].bias!r}), so no switch gives the base model "
                         f"back; apply with bias='none' (the default) to compare against the base model")
    merged = [layer for layer in layers if layer.merged is not None]
    for layer in merged:
        layer.unmerge()
    for module in layers + wrappers:
        module.disabled = True
    try:
        yield model
    finally:
        for module in layers + wrappers:
            module.disabled = False
        for layer in merged:
            layer.merge()


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove adapter ``name`` everywhere; layers left without adapters become plain modules again.

    If ``name`` was active, the first remaining adapter becomes active.
    """
    if name not in adapter_names(model):
        raise ValueError(f"no adapter called {name!r}; the model has {adapter_names(model)}")
    check_unmerged(model, "delete an adapter")
    was_active = active_adapter(model) == name
    for layer_name, layer in reversed(tuned_layers(model)):  # inner wrappers first
        if name in layer.adapter_config:
            layer.remove(name)
            if not layer.adapters:
                replace_module(model, layer_name, layer.base_layer)
    remaining = adapter_names(model)
    if was_active and remaining:
        for _, layer in tuned_layers(model):
            layer.active = remaining[0]
    make_trainable(model)
    return model
