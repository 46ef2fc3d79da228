import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from ftlab import zoo
from ftlab.tasks.images import GLYPH_CLASSES, image_loader, make_glyphs
from ftlab.train import evaluate
from ftlab.zoo import ModelNotAvailableError, load_resnet

CHECKPOINT = zoo.DATA_DIR / "resnet18_glyphs.safetensors"
RECORD = json.loads((zoo.DATA_DIR / "resnet18_glyphs.json").read_text())


def test_glyph_checkpoint_gives_its_recorded_validation_accuracy():
    model = load_resnet(num_classes=None)
    assert model.fc.out_features == len(GLYPH_CLASSES) == 52
    validation = make_glyphs(seed=RECORD["data"]["seed"], splits=("validation",))["validation"]
    assert len(validation) == RECORD["validation"]["n"]
    result = evaluate(model, image_loader(validation, batch_size=250))
    assert round(result["accuracy"] * result["n"]) == RECORD["validation"]["correct"]
    assert result["accuracy"] > 0.8  # it really learned the letters (chance is 1/52)


def test_glyph_checkpoint_is_small_float16_safetensors_matching_its_record():
    import hashlib

    assert CHECKPOINT.stat().st_size < 25e6
    assert hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest() == RECORD["sha256"]
    state = load_file(str(CHECKPOINT))
    assert state["conv1.weight"].dtype == torch.float16 and state["fc.weight"].shape == (52, 512)


def test_default_is_the_pretrained_backbone_with_a_new_seeded_head():
    model = load_resnet()
    stored = load_file(str(CHECKPOINT))
    assert torch.equal(model.conv1.weight, stored["conv1.weight"].float())
    assert model.fc.out_features == 10 and model.conv1.weight.dtype == torch.float32
    assert not model.training
    assert torch.equal(load_resnet(seed=4).fc.weight, load_resnet(seed=4).fc.weight)
    assert not torch.equal(load_resnet(seed=4).fc.weight, load_resnet(seed=5).fc.weight)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)


def test_scratch_is_the_same_architecture_with_different_weights():
    scratch, pretrained = load_resnet("scratch"), load_resnet()
    shapes = [(n, p.shape) for n, p in scratch.named_parameters()]
    assert shapes == [(n, p.shape) for n, p in pretrained.named_parameters()]
    assert not torch.allclose(scratch.conv1.weight, pretrained.conv1.weight)
    assert torch.equal(load_resnet("scratch", seed=1).conv1.weight, load_resnet("scratch", seed=1).conv1.weight)


def test_a_safetensors_path_loads_like_the_named_checkpoint():
    by_path = load_resnet(str(CHECKPOINT), num_classes=None)
    by_name = load_resnet(num_classes=None)
    assert all(torch.equal(a, b) for a, b in zip(by_path.state_dict().values(), by_name.state_dict().values()))


def test_unknown_name_lists_the_offline_choices():
    with pytest.raises(ModelNotAvailableError, match="unknown resnet model 'resnet152'.*Offline choices: 'glyphs'"):
        load_resnet("resnet152")


def test_missing_file_lists_the_offline_choices(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist.*Offline choices: 'glyphs'.*'scratch'"):
        load_resnet(str(tmp_path / "nothing.safetensors"))


def test_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00garbage that is not a header")
    with pytest.raises(ModelNotAvailableError, match="not a readable safetensors file.*Offline choices"):
        load_resnet(str(path))


def test_safetensors_file_of_another_model_gives_a_clear_error(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file({"fc.weight": torch.zeros(3, 8), "fc.bias": torch.zeros(3)}, str(path))
    with pytest.raises(ModelNotAvailableError, match="does not fit torchvision's ResNet-18"):
        load_resnet(str(path))
    save_file({"weight": torch.zeros(3, 8)}, str(path))
    with pytest.raises(ModelNotAvailableError, match="no 'fc.weight'"):
        load_resnet(str(path))


def test_imagenet_without_cache_or_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="'imagenet'.*download.pytorch.org cannot be reached.*Offline"):
        load_resnet("imagenet")
    assert time.perf_counter() - start < 5


def test_imagenet_is_read_from_the_torch_hub_cache_first(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    cached = tmp_path / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    cached.parent.mkdir()
    torch.manual_seed(7)
    reference = resnet18()
    torch.save(reference.state_dict(), cached)
    model = load_resnet("imagenet", num_classes=None)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotAvailableError, match="could not load resnet model 'imagenet'"):
        load_resnet("imagenet")


@pytest.mark.parametrize("bad, error, message", [(0, ValueError, "at least 2, got 0"), (1, ValueError, "at least 2"),
                                                  (-3, ValueError, "at least 2"), (2.0, TypeError, "whole number"),
                                                  ("10", TypeError, "whole number"), (True, TypeError, "whole number")])
def test_bad_num_classes_raises_a_clear_error(bad, error, message):
    with pytest.raises(error, match=f"num_classes must be .*{message}"):
        load_resnet(num_classes=bad)


def test_scratch_needs_num_classes():
    with pytest.raises(ValueError, match="'scratch' has no pretrained head"):
        load_resnet("scratch", num_classes=None)


def test_glyphs_is_listed_and_available_offline():
    assert "glyphs" in zoo.offline_models()["resnet"]
    assert zoo.is_available("resnet", "glyphs")
