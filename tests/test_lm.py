"""Causal language modelling helpers: document batches, packed rows, perplexity and its unigram baseline."""
import math

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from ftlab.lm import lm_loader, packed_loader, perplexity, unigram_perplexity
from ftlab.train import IGNORE_INDEX
from ftlab.zoo import DATA_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DATA_DIR / "gpt2_tiny")


def test_lm_loader_masks_exactly_the_padding(tokenizer):
    texts = ["Mara ran.", "Tolo: Hello, Mara! How are you today?"]
    batch = next(iter(lm_loader(texts, tokenizer, batch_size=2)))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    for row, text in enumerate(texts):
        n = int(mask[row].sum())
        assert ids[row, 0] == tokenizer.bos_token_id and ids[row, n - 1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[row, 1:n - 1]) == text
        assert (ids[row, n:] == tokenizer.pad_token_id).all()
    assert torch.equal(labels, ids.masked_fill(mask == 0, IGNORE_INDEX))
    assert (labels == IGNORE_INDEX).sum() > 0  # the short text really was padded


def test_lm_loader_needs_a_pad_token(tokenizer):
    with pytest.raises(ValueError, match="pad"):
        lm_loader(["a"], type("NoPad", (), {"pad_token_id": None, "bos_token_id": 0, "eos_token_id": 0})())


def test_packed_loader_cuts_one_stream_of_documents_into_full_rows(tokenizer):
    texts = ["Mara ran.", "Tolo: Hello, Mara! How are you today?", "Lori smiled at the big red kite."] * 5
    eos = tokenizer.eos_token_id
    stream = [eos] + [t for text in texts for t in tokenizer(text)["input_ids"] + [eos]]
    loader = packed_loader(texts, tokenizer, block_size=8, batch_size=3, shuffle=False)
    rows = torch.cat([batch["input_ids"] for batch in loader])  # (N, 8)
    assert rows.shape == (len(stream) // 8, 8)
    assert rows.flatten().tolist() == stream[:rows.numel()]  # in order, nothing padded, the partial row dropped
    batch = next(iter(loader))
    assert torch.equal(batch["labels"], batch["input_ids"]) and bool(batch["attention_mask"].all())
    shuffled = torch.cat([b["input_ids"] for b in packed_loader(texts, tokenizer, block_size=8, seed=1)])
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, rows.tolist()))  # the same rows, reordered


def test_packed_loader_rejects_too_little_text_and_bad_block_sizes(tokenizer):
    with pytest.raises(ValueError, match="fewer than one row"):
        packed_loader(["Mara ran."], tokenizer, block_size=256)
    with pytest.raises(ValueError, match="block_size"):
        packed_loader(["Mara ran."], tokenizer, block_size=1)
    with pytest.raises(ValueError, match="eos"):
        packed_loader(["a"], type("NoEos", (), {"eos_token_id": None})())


def test_perplexity_weighs_every_token_equally_despite_padding(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tokenizer), n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    texts = ["Mara ran to the park.", "Tolo: Hello!\nMara: Hello, Tolo! I have a red kite.", "Lori smiled."]
    nll, count = 0.0, 0
    for text in texts:  # one unpadded document at a time: the model's mean loss times its targets
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
        with torch.no_grad():
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    padded = perplexity(model, lm_loader(texts, tokenizer, batch_size=3))
    assert padded == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_unigram_perplexity_matches_hand_computation():
    # counts 2, 1, 0 plus one each: p = 3/6, 2/6, 1/6
    assert unigram_perplexity([0, 0, 1], [0, 1], 3) == pytest.approx(math.sqrt(1 / (3 / 6 * 2 / 6)))
    assert unigram_perplexity([], [0, 1, 2], 5) == pytest.approx(5.0)  # no counts: uniform
