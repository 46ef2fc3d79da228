"""check_new_head passes a correct head swap and names each common mistake."""
import pytest
import torch

from ftlab.checks import check_new_head


def new_head(model, num_classes):
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def no_return(model, num_classes):
    model.fc = torch.nn.Linear(512, num_classes)


def wrong_width(model, num_classes):
    model.fc = torch.nn.Linear(256, num_classes)
    return model


def frozen_head(model, num_classes):
    model.fc = torch.nn.Linear(512, num_classes)
    return model.requires_grad_(False)


def fresh_model(model, num_classes):
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


def old_head(model, num_classes):
    return model


def test_check_new_head_passes_a_new_linear_head_on_the_unchanged_backbone(capsys):
    assert check_new_head(new_head) is True
    assert capsys.readouterr().out.startswith("[PASS]")


@pytest.mark.parametrize("fn, message", [
    (no_return, "expected the model back"),
    (wrong_width, "takes 256 features"),
    (frozen_head, "head is frozen"),
    (fresh_model, "backbone's weights changed"),
    (old_head, "52 outputs"),
])
def test_check_new_head_fails_each_mistake_with_its_own_message(fn, message, capsys):
    assert check_new_head(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and message in out and "hint:" in out
