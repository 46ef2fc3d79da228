"""Layer freezing: train only the top layer groups, unfreeze gradually, give each group its own rate.

A model is cut into *layer groups*, ordered from the input to the output:

* ResNet: ``stem`` (conv1, bn1), ``layer1`` ... ``layer4``, ``fc``;
* BERT: ``embeddings``, ``layer.0`` ... ``layer.{L-1}``, ``head`` (pooler and classifier);
* GPT-2: ``embeddings`` (wte, wpe), ``h.0`` ... ``h.{L-1}``, ``head`` (ln_f and the output
  layer; GPT-2's lm_head shares its weight with wte, and a shared parameter belongs to the
  first group that holds it, so freezing the embeddings freezes the tied lm_head too).

Other models pass ``groups={"name": ["module.name", ...], ...}`` (input to output).

The recipe of ULMFiT / fastai's ``fine_tune``, as explicit calls::

    freeze_to(model, -1)                                          # head only
    fit(model, data, num_steps=50, lr=1e-3)
    optimizer = torch.optim.AdamW(discriminative_param_groups(model, lr=1e-3))
    fit(model, data, num_steps=200, optimizer=optimizer,
        on_step=gradual_unfreezing(model, every=40))              # one more group every 40 steps
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ftlab.methods.base import MethodSpec, check_one_method, freeze, model_family
from ftlab.validate import check_int, check_number

FAMILIES = ("resnet", "bert", "gpt2")
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _backbone_prefix(model: nn.Module) -> str:
    """Dotted name of a transformers model's backbone inside ``model`` (``""`` if it is the backbone)."""
    backbone = model.base_model
    return next(name for name, module in model.named_modules() if module is backbone)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _family_groups(model: nn.Module) -> dict[str, list[str]]:
    """The built-in layer groups of a ResNet, BERT or GPT-2 model (module names, input to output)."""
    family = model_family(model)
    if family == "resnet":
        return {"stem": ["conv1", "bn1"], **{f"layer{i}": [f"layer{i}"] for i in range(1, 5)}, "fc": ["fc"]}
    if family not in ("bert", "gpt2"):
        raise ValueError(
            f"no built-in layer groups for {type(model).__name__} (family {family!r}); known families: "
            f"{', '.join(FAMILIES)}. Pass groups= as a dict from group name to module names, input to output, "
            f"e.g. groups={{'body': ['features'], 'head': ['classifier']}}; top-level modules here: "
            f"{[name for name, _ in model.named_children()]}"
        )
    prefix = _backbone_prefix(model)
    backbone = model.base_model
    # Everything outside the backbone (classifier, lm_head, score) is the head.
    head = [name for name, module in model.named_children() if module is not backbone] if prefix else []
    if family == "bert":
        layers = backbone.encoder.layer
        groups = {"embeddings": [_join(prefix, "embeddings")]}
        groups.update({f"layer.{i}": [_join(prefix, f"encoder.layer.{i}")] for i in range(len(layers))})
        pooler = [_join(prefix, "pooler")] if getattr(backbone, "pooler", None) is not None else []
        groups["head"] = pooler + head
    else:
        groups = {"embeddings": [_join(prefix, "wte"), _join(prefix, "wpe")]}
        groups.update({f"h.{i}": [_join(prefix, f"h.{i}")] for i in range(len(backbone.h))})
        groups["head"] = [_join(prefix, "ln_f")] + head
    return groups


def layer_groups(model: nn.Module, groups: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The layer groups of ``model`` as ``{group name: [module names]}``, from input to output.

    ``groups=None`` uses the built-in groups of the model's family (see module docstring);
    an explicit ``groups`` is checked (every module exists and has parameters, no module is
    in two groups) and returned. Unknown family without ``groups``: ValueError.
    """
    if groups is None:
        return _family_groups(model)
    if not isinstance(groups, dict) or not groups:
        raise TypeError(f"groups must be a non-empty dict from group name to a list of module names, got {groups!r}")
    modules = dict(model.named_modules())
    seen: dict[str, str] = {}
    checked = {}
    for group, names in groups.items():
        names = [names] if isinstance(names, str) else list(names)
        if not names or not all(isinstance(name, str) for name in names):
            raise TypeError(f"group {group!r} must list module names (strings), got {groups[group]!r}")
        for name in names:
            if name not in modules:
                raise ValueError(f"group {group!r} names {name!r}, which is no module of {type(model).__name__}; "
                                 f"top-level modules: {[n for n, _ in model.named_children()]}")
            if not any(True for _ in modules[name].parameters()):
                raise ValueError(f"group {group!r} names {name!r}, which has no parameters to freeze or train")
            if name in seen:
                raise ValueError(f"module {name!r} is in groups {seen[name]!r} and {group!r}; put it in one group")
            seen[name] = group
        checked[group] = names
    return checked


def group_parameters(model: nn.Module, groups: dict[str, list[str]] | None = None) -> dict[str, list[nn.Parameter]]:
    """The parameters of each layer group, ``{group name: [parameters]}``, input to output.

    A parameter shared by two groups (GPT-2's tied wte / lm_head) belongs to the first one.
    """
    seen: set[int] = set()
    out = {}
    for group, names in layer_groups(model, groups).items():
        params = []
        for name in names:
            for p in model.get_submodule(name).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        out[group] = params
    return out


def freeze_to(model: nn.Module, n: int, *, groups: dict[str, list[str]] | None = None,
              train_bn: bool = False) -> nn.Module:
    """Freeze the first ``n`` layer groups and make the others trainable (fastai's ``freeze_to``).

    ``n`` counts like a Python slice: ``freeze_to(model, -1)`` trains only the last group
    (the head), ``freeze_to(model, 0)`` trains everything. Parameters outside every group
    (possible only with explicit ``groups``) are frozen.

    ``train_bn=True`` keeps the BatchNorm weights and biases of frozen groups trainable.
    Why: the pretrained BatchNorm layers normalise with statistics of the pretraining data;
    on new data the activations have another mean and scale, and letting the few BatchNorm
    affine parameters (about 0.1% of a ResNet) follow costs almost nothing and usually
    helps a lot (fastai's default). Note that in train mode BatchNorm's running statistics
    are updated either way; ``requires_grad`` only governs the affine parameters.
    """
    params = group_parameters(model, groups)
    if not -len(params) <= check_int("n", n) <= len(params):
        raise ValueError(f"n must be an int from {-len(params)} to {len(params)} for the {len(params)} layer groups "
                         f"{list(params)}, got {n!r}")
    freeze(model)
    for group in list(params)[n:]:
        for p in params[group]:
            p.requires_grad_(True)
    if train_bn:
        for module in model.modules():
            if isinstance(module, BATCH_NORMS):
                for p in module.parameters():
                    p.requires_grad_(True)
    return model


def apply(model: nn.Module, trainable_groups: int = 1, *, groups: dict[str, list[str]] | None = None,
          train_bn: bool = False) -> nn.Module:
    """Freeze all but the top ``trainable_groups`` layer groups (1 = head only); see ``freeze_to``."""
    check_one_method(model, "freeze")
    num_groups = len(layer_groups(model, groups))
    if not 1 <= check_int("trainable_groups", trainable_groups) <= num_groups:
        raise ValueError(f"trainable_groups must be an int from 1 (head only) to {num_groups} (everything), "
                         f"got {trainable_groups!r}")
    return freeze_to(model, num_groups - trainable_groups, groups=groups, train_bn=train_bn)


def gradual_unfreezing(model: nn.Module, every: int, *, start: int = 1, groups: dict[str, list[str]] | None = None,
                       train_bn: bool = False) -> Callable:
    """An ``on_step(step, model, optimizer)`` for ``ftlab.train.fit`` that unfreezes one group every ``every`` steps.

    At step ``s`` the top ``min(G, start + s // every)`` of the ``G`` groups train (ULMFiT's
    gradual unfreezing). ``fit`` builds its default optimizer only from parameters that are
    trainable at the start, so pass an optimizer over all groups, e.g.
    ``AdamW(discriminative_param_groups(model, lr))``: frozen parameters get no gradient, and
    AdamW skips a parameter without gradient until it is unfrozen.
    """
    num_groups = len(layer_groups(model, groups))
    check_int("every", every, minimum=1)
    if not 1 <= check_int("start", start) <= num_groups:
        raise ValueError(f"start must be an int from 1 to {num_groups} (trainable groups at step 0), got {start!r}")
    state = {"trainable": None}

    def on_step(step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        trainable = min(num_groups, start + step // every)
        if trainable != state["trainable"]:
            freeze_to(model, num_groups - trainable, groups=groups, train_bn=train_bn)
            state["trainable"] = trainable

    return on_step


def discriminative_param_groups(model: nn.Module, lr: float, factor: float = 2.6, *,
                                groups: dict[str, list[str]] | None = None, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups with learning rates falling geometrically from the head down.

    Group ``k`` of ``G`` (0 = input side) gets ``lr / factor ** (G - 1 - k)``: the head trains
    at ``lr``, each group below at ``factor`` times less (ULMFiT uses 2.6), because lower
    layers hold general features that should move least. Every parameter of every group is
    included, frozen or not, so gradual unfreezing can use the same optimizer. Each dict has
    ``params``, ``lr``, ``weight_decay`` and the group's ``name``.
    """
    check_number("lr", lr, minimum=0, strict_minimum=True)
    check_number("factor", factor, minimum=1)  # the rate ratio between neighbouring groups
    params = group_parameters(model, groups)
    top = len(params) - 1
    return [{"params": ps, "lr": lr / factor ** (top - k), "weight_decay": weight_decay, "name": name}
            for k, (name, ps) in enumerate(params.items())]


SPEC = MethodSpec(name="freeze", apply=apply, lr=3e-3)
