"""Prompt tuning (Lester et al., 2021): learned input embeddings prepended to every sequence.

The model reads P "virtual tokens" before the real ones:

    inputs_embeds = [prompt ; E[input_ids]]      prompt: (P, d) learned, E: the frozen word embeddings

Only ``prompt`` trains (P * d parameters); it passes through the frozen model like real
token embeddings (position embeddings included), so positions 0..P-1 belong to the
prompt. The attention mask gets P ones in front, ``token_type_ids`` P zeros, and
token-level labels (causal language modelling) P times -100, so the virtual positions are
never predicted. The logits of the virtual positions are dropped: the output lines up
with ``input_ids`` as the base model's does (peft returns them; its loss is the same).

Initialisation (peft's ``PromptTuningInit``): ``"RANDOM"`` (N(0, 1) entries, as peft's
nn.Embedding: far from real token embeddings), ``"SAMPLE_VOCAB"`` (embeddings of random
vocabulary tokens) or ``"TEXT"`` (the embeddings of a tokenised text, repeated or cut to P tokens).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ftlab.methods.base import MethodSpec, WholeModelAdapter
from ftlab.methods.prefix import check_length, check_virtual_tokens, train_modules
from ftlab.train import IGNORE_INDEX

INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


class PromptTuning(WholeModelAdapter):
    """A frozen transformers model that reads ``num_virtual_tokens`` learned embeddings first.

    Called like the base model (``input_ids``, ``attention_mask``, ``token_type_ids``,
    ``labels``); returns the base model's output with logits aligned with ``input_ids``. Inside
    ``disable_adapters`` it is the base model alone.
    """

    def __init__(self, base_model: nn.Module, prompt: torch.Tensor):
        super().__init__(base_model)
        self.num_virtual_tokens = prompt.shape[0]
        self.max_positions = base_model.config.max_position_embeddings
        self.embedding = nn.Embedding(*prompt.shape)
        with torch.no_grad():
            self.embedding.weight.copy_(prompt)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs):
        """The base model reading [prompt ; E[input_ids]]."""
        if self.disabled:
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                   labels=labels, **kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)  # (B, T, d)
        batch_size, length = inputs_embeds.shape[:2]
        P = self.num_virtual_tokens
        check_length(P, length, self.max_positions)
        prompt = self.embedding.weight.to(inputs_embeds.dtype).expand(batch_size, -1, -1)  # (B, P, d)
        inputs_embeds = torch.cat([prompt, inputs_embeds], dim=1)  # (B, P + T, d)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(batch_size, P), attention_mask], dim=1)
        if token_type_ids is not None:
            token_type_ids = torch.cat([token_type_ids.new_zeros(batch_size, P), token_type_ids], dim=1)
        token_labels = labels is not None and labels.dim() == 2 and labels.shape[1] == length
        if token_labels:  # (B, T) -> (B, P + T): nothing to predict at the virtual positions
            labels = torch.cat([labels.new_full((batch_size, P), IGNORE_INDEX), labels], dim=1)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        logits = getattr(out, "logits", None)
        if logits is not None and logits.dim() == 3 and logits.shape[1] == P + length:
            out.logits = logits[:, P:]  # (B, T, V): drop the virtual positions
        return out


def text_token_ids(text: str, tokenizer_name_or_path, num_virtual_tokens: int) -> list[int]:
    """Token ids of ``text`` (with the tokenizer's special tokens, as peft), repeated or cut to P ids."""
    tokenizer = tokenizer_name_or_path
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError(f"prompt_tuning_init_text {text!r} gives no tokens; give a non-empty text")
    ids = ids * math.ceil(num_virtual_tokens / len(ids))
    return ids[:num_virtual_tokens]


def initial_prompt(model: nn.Module, num_virtual_tokens: int, prompt_tuning_init: str = "RANDOM",
                   prompt_tuning_init_text: str | None = None, tokenizer_name_or_path=None) -> torch.Tensor:
    """The starting prompt, ``(P, d)`` float32, by one of peft's ``PromptTuningInit`` rules (module docstring)."""
    word_embeddings = model.get_input_embeddings()
    vocab_size, width = word_embeddings.weight.shape
    if prompt_tuning_init == "RANDOM":
        return torch.randn(num_virtual_tokens, width)
    if prompt_tuning_init == "SAMPLE_VOCAB":
        ids = torch.randint(0, vocab_size, (num_virtual_tokens,))
    else:
        ids = torch.tensor(text_token_ids(prompt_tuning_init_text, tokenizer_name_or_path, num_virtual_tokens))
    return word_embeddings.weight.detach()[ids.to(word_embeddings.weight.device)].float().clone()


def apply(model: nn.Module, num_virtual_tokens: int = 20, *, prompt_tuning_init: str = "RANDOM",
          prompt_tuning_init_text: str | None = None, tokenizer_name_or_path=None,
          modules_to_save: list[str] | None = None, adapter_name: str = "default") -> PromptTuning:
    """Freeze ``model`` (a transformers BERT or GPT-2) and return it wrapped with a trainable prompt.

    Options as in peft's ``PromptTuningConfig``: ``num_virtual_tokens`` (P), ``prompt_tuning_init``
    (``"RANDOM"``, ``"SAMPLE_VOCAB"``, ``"TEXT"``), ``prompt_tuning_init_text`` and
    ``tokenizer_name_or_path`` (for ``"TEXT"``: a tokenizer folder or hub name as in peft, or a
    tokenizer object such as ``ftlab.zoo.load_bert`` returns). ``modules_to_save``: modules
    that train too, e.g. ``["classifier"]`` for a sequence classifier. Trainable: ``P * d``.
    Use the returned module.
    """
    saved = check_virtual_tokens(model, num_virtual_tokens, "prompt", modules_to_save)
    init = getattr(prompt_tuning_init, "value", prompt_tuning_init)  # peft's PromptTuningInit enum or its name
    if init not in INITS:
        raise ValueError(f"prompt_tuning_init must be one of {INITS}, got {prompt_tuning_init!r}")
    if init == "TEXT" and (not prompt_tuning_init_text or tokenizer_name_or_path is None):
        raise ValueError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text (a non-empty string) and "
                         "tokenizer_name_or_path (a tokenizer or its folder)")
    prompt = initial_prompt(model, num_virtual_tokens, init, prompt_tuning_init_text, tokenizer_name_or_path)
    train_modules(model, saved, adapter_name)
    return PromptTuning(model, prompt).to(next(model.parameters()).device)


@torch.no_grad()
def nearest_tokens(model: PromptTuning, tokenizer, k: int = 3) -> list[list[str]]:
    """For each virtual token, the ``k`` vocabulary tokens whose embeddings are closest by cosine similarity.

    What a learned prompt "says" in words: usually little, since the prompt can move far
    from every real token. Returns ``P`` lists of ``k`` token strings.
    """
    vocab = model.base_model.get_input_embeddings().weight  # (V, d)
    prompt = model.embedding.weight.to(vocab.dtype)  # (P, d)
    similarity = nn.functional.normalize(prompt, dim=-1) @ nn.functional.normalize(vocab, dim=-1).T  # (P, V)
    top = similarity.topk(k, dim=-1).indices
    return [tokenizer.convert_ids_to_tokens(row.tolist()) for row in top]


SPEC = MethodSpec(name="prompt", apply=apply, lr=3e-2)
