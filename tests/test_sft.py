"""Supervised fine-tuning: formatting, response-only labels and log-probabilities, generation, errors."""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import ftlab
from ftlab.align.common import (
    as_reference,
    check_reference,
    collate,
    encode,
    format_example,
    frozen_copy,
    preference_loader,
    response_logprobs,
    token_logprobs,
)
from ftlab.align.generate import generate, generate_ids
from ftlab.align.sft import mixed_demonstrations, sft_loader, train_sft

EXAMPLES = [
    {"prompt": "Question: what is the plural of fox?\nAnswer:", "answer": "foxes"},
    {"prompt": "Question: how many words: red fox runs\nAnswer:", "answer": "three"},
    {"prompt": "Question: reverse the words: a big blue ball\nAnswer:", "answer": "ball blue big a"},
]


class FixedLogits(nn.Module):
    """A stand-in language model that returns the logits it was given, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits)


def test_plain_template_is_bos_prompt_space_response_eos(tiny_gpt2_chat):
    _, tokenizer = tiny_gpt2_chat
    prompt_text, response_text = format_example(tokenizer, "Q?\nAnswer:", "  foxes ")
    assert prompt_text == "<|endoftext|>Q?\nAnswer:"
    assert response_text == " foxes<|endoftext|>"
    prompt_ids, response_ids = encode(tokenizer, "Q?\nAnswer:", "foxes", max_length=64)
    assert prompt_ids[0] == tokenizer.bos_token_id and response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response_ids) == " foxes<|endoftext|>"


def test_chat_template_of_a_chat_tokenizer_is_used(tiny_gpt2_chat):
    _, tokenizer = tiny_gpt2_chat
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<|pad|>{{ m['role'] }}: {{ m['content'] }}<|endoftext|>"
                               "{% endfor %}{% if add_generation_prompt %}<|pad|>assistant:{% endif %}")
    prompt_text, response_text = format_example(tokenizer, "hi", "hello")
    assert prompt_text == "<|pad|>user: hi<|endoftext|><|pad|>assistant:"
    assert response_text == " hello<|endoftext|>"


def test_labels_cover_response_tokens_only(tiny_gpt2_chat):
    _, tokenizer = tiny_gpt2_chat
    batch = next(iter(sft_loader(EXAMPLES, tokenizer, max_length=64, batch_size=3)))
    for row, example in enumerate(EXAMPLES):
        prompt_ids, response_ids = encode(tokenizer, example["prompt"], example["answer"], max_length=64)
        n = len(prompt_ids) + len(response_ids)
        assert batch["input_ids"][row, :n].tolist() == prompt_ids + response_ids
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labelled == response_ids
        assert tokenizer.decode(labelled) == " " + example["answer"] + "<|endoftext|>"
        assert (batch["labels"][row, :len(prompt_ids)] == -100).all()


def test_eos_used_as_pad_keeps_the_final_eos_labelled(tiny_gpt2_chat):
    # the hub GPT-2 pads with its eos token: labels must still include the eos that ends the response
    batch = collate([([5, 6], [7, 0]), ([5], [0])], pad_token_id=0)
    assert batch["labels"].tolist() == [[-100, -100, 7, 0], [-100, 0, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_response_logprobs_equal_a_per_token_loop(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    model = model.double()
    batch = next(iter(sft_loader(EXAMPLES, tokenizer, max_length=64, batch_size=3)))
    got = response_logprobs(model, batch)
    for row, example in enumerate(EXAMPLES):  # one unpadded example at a time, one token at a time
        prompt_ids, response_ids = encode(tokenizer, example["prompt"], example["answer"], max_length=64)
        ids = prompt_ids + response_ids
        expected = 0.0
        for k in range(len(prompt_ids), len(ids)):
            logits = model(input_ids=torch.tensor([ids[:k]])).logits[0, -1]
            expected += torch.log_softmax(logits, -1)[ids[k]].item()
        assert got[row].item() == pytest.approx(expected, abs=1e-9)


def test_prompt_and_padding_positions_never_contribute():
    torch.manual_seed(0)
    labels = torch.tensor([[-100, -100, -100, 4, 2, -100], [-100, -100, 3, 1, 0, 2]])
    logits = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    batch = {"input_ids": torch.zeros(2, 6, dtype=torch.long), "attention_mask": torch.ones(2, 6), "labels": labels}
    total = response_logprobs(FixedLogits(logits), batch)
    # logits at t predict labels[t + 1]: row 0 uses positions 2 and 3, row 1 positions 1 to 4
    expected = [torch.log_softmax(logits[0, 2], -1)[4] + torch.log_softmax(logits[0, 3], -1)[2],
                sum(torch.log_softmax(logits[1, t], -1)[labels[1, t + 1]] for t in range(1, 5))]
    assert torch.allclose(total, torch.stack(expected), atol=1e-12, rtol=0)
    total.sum().backward()
    used = torch.zeros(2, 6, dtype=torch.bool)
    used[0, 2:4] = True
    used[1, 1:5] = True
    assert (logits.grad[~used] == 0).all()  # no gradient reaches a prompt or padding position
    assert (logits.grad[used].abs().sum(-1) > 0).all()
    scrambled = logits.detach().clone()
    scrambled[~used] = 100 * torch.randn_like(scrambled[~used])
    assert torch.equal(response_logprobs(FixedLogits(scrambled), batch), total.detach())


def test_token_logprobs_mask_marks_response_positions():
    logits = torch.zeros(1, 4, 3)
    logp, mask = token_logprobs(logits, torch.tensor([[-100, 2, 1, -100]]))
    assert mask.tolist() == [[True, True, False]]
    assert torch.allclose(logp, torch.tensor([[-1.0986123, -1.0986123, 0.0]]))


def test_sft_loss_is_the_mean_over_response_tokens(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    model = model.double()
    batch = next(iter(sft_loader(EXAMPLES, tokenizer, max_length=64, batch_size=3)))
    n_response = (batch["labels"] != -100).sum().item()
    loss = model(**batch).loss  # what ftlab.train.fit minimises by default
    # transformers computes its loss in float32 even for a float64 model, hence the float32 tolerance
    assert loss.item() == pytest.approx(-response_logprobs(model, batch).sum().item() / n_response, rel=1e-6)


def test_greedy_generation_matches_transformers_generate(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    prompts = [e["prompt"] for e in EXAMPLES]
    ours = generate_ids(model, tokenizer, prompts, max_new_tokens=6)
    for prompt, response in zip(prompts, ours):
        ids = torch.tensor([encode(tokenizer, prompt, max_length=64)[0]])
        theirs = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        assert response == theirs[0, ids.shape[1]:].tolist()
    assert all(len(r) == 6 for r in ours)


class Uncached(nn.Module):
    """A plain module around a transformers model, as ftlab's prompt and prefix wrappers are."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_cached_generation_equals_running_the_whole_sequence(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    prompts = [e["prompt"] for e in EXAMPLES]
    cached = generate_ids(model, tokenizer, prompts, max_new_tokens=6, do_sample=True, seed=3)
    uncached = Uncached(model)  # not a transformers model, so generate_ids runs the whole sequence each step
    assert generate_ids(uncached, tokenizer, prompts, max_new_tokens=6, do_sample=True, seed=3) == cached


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    prompts = [e["prompt"] for e in EXAMPLES]
    a = generate_ids(model, tokenizer, prompts, max_new_tokens=5, do_sample=True, seed=1)
    assert a == generate_ids(model, tokenizer, prompts, max_new_tokens=5, do_sample=True, seed=1)
    assert a != generate_ids(model, tokenizer, prompts, max_new_tokens=5, do_sample=True, seed=2)
    assert generate_ids(model, tokenizer, prompts, max_new_tokens=5, do_sample=True, top_k=1) == \
        generate_ids(model, tokenizer, prompts, max_new_tokens=5)


class AlwaysEos(nn.Module):
    """A stand-in language model whose next token is always eos."""

    def __init__(self, vocab_size, eos_token_id):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=64)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.vocab_size, self.eos_token_id = vocab_size, eos_token_id

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.eos_token_id] = 100.0
        return SimpleNamespace(logits=logits)


def test_generation_stops_after_eos(tiny_gpt2_chat):
    _, tokenizer = tiny_gpt2_chat
    model = AlwaysEos(len(tokenizer), tokenizer.eos_token_id)
    prompts = [e["prompt"] for e in EXAMPLES]
    assert generate_ids(model, tokenizer, prompts, max_new_tokens=8) == [[tokenizer.eos_token_id]] * 3
    assert generate(model, tokenizer, prompts, max_new_tokens=8, do_sample=True) == [""] * 3


@pytest.mark.parametrize("method, options", [("lora", {"r": 4}), ("prompt", {"num_virtual_tokens": 4})])
def test_sft_trains_through_ftlab_methods(tiny_gpt2_chat, method, options):
    model, tokenizer = tiny_gpt2_chat
    base = copy.deepcopy(model.state_dict())
    model = ftlab.apply(model, method, **options)
    history = train_sft(model, tokenizer, EXAMPLES, num_steps=30, lr=3e-2, batch_size=3, progress=False,
                        device="cpu")
    assert history["loss"][-1] < history["loss"][0] - 0.01  # a random model learns slowly, but it does learn
    assert len(generate_ids(model, tokenizer, [EXAMPLES[0]["prompt"]], max_new_tokens=3)[0]) >= 1
    state = (model.base_model if method == "prompt" else model).state_dict()
    state = {k.replace("base_layer.", ""): v for k, v in state.items()}
    assert all(torch.equal(state[k], v) for k, v in base.items())  # the base weights did not move


def test_empty_prompt_is_an_error(tiny_gpt2_chat):
    _, tokenizer = tiny_gpt2_chat
    with pytest.raises(ValueError, match="non-empty"):
        encode(tokenizer, "   ", "foxes", max_length=64)
    with pytest.raises(ValueError, match="non-empty"):
        sft_loader([{"prompt": "", "answer": "x"}], tokenizer, max_length=64)


def test_over_long_example_is_an_error(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    long_prompt = "Question: repeat the words: " + " ".join(["red fox"] * 40) + "\nAnswer:"
    with pytest.raises(ValueError, match="max_length=64"):
        sft_loader([{"prompt": long_prompt, "answer": "x"}], tokenizer, max_length=64)
    ok = "Question: " + " ".join(["fox"] * 25) + "\nAnswer:"  # fits, but not with 60 new tokens
    assert len(encode(tokenizer, ok, max_length=64)[0]) < 64
    with pytest.raises(ValueError, match="max_new_tokens=60"):
        generate_ids(model, tokenizer, [ok], max_new_tokens=60)


def test_tokenizer_without_pad_token_is_an_error(tiny_gpt2_chat):
    _, tokenizer = tiny_gpt2_chat
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        sft_loader(EXAMPLES, tokenizer, max_length=64)


def test_identical_chosen_and_rejected_is_an_error(tiny_gpt2_chat):
    _, tokenizer = tiny_gpt2_chat
    pair = {"prompt": EXAMPLES[0]["prompt"], "chosen": "foxes", "rejected": "foxes "}
    with pytest.raises(ValueError, match="identical chosen and rejected"):
        preference_loader([pair], tokenizer, max_length=64)


def test_reference_sharing_trainable_weights_is_an_error(tiny_gpt2_chat, untouched):
    model, _ = tiny_gpt2_chat
    check = untouched(model)
    with pytest.raises(ValueError, match="shares trainable parameters"):
        check_reference(model, model)
    shallow = copy.copy(model)  # a new module object whose parameters are the policy's own tensors
    with pytest.raises(ValueError, match="shares trainable parameters"):
        check_reference(model, shallow)
    check()
    check_reference(model, frozen_copy(model))  # a real copy is fine
    reference = frozen_copy(model)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training


def test_adapter_disabled_reference_needs_adapters(tiny_gpt2_chat):
    model, _ = tiny_gpt2_chat
    with pytest.raises(ValueError, match="has no adapters"), as_reference(model, None):
        pass


def test_mixed_demonstrations_answer_with_chosen_or_rejected_at_random():
    pairs = [{"kind": "polite", "prompt": f"p{i}", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(200)]
    demos = mixed_demonstrations(pairs + [{"kind": "correct", "prompt": "q", "chosen": "right", "rejected": "wrong"}],
                                 seed=0)
    assert [d["prompt"] for d in demos] == [p["prompt"] for p in pairs]  # instruction pairs left out
    good = sum(d["answer"].startswith("good") for d in demos)
    assert all(d["answer"] in (p["chosen"], p["rejected"]) for d, p in zip(demos, pairs))
    assert 70 < good < 130 and demos == mixed_demonstrations(pairs, seed=0)


def test_sft_experiment_runs_on_the_shipped_model():
    from ftlab.align.sft import sft_experiment

    result = sft_experiment("lora", num_steps=2, batch_size=4, num_test=8, progress=False, with_preferences=True)
    assert len(result["history"]["loss"]) == 2
    assert set(result["after"]) >= {"copy", "plural", "all"} and 0 <= result["after"]["all"] <= 1


def test_max_positions_leaves_room_for_virtual_tokens(tiny_gpt2_chat):
    from ftlab.align.common import max_positions

    model, _ = tiny_gpt2_chat
    full = model.config.max_position_embeddings
    assert max_positions(model) == full
    wrapped = ftlab.apply(model, "prompt", num_virtual_tokens=5)
    assert max_positions(wrapped) == full - 5
