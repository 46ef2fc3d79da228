"""check_new_head passes a correct head swap on models of any width and names each common mistake."""
import pytest
import torch

from ftlab.checks import check_new_head


@pytest.fixture(autouse=True)
def fresh_attempts():
    check_new_head.exercise.attempts = 0


def new_head(model, num_classes):
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def no_return(model, num_classes):
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)


def width_of_resnet18(model, num_classes):
    model.fc = torch.nn.Linear(512, num_classes)
    return model


def fresh_model(model, num_classes):
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


def old_rows(model, num_classes):
    old = model.fc
    model.fc = torch.nn.Linear(old.in_features, num_classes)
    with torch.no_grad():
        model.fc.weight.copy_(old.weight[:num_classes])
    return model


def test_check_new_head_passes_a_new_linear_head_on_every_backbone(capsys):
    assert check_new_head(new_head) is True
    assert capsys.readouterr().out.startswith("[PASS]")


@pytest.mark.parametrize("fn, message", [
    (no_return, "expected the model back"),
    (width_of_resnet18, "takes 512 features, but this backbone gives 64"),
    (fresh_model, "backbone's weights changed"),
    (old_rows, "reuses rows of the old head"),
    (lambda model, num_classes: model, "52 outputs"),
])
def test_check_new_head_fails_each_mistake_with_its_own_message(fn, message, capsys):
    assert check_new_head(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("[FAIL]") and message in out
