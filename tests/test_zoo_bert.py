import time

import pytest
import torch

from ftlab import zoo
from ftlab.zoo import ModelNotAvailableError, load_bert


def test_minilm_loads_offline_as_a_pretrained_classifier(minilm):
    model, tokenizer = minilm
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert sum(p.numel() for p in model.bert.parameters()) == 22_713_216
    assert model.num_labels == 2
    # pretrained, not random: every encoder weight equals the one shipped in the package's safetensors
    from safetensors.torch import load_file

    shipped = load_file(str(zoo.OFFLINE["bert"]["minilm"]() / "model.safetensors"))
    ours = model.bert.state_dict()
    name = "encoder.layer.0.attention.self.query.weight"
    key = next(k for k in shipped if k.endswith(name))
    assert torch.equal(ours[name], shipped[key])
    # and it understands sentences: "a superb film" sits nearer "a great film" than "the cat sat on a mat"
    enc = tokenizer(["a superb film", "a great film", "the cat sat on a mat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**enc).last_hidden_state  # (3, T, 384)
    mask = enc["attention_mask"][..., None]
    sentence = (hidden * mask).sum(1) / mask.sum(1)  # (3, 384) mean pooling, as all-MiniLM-L6-v2 is trained
    cos = torch.nn.functional.cosine_similarity
    assert cos(sentence[0], sentence[1], dim=0) > cos(sentence[0], sentence[2], dim=0) + 0.2

def test_same_seed_gives_the_same_classification_head():
    a, _ = load_bert(seed=3)
    b, _ = load_bert(seed=3)
    assert torch.equal(a.classifier.weight, b.classifier.weight)


@pytest.mark.parametrize("name", ["bert-base-uncased", "no-such-user/no-such-model"])
def test_hub_name_without_network_fails_fast_and_lists_offline_models(name):
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="Offline choices: 'minilm'"):
        load_bert(name)
    assert time.perf_counter() - start < 10


def test_local_folder_that_is_not_a_model_gives_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ModelNotAvailableError, match="could not load bert model"):
        load_bert(str(tmp_path))


def test_offline_models_are_listed_and_available():
    assert "minilm" in zoo.offline_models()["bert"]
    assert zoo.is_available("bert", "minilm")
