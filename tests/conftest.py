"""Shared fixtures: the offline MiniLM is loaded once per test session (about 4 s)."""
import copy

import pytest

from ftlab.zoo import load_bert


@pytest.fixture(scope="session")
def _minilm_pristine():
    return load_bert()


@pytest.fixture
def minilm(_minilm_pristine):
    """A fresh copy of the offline MiniLM sequence classifier and its tokenizer."""
    model, tokenizer = _minilm_pristine
    return copy.deepcopy(model), tokenizer


@pytest.fixture
def tiny_gpt2():
    """A seeded, randomly initialised GPT-2 (2 layers, d=64, 4 heads, 500 tokens, 64 positions) in eval mode."""
    from builders import tiny_gpt2 as build

    return build()


@pytest.fixture
def untouched():
    """``check = untouched(model)`` before a call that must fail; ``check()`` afterwards asserts that the
    model's module structure, every state_dict tensor and every ``requires_grad`` flag are as before."""
    import torch

    def snapshot(model):
        structure = repr(model)
        state = copy.deepcopy(model.state_dict())
        flags = [(name, p.requires_grad) for name, p in model.named_parameters()]

        def check():
            assert repr(model) == structure
            now = model.state_dict()
            assert list(now) == list(state)
            assert all(torch.equal(now[k], v) for k, v in state.items())
            assert [(name, p.requires_grad) for name, p in model.named_parameters()] == flags

        return check

    return snapshot


@pytest.fixture
def tiny_gpt2_chat():
    """``(model, tokenizer)``: a seeded random GPT-2 (2 layers, d=64, 64 positions, no dropout) sized to the
    shipped byte-level BPE tokenizer of data/gpt2_tiny (``<|endoftext|>`` bos/eos, ``<|pad|>`` pad), in eval mode."""
    from pathlib import Path

    import torch
    import transformers

    folder = Path(__file__).resolve().parent.parent / "data" / "gpt2_tiny"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tokenizer), n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
    return transformers.GPT2LMHeadModel(config).eval(), tokenizer


@pytest.fixture
def ipython_shell():
    """The global IPython test shell (started once per session). IPython's ``globalipapp.get_ipython`` returns it
    only on its first call, so every test asks for it through this fixture instead."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    start_ipython()
    return get_ipython()
