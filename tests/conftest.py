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
