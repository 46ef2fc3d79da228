"""The fine-tuning methods, one file each, and the registry that finds them.

Every file in this folder that ends with ``SPEC = MethodSpec(...)`` is a method: the registry
(``registry()``) imports each file once and reads its spec, so no list of methods is kept
anywhere else. ``ftlab.apply(model, name, **options)``, ``ftlab.export_peft`` / ``import_peft``
and ``ftlab.compare`` read the specs (``method_spec(name)``: apply function, options dataclass,
layer classes, peft format, learning rate). What methods that wrap layers share (targets,
wrappers, named adapters, merging, the model-level functions) is ``base.py``.

How to add a method, e.g. VeRA (Kopiczko et al. 2024: frozen random A and B shared by all layers,
trained scaling vectors d and b, delta W = diag(b) B diag(d) A), in one new file plus its tests:

1. ``ftlab/methods/vera.py``: a docstring with the equation and the citation; an options
   dataclass with peft's option names and defaults (``VeraOptions``: r=256, vera_dropout=0.0,
   d_initial=0.1, ...), validated in ``__post_init__`` with ``ftlab.validate``;
2. a ``base.TunedLayer`` subclass: ``method = "vera"``, ``options_class``, ``kinds`` (the layer
   types it wraps), ``check`` (options that do not fit a layer), ``build`` (parameters in
   ``nn.ParameterDict`` / ``nn.ModuleDict`` attributes keyed by the adapter name, with peft's
   names), ``forward`` (starting with ``adapter = self.adapter_in_use()``) and ``delta_weight``;
3. ``apply(model, *, <options>, targets=None, modules_to_save=None, adapter_name="default")``
   that builds the options and calls ``base.inject``;
4. ``SPEC = MethodSpec(name="vera", apply=apply, lr=..., options=VeraOptions,
   layers=("ftlab.methods.vera:VeraLayer",), peft=PeftFormat("VERA", ...))`` (``peft=None`` if
   peft cannot load it);
5. ``tests/test_vera.py``: the layer built directly with default options runs; parity with
   peft's VeraConfig in float64 (outputs, gradients, merge/unmerge); the model starts equal to
   the base model; bad options raise before anything changes; export/import through peft.

Files touched: 2 (``ftlab/methods/vera.py``, ``tests/test_vera.py``). The registry, ``ftlab.apply``,
``add_adapter``, ``export_peft`` / ``import_peft`` and ``compare`` pick the method up from its SPEC.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import pkgutil

from torch import nn

from ftlab.methods.base import MethodSpec

# The order in which lists of methods show them (teaching order); methods not named here follow, by name.
TEACHING_ORDER = ("full", "freeze", "bitfit", "adapter", "lora", "dora", "qlora", "loha", "lokr", "ia3", "prefix",
                  "prompt")


@functools.cache
def registry() -> dict[str, MethodSpec]:
    """Every method, ``{name: MethodSpec}``: the ``SPEC`` of each file in ``ftlab/methods``, in teaching order."""
    specs = {}
    for info in pkgutil.iter_modules(__path__):
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if spec is not None:
            specs[spec.name] = spec
    order = {name: i for i, name in enumerate(TEACHING_ORDER)}
    return dict(sorted(specs.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def available() -> list[str]:
    """The names of all methods, in teaching order."""
    return list(registry())


def method_spec(name: str) -> MethodSpec:
    """The registry entry of method ``name``; ValueError naming the methods (and close names) if there is none."""
    specs = registry()
    if name not in specs:
        close = difflib.get_close_matches(str(name), specs, n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; choose one of: {', '.join(specs)}")
    return specs[name]


def check_options(spec: MethodSpec, options: dict) -> None:
    """Raise before anything changes if ``options`` has a name ``spec.apply`` does not take.

    A peft option that ftlab does not reproduce gets the reason and what to use instead
    (``PeftFormat.refused``); any other unknown name the method's options and close matches.
    """
    parameters = inspect.signature(spec.apply).parameters
    accepted = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY or
                p.kind is p.POSITIONAL_OR_KEYWORD and name != "model"]
    accepted = [name for name in accepted if name not in spec.implied]
    refused = spec.peft.refused if spec.peft else {}
    for name in options:
        if name in refused and name not in accepted:
            raise ValueError(f"{spec.name}: peft's option {name!r} is not supported by ftlab: {refused[name]}")
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=2)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise TypeError(f"{spec.name} has no option {name!r}; {hint}its options are: {', '.join(accepted)}")


def apply(model: nn.Module, method: str, **options) -> nn.Module:
    """Apply fine-tuning ``method`` to ``model`` and return the model, ready to train.

    Freezes what the method keeps fixed and injects what it trains; ``options`` are the
    method's keyword arguments (same names and defaults as peft's where peft has them).
    Unknown methods and options raise before anything changes.
    """
    spec = method_spec(method)
    check_options(spec, options)
    return spec.apply(model, **options, **spec.implied)


def add_adapter(model: nn.Module, name: str, method: str = "lora", **options) -> nn.Module:
    """Add another adapter called ``name`` with ``apply(model, method, adapter_name=name, **options)``.

    The active adapter stays as it is (as in peft); ``set_adapter(model, name)`` switches to
    the new one and makes it the trainable one. Duplicate names raise ValueError.
    """
    return apply(model, method, adapter_name=name, **options)
