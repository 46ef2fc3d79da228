"""ftlab against peft's own test matrix: the LoRA, LoHa, LoKr and IA3 rows of peft's ``TEST_CASES``.

peft tests its tuners on small custom models (huggingface/peft, ``tests/test_custom_models.py``,
checked against peft 0.21.2): an MLP, nn.Conv1d / Conv2d / Conv3d models, grouped convolutions,
an nn.Embedding + GPT-2 Conv1D model and an nn.MultiheadAttention model. The 111 rows whose config is
LoraConfig, LoHaConfig, LoKrConfig or IA3Config are rebuilt here (models and options; the models
are written anew, in float64). For each row:

1. ``ftlab.apply`` with the same options (peft's ``target_modules`` is ftlab's ``targets``);
2. the adapter is perturbed (all-zero factors would hide errors), exported with ``export_peft``
   and loaded with ``PeftModel.from_pretrained``: both give the same output to 1e-10;
3. both merge (peft refuses to merge LoRA on a grouped convolution, ftlab too), unmerge, and
   ``import_peft`` reads the file back into a fresh model: the same output again.

A row is *equal* or *refused*. A refusal must be ftlab's own message, naming the option or layer and
what ftlab offers instead, from ``apply`` and (on peft's own file of that row) ``import_peft`` alike;
``REFUSED`` lists the refused rows with why, so a row that stops being equal fails its test, as
does any row where ftlab and peft differ.
"""
import copy

import pytest
import torch
from peft import (
    BdLoraConfig,
    IA3Config,
    KasaConfig,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    MontecloraConfig,
    PeftModel,
    VeloraConfig,
    get_peft_model,
)
from torch import nn
from transformers.pytorch_utils import Conv1D

import ftlab
from ftlab.methods import method_spec
from ftlab.methods.base import tuned_layers

TOL = 1e-10
MERGE_TOL = 1e-8


# ---------------------------------------------------------------- peft's test models, rebuilt

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.relu, self.drop, self.lin1 = nn.Linear(10, 20), nn.ReLU(), nn.Dropout(0.5), nn.Linear(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(x)))))


class EmbConv1D(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.conv1d, self.relu = nn.Embedding(100, 5), Conv1D(1, 5), nn.ReLU()
        self.flat, self.lin0, self.sm = nn.Flatten(), nn.Linear(10, 2), nn.LogSoftmax(dim=-1)

    def forward(self, ids):
        return self.sm(self.lin0(self.flat(self.relu(self.conv1d(self.emb(ids))))))  # ids (9, 10) -> (9, 2)


class ConvNet(nn.Module):
    """A convolution called ``conv_name``, ReLU, flatten and a linear head; ``shape`` turns the (9, 10) input into
    the convolution's input (peft's Conv2dGroups model has a linear layer ``lin0`` in front, its head is ``lin1``)."""

    def __init__(self, conv_name: str, conv: nn.Module, head_inputs: int, shape, front: nn.Module | None = None):
        super().__init__()
        if front is not None:
            self.lin0 = front
        self.conv_name, self.shape = conv_name, shape
        setattr(self, conv_name, conv)
        self.relu, self.flat = nn.ReLU(), nn.Flatten()
        self.head_name = "lin0" if front is None else "lin1"
        setattr(self, self.head_name, nn.Linear(head_inputs, 2))
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        conv, head = getattr(self, self.conv_name), getattr(self, self.head_name)
        return self.sm(head(self.flat(self.relu(conv(self.shape(self, x))))))


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha, self.lin0, self.sm = nn.MultiheadAttention(10, 2), nn.Linear(10, 2), nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin0(self.mha(x, x, x)[0]))  # x (9, 10): 9 positions of width 10


def build(model_id: str) -> nn.Module:
    """peft's test model ``model_id``, seeded, in float64 and eval mode."""
    torch.manual_seed(0)
    to_channels = {  # (9, 10) -> the conv's input, as peft's models reshape it
        "Conv1d": lambda m, x: x.reshape(-1, 1, 10),
        "Conv1dBigger": lambda m, x: torch.cat([x.reshape(-1, 1, 10)] * 64, dim=1),
        "Conv1dGroups": lambda m, x: torch.cat([x.reshape(-1, 1, 10)] * 8, dim=1),
        "Conv2d": lambda m, x: x.reshape(-1, 5, 3, 3),
        "Conv2d1x1": lambda m, x: x.reshape(-1, 1, 3, 3),
        "Conv2dGroups": lambda m, x: m.lin0(x.flatten()).reshape(2, 16, 3, 3),
        "Conv2dGroups2": lambda m, x: torch.arange(9 * 16 * 20 * 20, dtype=x.dtype).view(9, 16, 20, 20) / 1e4,
        "Conv3d": lambda m, x: torch.stack([x] * 3, dim=-1).reshape(-1, 5, 3, 3, 3),
    }
    models = {
        "MLP": MLP, "EmbConv1D": EmbConv1D, "MHA": MHA,
        "Conv1d": lambda: ConvNet("conv1d", nn.Conv1d(1, 1, 2), 9, to_channels["Conv1d"]),
        "Conv1dBigger": lambda: ConvNet("conv1d", nn.Conv1d(64, 16, 2), 144, to_channels["Conv1dBigger"]),
        "Conv1dGroups": lambda: ConvNet("conv1d", nn.Conv1d(8, 8, 3, groups=2), 64, to_channels["Conv1dGroups"]),
        "Conv2d": lambda: ConvNet("conv2d", nn.Conv2d(5, 10, 3), 10, to_channels["Conv2d"]),
        "Conv2d1x1": lambda: ConvNet("conv2d", nn.Conv2d(1, 10, 1), 90, to_channels["Conv2d1x1"]),
        "Conv2dGroups": lambda: ConvNet("conv2d", nn.Conv2d(16, 16, 3, groups=8), 16, to_channels["Conv2dGroups"],
                                        front=nn.Linear(90, 288)),
        "Conv2dGroups2": lambda: ConvNet("conv2d", nn.Conv2d(16, 32, 3, padding=1, groups=2), 12800,
                                         to_channels["Conv2dGroups2"]),
        "Conv3d": lambda: ConvNet("conv3d", nn.Conv3d(5, 10, 3), 10, to_channels["Conv3d"]),
    }
    if model_id not in models:
        pytest.skip(f"peft's {model_id} model (nn.Parameter targets) is not rebuilt: ftlab refuses target_parameters")
    return models[model_id]().double().eval()


def model_input(model_id: str) -> torch.Tensor:
    torch.manual_seed(1)
    if model_id == "EmbConv1D":
        return torch.randint(0, 100, (9, 10))
    return torch.randn(9, 10, dtype=torch.float64)


# ---------------------------------------------------------------- peft's rows (name, model, config, options)

def rows(config, model_id, *cases):
    return [(name, model_id, config, options) for name, options in cases]


MLP_BASICS = [("1", {"target_modules": "lin0"}), ("2", {"target_modules": ["lin0"]}),
              ("3", {"target_modules": ["lin1"]}), ("4", {"target_modules": ["lin0", "lin1"]}),
              ("5", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]})]

TEST_CASES = [
    *rows(LoraConfig, "MLP", *[(f"Vanilla MLP {n} LoRA", o) for n, o in MLP_BASICS],
          ("Vanilla MLP 6 LoRA", {"target_modules": ["lin0"], "lora_alpha": 4, "lora_dropout": 0.1}),
          ("Vanilla MLP 7 LoRA with DoRA", {"target_modules": ["lin0"], "use_dora": True}),
          ("Vanilla MLP 8 LoRA with DoRA", {"target_modules": ["lin0", "lin1"], "use_dora": True}),
          ("Vanilla MLP 1 LoRA with KaSA", {"target_modules": ["lin0"], "kasa_config": KasaConfig(), "r": 4}),
          ("Vanilla MLP 1 LoRA with MiCA", {"target_modules": ["lin0"], "init_lora_weights": "mica", "r": 4}),
          ("Vanilla MLP 9 LoRA with DoRA", {"target_modules": "lin1", "use_dora": True, "lora_alpha": 32}),
          ("Vanilla MLP 10 LoRA with VeLoRA random",
           {"target_modules": ["lin0"], "velora_config": VeloraConfig(num_groups=2, init_type="random")}),
          ("Vanilla MLP 11 LoRA with VeLoRA batch_average",
           {"target_modules": ["lin0", "lin1"],
            "velora_config": VeloraConfig(num_groups=2, init_type="batch_average")}),
          ("Vanilla MLP 12 LoRA with VeLoRA batch_average_once",
           {"target_modules": ["lin0"], "velora_config": VeloraConfig(num_groups=2, init_type="batch_average_once")})),
    *rows(LoraConfig, "EmbConv1D",
          ("Embedding + transformers Conv1D 1 LoRA", {"target_modules": ["conv1d"]}),
          ("Embedding + transformers Conv1D 2 LoRA", {"target_modules": ["emb"]}),
          ("Embedding + transformers Conv1D 3 LoRA", {"target_modules": ["emb", "conv1d"]}),
          ("Embedding + transformers Conv1D 1 DoRA", {"target_modules": ["conv1d"], "use_dora": True}),
          ("Embedding + transformers Conv1D 2 DoRA", {"target_modules": ["emb"], "use_dora": True}),
          ("Embedding + transformers Conv1D 3 DoRA", {"target_modules": ["emb", "conv1d"], "use_dora": True}),
          ("Embedding + transformers Conv1D 1 LoRA trainable_tokens",
           {"target_modules": ["conv1d"], "trainable_token_indices": {"emb": [0, 10]}})),
    *rows(LoraConfig, "Conv1d", ("Conv1d LoRA", {"target_modules": ["conv1d"]}),
          ("Conv1d LoRA with DoRA", {"target_modules": ["conv1d"], "use_dora": True})),
    *rows(LoraConfig, "Conv2d", ("Conv2d 1 LoRA", {"target_modules": ["conv2d"]}),
          ("Conv2d 2 LoRA", {"target_modules": ["conv2d", "lin0"]}),
          ("Conv2d 1 LoRA with DoRA", {"target_modules": ["conv2d"], "use_dora": True}),
          ("Conv2d 2 LoRA with DoRA", {"target_modules": ["conv2d", "lin0"], "use_dora": True})),
    *rows(LoraConfig, "Conv2dGroups", ("Conv2d Groups LoRA", {"target_modules": ["conv2d"]})),
    *rows(LoraConfig, "Conv2dGroups2", ("Conv2d Groups2 LoRA", {"target_modules": ["conv2d"]})),
    *rows(LoraConfig, "Conv2dGroups",
          ("Conv2d Groups LoRA with DoRA", {"target_modules": ["conv2d"], "use_dora": True})),
    *rows(LoraConfig, "Conv2dGroups2",
          ("Conv2d Groups2 LoRA with DoRA", {"target_modules": ["conv2d"], "use_dora": True})),
    *rows(LoraConfig, "Conv3d", ("Conv3d 1 LoRA", {"target_modules": ["conv3d"]}),
          ("Conv3d 2 LoRA", {"target_modules": ["conv3d", "lin0"]}),
          ("Conv3d 1 LoRA with DoRA", {"target_modules": ["conv3d"], "use_dora": True}),
          ("Conv3d 2 LoRA with DoRA", {"target_modules": ["conv3d", "lin0"], "use_dora": True})),
    *rows(LoraConfig, "MLP", ("Vanilla MLP 1 LoRA with lora_b bias",
                              {"target_modules": ["lin0", "lin1"], "lora_bias": True, "lora_alpha": 32})),
    *rows(LoraConfig, "Conv2d", ("Conv2d 1 LoRA with lora_b bias",
                                 {"target_modules": ["conv2d"], "lora_bias": True, "lora_alpha": 32})),
    *rows(LoraConfig, "Conv3d", ("Conv3d 1 LoRA with lora_b bias",
                                 {"target_modules": ["conv3d"], "lora_bias": True, "lora_alpha": 32})),
    *rows(LoraConfig, "MHA", ("MHA 1 LoRA", {"target_modules": ["mha"]}),
          ("MHA 2 LoRA", {"target_modules": ["mha", "lin0"]})),
    *rows(LoraConfig, "MlpUsingParameters",
          ("MLP 1 using nn.Parameter LoRA", {"target_parameters": ["lin0.weight"]})),
    *rows(LoraConfig, "MLP", ("MLP 2 using nn.Parameter LoRA",
                              {"target_modules": ["lin0"], "target_parameters": ["lin1.weight"]}),
          ("Vanilla MLP 1 LoRA with Monteclora",
           {"target_modules": ["lin0"], "monteclora_config": MontecloraConfig(num_samples=2)})),
    *rows(IA3Config, "MLP",
          ("Vanilla MLP 1 IA3", {"target_modules": "lin0", "feedforward_modules": []}),
          ("Vanilla MLP 2 IA3", {"target_modules": "lin0", "feedforward_modules": "lin0"}),
          ("Vanilla MLP 3 IA3", {"target_modules": ["lin0"], "feedforward_modules": []}),
          ("Vanilla MLP 4 IA3", {"target_modules": ["lin0"], "feedforward_modules": ["lin0"]}),
          ("Vanilla MLP 5 IA3", {"target_modules": ["lin1"], "feedforward_modules": []}),
          ("Vanilla MLP 6 IA3", {"target_modules": ["lin1"], "feedforward_modules": ["lin1"]}),
          ("Vanilla MLP 7 IA3", {"target_modules": ["lin0", "lin1"], "feedforward_modules": []}),
          ("Vanilla MLP 8 IA3", {"target_modules": ["lin0", "lin1"], "feedforward_modules": ["lin0", "lin1"]}),
          ("Vanilla MLP 9 IA3", {"target_modules": ["lin0"], "modules_to_save": ["lin1"],
                                 "feedforward_modules": ["lin0"]})),
    *rows(IA3Config, "EmbConv1D",
          ("transformers Conv1D 1 IA3", {"target_modules": ["conv1d"], "feedforward_modules": ["conv1d"]}),
          ("transformers Conv1D 2 IA3", {"target_modules": ["conv1d", "lin0"],
                                         "feedforward_modules": ["conv1d", "lin0"]}),
          ("transformers Conv1D 1 IA3 (2)", {"target_modules": ["conv1d"], "feedforward_modules": ["conv1d"],
                                             "modules_to_save": ["lin0"]})),
    *[(f"Conv{d} {n} IA3", f"Conv{d}", IA3Config, {"target_modules": targets, "feedforward_modules": ff})
      for d in ("2d", "3d")
      for n, targets, ff in [(1, [f"conv{d}"], []), (2, [f"conv{d}"], [f"conv{d}"]), (3, [f"conv{d}", "lin0"], []),
                             (4, [f"conv{d}", "lin0"], [f"conv{d}"]), (5, [f"conv{d}", "lin0"], [f"conv{d}", "lin0"])]],
    *rows(LoHaConfig, "MLP", *[(f"Vanilla MLP {n} LOHA", o) for n, o in MLP_BASICS],
          ("Vanilla MLP 6 LOHA", {"target_modules": ["lin0"], "alpha": 4, "module_dropout": 0.1}),
          ("Vanilla MLP 7 LOHA", {"target_modules": "lin0", "rank_dropout": 0.5})),
    *rows(LoHaConfig, "Conv2d", ("Conv2d 1 LOHA", {"target_modules": ["conv2d"]}),
          ("Conv2d 2 LOHA", {"target_modules": ["conv2d", "lin0"]}),
          ("Conv2d 3 LOHA", {"target_modules": ["conv2d"], "use_effective_conv2d": True}),
          ("Conv2d 4 LOHA", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True})),
    *rows(LoHaConfig, "Conv1d", ("Conv1d LOHA", {"target_modules": ["conv1d"]}),
          ("Conv1d LOHA 1", {"target_modules": ["conv1d"]}), ("Conv1d LOHA 2", {"target_modules": ["conv1d"], "r": 2})),
    *rows(LoHaConfig, "Conv1dGroups", ("Conv1d Groups LOHA", {"target_modules": ["conv1d"], "r": 4})),
    *rows(LoHaConfig, "Conv1dBigger",
          ("Conv1d LOHA 3", {"target_modules": ["conv1d"], "r": 2, "use_effective_conv2d": True}),
          ("Conv1d LOHA 4", {"target_modules": ["conv1d"], "r": 2, "use_effective_conv2d": False})),
    *rows(LoHaConfig, "Conv2d1x1", ("Conv2d 1x1 LOHA", {"target_modules": ["conv2d"]})),
    *rows(LoHaConfig, "Conv2dGroups", ("Conv2d Groups LOHA", {"target_modules": ["conv2d"]})),
    *rows(LoHaConfig, "Conv2dGroups2", ("Conv2d Groups2 LOHA", {"target_modules": ["conv2d"]})),
    *rows(LoKrConfig, "MLP", *[(f"Vanilla MLP {n} LOKR", o) for n, o in MLP_BASICS],
          ("Vanilla MLP 6 LOKR", {"target_modules": ["lin0"], "alpha": 4, "module_dropout": 0.1}),
          ("Vanilla MLP 7 LOKR", {"target_modules": "lin0", "rank_dropout": 0.5}),
          ("Vanilla MLP 8 LOKR", {"target_modules": "lin0", "decompose_both": True, "r": 1, "alpha": 1})),
    *rows(LoKrConfig, "Conv1d", ("Conv1d LOKR 1", {"target_modules": ["conv1d"]}),
          ("Conv1d LOKR 2", {"target_modules": ["conv1d"], "r": 2})),
    *rows(LoKrConfig, "Conv1dGroups", ("Conv1d Groups LOKR", {"target_modules": ["conv1d"], "r": 4})),
    *rows(LoKrConfig, "Conv1dBigger",
          ("Conv1d LOKR 3", {"target_modules": ["conv1d"], "r": 2, "use_effective_conv2d": True}),
          ("Conv1d LOKR 4", {"target_modules": ["conv1d"], "r": 2, "use_effective_conv2d": False})),
    *rows(LoKrConfig, "Conv2d", ("Conv2d 1 LOKR", {"target_modules": ["conv2d"]}),
          ("Conv2d 2 LOKR", {"target_modules": ["conv2d", "lin0"]}),
          ("Conv2d 3 LOKR", {"target_modules": ["conv2d"], "use_effective_conv2d": True}),
          ("Conv2d 4 LOKR", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True})),
    *rows(LoKrConfig, "Conv2d1x1", ("Conv2d 1x1 LOKR", {"target_modules": ["conv2d"]})),
    *rows(LoKrConfig, "Conv2d",
          ("Conv2d 5 LOKR", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True,
                             "decompose_both": True}),
          ("Conv2d 6 LOKR", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True,
                             "decompose_factor": 4}),
          ("Conv2d 7 LOKR", {"target_modules": ["conv2d", "lin0"], "use_effective_conv2d": True,
                             "decompose_both": True, "decompose_factor": 4})),
    *rows(LoKrConfig, "Conv2dGroups", ("Conv2d Groups LOKR", {"target_modules": ["conv2d"]})),
    *rows(LoKrConfig, "Conv2dGroups2", ("Conv2d Groups2 LOKR", {"target_modules": ["conv2d"]})),
    *rows(LoraConfig, "MLP",
          ("BD-LoRA A only", {"target_modules": ["lin0", "lin1"],
                              "use_bdlora": BdLoraConfig(target_modules_bd_a=["lin0"], match_strict=False)}),
          ("BD-LoRA B only", {"target_modules": ["lin0", "lin1"],
                              "use_bdlora": BdLoraConfig(target_modules_bd_b=["lin1"], nblocks=2, match_strict=False)}),
          ("BD-LoRA both A and B", {"target_modules": ["lin0", "lin1"],
                                    "use_bdlora": BdLoraConfig(target_modules_bd_a=["lin0"],
                                                               target_modules_bd_b=["lin1"], nblocks=2)})),
]

# The rows ftlab refuses, and the words its message must contain (the option or layer, and what ftlab offers).
REFUSED = {
    "Vanilla MLP 1 LoRA with KaSA": "kasa_config.*ftlab has no KaSA",
    "Vanilla MLP 1 LoRA with MiCA": "init_lora_weights.*MiCA",
    "Embedding + transformers Conv1D 1 LoRA trainable_tokens": "trainable_token_indices.*modules_to_save",
    "MLP 1 using nn.Parameter LoRA": "target_parameters.*name the module in targets",
    "MLP 2 using nn.Parameter LoRA": "target_parameters.*name the module in targets",
    "Vanilla MLP 1 LoRA with Monteclora": "monteclora_config.*plain LoRA",
    # peft's DoRA norm on a grouped conv reshapes a product that is not the layer's weight change
    "Conv2d Groups LoRA with DoRA": "grouped convolution.*use plain LoRA",
    "Conv2d Groups2 LoRA with DoRA": "grouped convolution.*use plain LoRA",
    # peft's torch.kron of a 2-D W1 and a 3-D W2 is not their Kronecker product
    "Conv1d Groups LOKR": "nn.Conv1d.*torch.kron.*use_effective_conv2d=True",
    # ftlab adapts the attention (tests/test_lora.py); peft 0.21.2 adds out_proj's change twice: no file either way
    "MHA 1 LoRA": "MultiheadAttention.*huggingface/peft#3774",
    "MHA 2 LoRA": "MultiheadAttention.*huggingface/peft#3774",
}
METHODS = {LoraConfig: "lora", LoHaConfig: "loha", LoKrConfig: "lokr", IA3Config: "ia3"}


def ftlab_options(options: dict) -> dict:
    """peft's options as ftlab's: ``target_modules`` is ``targets``, the rest keep their names."""
    return {("targets" if key == "target_modules" else key): value for key, value in options.items()}


def perturb(model: nn.Module) -> None:
    """Move every trainable tensor away from its initial value (a zero B or a unit IA3 vector hides errors)."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))


def max_diff(a, b):
    return (a - b).abs().max().item()


def run_case(config_class, model_id, options, tmp_path) -> str:
    """Run one row; returns "equal" or raises AssertionError / ftlab's refusal (ValueError, TypeError)."""
    base = build(model_id)
    x = model_input(model_id)
    ours = ftlab.apply(copy.deepcopy(base), METHODS[config_class], **ftlab_options(options))
    perturb(ours)
    ftlab.export_peft(ours, tmp_path / "adapter")
    ref = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        expected = ref(x)
        assert max_diff(expected, base(x)) > 1e-6, "the perturbed adapter changes the output"
        assert max_diff(ours(x), expected) < TOL, "ftlab's output equals peft's on the exported adapter"
        try:
            ref.merge_adapter()
        except NotImplementedError:  # peft cannot merge LoRA on a grouped convolution
            with pytest.raises(TypeError, match="grouped convolution"):
                ftlab.merge(ours)
        else:
            ftlab.merge(ours)
            assert max_diff(ours(x), ref(x)) < MERGE_TOL and max_diff(ours(x), expected) < MERGE_TOL
            ftlab.unmerge(ours)
            assert max_diff(ours(x), expected) < TOL
        back = ftlab.import_peft(copy.deepcopy(base), tmp_path / "adapter").eval()
        assert max_diff(back(x), expected) < TOL, "import_peft reads the adapter back"
    return "equal"


def check_refused_by_import(config_class, model_id, options, message, tmp_path) -> None:
    """peft's own adapter file of the row is refused by import_peft with the same message, model untouched."""
    torch.manual_seed(0)
    dtype = torch.float32 if options.get("init_lora_weights") == "mica" else torch.float64  # MiCA needs float32
    base = build(model_id).to(dtype)
    get_peft_model(copy.deepcopy(base), config_class(**copy.deepcopy(options))).save_pretrained(tmp_path / "peft")
    state = copy.deepcopy(base.state_dict())
    with pytest.raises((ValueError, TypeError), match=message):
        ftlab.import_peft(base, tmp_path / "peft")
    assert all(torch.equal(base.state_dict()[k], v) for k, v in state.items())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, model_id, config_class, options", TEST_CASES, ids=[row[0] for row in TEST_CASES])
def test_peft_row_is_equal_or_refused_with_ftlabs_message(name, model_id, config_class, options, tmp_path):
    if name not in REFUSED:
        assert run_case(config_class, model_id, options, tmp_path) == "equal"
        return
    if model_id != "MlpUsingParameters":
        base = build(model_id)
        state = copy.deepcopy(base.state_dict())
        with pytest.raises((ValueError, TypeError), match=REFUSED[name]) as refusal:  # by apply, or else by export
            ftlab.export_peft(ftlab.apply(base, METHODS[config_class], **ftlab_options(options)), tmp_path / "ours")
        assert "got an unexpected keyword argument" not in str(refusal.value)
        assert not (tmp_path / "ours").exists()
        if not tuned_layers(base):  # refused by apply: nothing changed
            assert all(torch.equal(base.state_dict()[k], v) for k, v in state.items())
        check_refused_by_import(config_class, model_id, options, REFUSED[name], tmp_path)
    else:  # the model is not rebuilt, but apply refuses the option before looking at any model
        with pytest.raises(ValueError, match=REFUSED[name]):
            ftlab.apply(MLP(), "lora", **ftlab_options(options))


def test_the_matrix_has_peft_111_rows_and_at_least_100_are_equal():
    counts = {}
    for name, _, config_class, _ in TEST_CASES:
        method = METHODS[config_class]
        counts.setdefault(method, [0, 0])[name in REFUSED] += 1
    print("\nmethod  equal  refused")
    for method, (equal, refused) in counts.items():
        print(f"{method:6s}  {equal:5d}  {refused:7d}")
    assert len(TEST_CASES) == 111 and len({row[0] for row in TEST_CASES}) == 111
    assert set(REFUSED) <= {row[0] for row in TEST_CASES}
    assert len(TEST_CASES) - len(REFUSED) >= 100
    assert all(method_spec(method).peft is not None for method in counts)
