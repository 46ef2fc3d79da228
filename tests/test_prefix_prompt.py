"""Prefix tuning and prompt tuning (ftlab/methods/prefix.py, prompt.py) against peft, on GPT-2 and BERT.

Parity tests build ftlab's and peft's versions of the same base model, copy peft's learned
values (random, non-zero) into ours and compare outputs in float64.
"""
import copy

import pytest
import torch
import torchvision
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

import ftlab
from ftlab.measure import count_parameters
from ftlab.methods import prefix, prompt
from ftlab.train import evaluate, fit

TOL = 1e-10
P = 5


def gpt2_batch():
    torch.manual_seed(1)
    input_ids = torch.randint(0, 500, (3, 9))
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[2, 6:] = 0  # a right-padded row
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def bert_batch(tokenizer):
    batch = dict(tokenizer(["the film was great", "a truly awful and boring meal, honestly"], padding=True,
                           return_tensors="pt"))
    return {**batch, "labels": torch.tensor([1, 0])}  # input_ids, token_type_ids, attention_mask, labels


def pair(method, kind, minilm, tiny_gpt2, **options):
    """(ours, peft's, batch): float64, eval mode, ours holding peft's learned values."""
    if kind == "gpt2":
        base, task, batch, extra = tiny_gpt2, "CAUSAL_LM", gpt2_batch(), {}
    else:
        base, task, batch, extra = minilm[0], "SEQ_CLS", bert_batch(minilm[1]), {"modules_to_save": ["classifier"]}
    ours = ftlab.apply(copy.deepcopy(base), method, num_virtual_tokens=P, **options, **extra).double().eval()
    config = (PrefixTuningConfig if method == "prefix" else PromptTuningConfig)(
        task_type=task, num_virtual_tokens=P, **options)
    ref = get_peft_model(copy.deepcopy(base), config).double().eval()
    encoder = ref.prompt_encoder["default"]
    with torch.no_grad():
        ours.embedding.weight.copy_(encoder.embedding.weight)
        if options.get("prefix_projection"):
            ours.transform.load_state_dict(encoder.transform.state_dict())
    return ours, ref, batch


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("prefix_projection", [False, True])
def test_prefix_tuning_matches_peft(kind, prefix_projection, minilm, tiny_gpt2):
    ours, ref, batch = pair("prefix", kind, minilm, tiny_gpt2, prefix_projection=prefix_projection)
    with torch.no_grad():
        a, b = ours(**batch), ref(**batch)
    assert (a.logits - b.logits).abs().max() < TOL
    assert abs(a.loss - b.loss) < TOL
    assert count_parameters(ours)["trainable"] == ref.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_prompt_tuning_matches_peft(kind, minilm, tiny_gpt2):
    ours, ref, batch = pair("prompt", kind, minilm, tiny_gpt2)
    with torch.no_grad():
        a, b = ours(**batch), ref(**batch)
    # peft also returns the logits of the P virtual positions; ours line up with input_ids
    expected = b.logits[:, P:] if kind == "gpt2" else b.logits
    assert a.logits.shape == expected.shape
    assert (a.logits - expected).abs().max() < TOL
    assert abs(a.loss - b.loss) < TOL  # causal LM labels padded with -100 at the virtual positions, as peft
    assert count_parameters(ours)["trainable"] == ref.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("method, options, expected", [
    ("prefix", {}, P * 2 * 2 * 64),
    ("prefix", {"prefix_projection": True, "encoder_hidden_size": 32}, P * 64 + (64 * 32 + 32) + (32 * 256 + 256)),
    ("prompt", {}, P * 64),
])
def test_trainable_counts_follow_the_formulas_and_peft(method, options, expected, tiny_gpt2):
    ours = ftlab.apply(copy.deepcopy(tiny_gpt2), method, num_virtual_tokens=P, **options)
    config = (PrefixTuningConfig if method == "prefix" else PromptTuningConfig)(
        task_type="CAUSAL_LM", num_virtual_tokens=P, **options)
    ref = get_peft_model(copy.deepcopy(tiny_gpt2), config)
    assert count_parameters(ours)["trainable"] == ref.get_nb_trainable_parameters()[0] == expected


def test_text_init_equals_peft_and_accepts_a_tokenizer_object(minilm):
    model, tokenizer = minilm
    text = "is this review positive or negative?"
    path = tokenizer.name_or_path
    ref = get_peft_model(copy.deepcopy(model), PromptTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=12, prompt_tuning_init="TEXT", prompt_tuning_init_text=text,
        tokenizer_name_or_path=path))
    for tok in (path, tokenizer):
        ours = ftlab.apply(copy.deepcopy(model), "prompt", num_virtual_tokens=12, prompt_tuning_init="TEXT",
                           prompt_tuning_init_text=text, tokenizer_name_or_path=tok)
        assert torch.equal(ours.embedding.weight, ref.prompt_encoder["default"].embedding.weight)
    # the text's own tokens (with [CLS] and [SEP], repeated to 12) are nearest to the initial prompt
    ids = tokenizer(text)["input_ids"]
    expected = tokenizer.convert_ids_to_tokens((ids * 2)[:12])
    assert [row[0] for row in prompt.nearest_tokens(ours, tokenizer, k=1)] == expected


def test_sample_vocab_init_copies_vocabulary_embeddings(tiny_gpt2):
    torch.manual_seed(0)
    ours = ftlab.apply(tiny_gpt2, "prompt", num_virtual_tokens=8, prompt_tuning_init="SAMPLE_VOCAB")
    vocab = tiny_gpt2.get_input_embeddings().weight
    for row in ours.embedding.weight:
        assert (vocab == row).all(dim=1).any()


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_gpt2_stays_causal_and_evaluates_with_virtual_tokens(method, tiny_gpt2):
    model = ftlab.apply(tiny_gpt2, method, num_virtual_tokens=P).eval()
    with torch.no_grad():
        model.embedding.weight.normal_()
        input_ids = torch.randint(0, 500, (2, 10))
        full = model(input_ids=input_ids).logits
        short = model(input_ids=input_ids[:, :6]).logits
    assert full.shape == (2, 10, 500)
    assert (full[:, :6] - short).abs().max() < 1e-5  # a token never sees later tokens
    batch = {"input_ids": input_ids, "labels": input_ids}
    assert 0.0 <= evaluate(model, [batch])["accuracy"] <= 1.0


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_only_virtual_tokens_and_head_train(method, minilm):
    model, tokenizer = minilm
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    ours = ftlab.apply(model, method, num_virtual_tokens=P, modules_to_save=["classifier"])
    start = ours.embedding.weight.detach().clone()
    trainable = [name for name, p in ours.named_parameters() if p.requires_grad]
    assert "embedding.weight" in trainable and all(
        name.startswith("embedding.") or ".modules_to_save.default." in name for name in trainable)
    fit(ours, [bert_batch(tokenizer)], num_steps=2, lr=1e-2, device="cpu", progress=False)
    state = ours.base_model.state_dict()
    assert all(torch.equal(state[k.replace("classifier.", "classifier.base_layer.")], v) for k, v in frozen.items())
    assert not torch.equal(ours.embedding.weight, start)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("num_virtual_tokens, error, message", [
    (0, ValueError, "num_virtual_tokens must be an int from 1 to 63"),
    (-3, ValueError, "num_virtual_tokens must be an int from 1 to 63"),
    (64, ValueError, "num_virtual_tokens must be an int from 1 to 63"),
    (100, ValueError, "num_virtual_tokens must be an int from 1 to 63"),
    (2.5, TypeError, "num_virtual_tokens must be a whole number"),
    (True, TypeError, "num_virtual_tokens must be a whole number"),
])
def test_bad_virtual_token_count_raises_and_leaves_the_model_untouched(method, num_virtual_tokens, error, message,
                                                                       tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(error, match=message):
        ftlab.apply(tiny_gpt2, method, num_virtual_tokens=num_virtual_tokens)
    check()


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_too_long_input_raises_a_clear_error(method, tiny_gpt2):
    model = ftlab.apply(tiny_gpt2, method, num_virtual_tokens=10)
    model(input_ids=torch.randint(0, 500, (1, 54)))
    with pytest.raises(ValueError, match="use at most 54 real tokens"):
        model(input_ids=torch.randint(0, 500, (1, 55)))


@pytest.mark.parametrize("call, error, message", [
    (lambda m: prefix.apply(m, 4, modules_to_save=["lm_haed"]), ValueError, "lm_head"),
    (lambda m: prefix.apply(m, 4, prefix_projection=True, encoder_hidden_size=0), ValueError, "encoder_hidden_size"),
    (lambda m: prompt.apply(m, 4, prompt_tuning_init="VOCAB"), ValueError, "prompt_tuning_init must be one of"),
    (lambda m: prompt.apply(m, 4, prompt_tuning_init="TEXT"), ValueError, "prompt_tuning_init_text"),
    (lambda m: prompt.apply(m, 4, modules_to_save=["lm_haed"]), ValueError, "lm_head"),
])
def test_bad_options_raise_and_leave_the_model_untouched(call, error, message, tiny_gpt2, untouched):
    check = untouched(tiny_gpt2)
    with pytest.raises(error, match=message):
        call(tiny_gpt2)
    check()


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_models_without_attention_layers_are_rejected(method, untouched):
    model = torchvision.models.resnet18(num_classes=10)
    check = untouched(model)
    with pytest.raises(ValueError, match="supported families: bert, gpt2"):
        ftlab.apply(model, method, num_virtual_tokens=4)
    check()
