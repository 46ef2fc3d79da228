import os
import subprocess
import sys

import torch

from ftlab import config


def test_fast_mode_is_on_in_the_test_session_and_pick_follows_it():
    assert os.environ["FTLAB_FAST"] == "1"
    assert config.FAST is True
    assert config.pick(300, 20) == 20
    assert config.mode() == "FAST"


def test_classroom_mode_is_the_default_without_the_variable():
    env = {k: v for k, v in os.environ.items() if k != "FTLAB_FAST"}
    out = subprocess.run([sys.executable, "-c", "from ftlab import config; print(config.mode(), config.pick(300, 20))"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["classroom", "300"]


def test_seed_everything_makes_torch_repeatable():
    config.seed_everything(7)
    a = torch.randn(5)
    config.seed_everything(7)
    assert torch.equal(a, torch.randn(5))


def test_device_is_cuda_only_when_available():
    assert config.device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_info_command_prints_versions_mode_and_offline_models():
    out = subprocess.run([sys.executable, "-m", "ftlab", "info"], capture_output=True, text=True, check=True).stdout
    assert "torch" in out and "mode:   FAST" in out and "minilm" in out and "available" in out
