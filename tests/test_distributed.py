"""fit under torchrun: 2 CPU processes (gloo) train LoRA on the tiny GPT-2 to the same weights as one process
over the same global batch. Run as a script, this file is the worker that tools/torchrun.py launches."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
BATCH, STEPS = 2, 4  # per-process batch; optimizer steps


def lora_gpt2():
    """A seeded random GPT-2 without dropout, with LoRA on c_attn."""
    import ftlab

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    ftlab.apply(model, "lora", r=4, lora_alpha=8)
    return model


def examples(n=32, length=12):
    """Equal-length token sequences, every label scored: each batch scores as many tokens."""
    ids = torch.randint(0, 500, (n, length), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": row, "labels": row} for row in ids]


def collate(rows):
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def trainable(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def runs(per_process_batch, grad_accum_steps=1, device="cpu"):
    """The two runs of the test: a DataLoader over a dataset, and a list of batches (every N-th batch)."""
    from ftlab.train import fit

    results = {}
    loader = DataLoader(examples(), batch_size=per_process_batch, collate_fn=collate)
    model = lora_gpt2()
    history = fit(model, loader, num_steps=STEPS, lr=1e-2, progress=False, device=device)
    results["loader"] = (trainable(model), history["loss"])
    batches = [collate(examples()[i:i + BATCH]) for i in range(0, 32, BATCH)]
    model = lora_gpt2()
    history = fit(model, batches, num_steps=STEPS, lr=1e-2, grad_accum_steps=grad_accum_steps, progress=False,
                  device=device)
    results["list"] = (trainable(model), history["loss"])
    return results


def compare_with_one_process(ddp_file, device="cpu") -> dict:
    """Max |difference| of the LoRA weights of the 2-process runs (saved by ``worker``) and of one process over
    the same global batch: a loader with batches of 2 x 2, and the list with 2 batches accumulated per step.
    Asserts the losses match and that training moved the weights."""
    ddp = torch.load(ddp_file, weights_only=True, map_location="cpu")
    single = runs(2 * BATCH, grad_accum_steps=2, device=device)
    initial = lora_gpt2().state_dict()
    differences = {}
    for name, (weights, loss) in single.items():
        assert ddp[name]["weights"].keys() == weights.keys() and len(weights) == 4  # LoRA A, B on two c_attn
        differences[name] = max((ddp[name]["weights"][k] - w.cpu()).abs().max().item() for k, w in weights.items())
        assert ddp[name]["loss"] == pytest.approx(loss, rel=1e-5)  # the loss averaged over the processes
        moved = max((w.cpu() - initial[k]).abs().max().item() for k, w in weights.items())
        assert moved > 1e-3  # training changed the weights, so equal weights mean equal steps
    return differences


def worker(out: str, device: str = "cpu") -> None:
    """One of the torchrun processes: train both runs, rank 0 saves the weights and losses."""
    from ftlab import distributed

    results = runs(BATCH, device=device)
    print(f"rank {distributed.get_rank()} of {distributed.get_world_size()} done", flush=True)
    if distributed.is_main():
        torch.save({name: {"weights": weights, "loss": loss} for name, (weights, loss) in results.items()}, out)


def load_tool():
    spec = importlib.util.spec_from_file_location("torchrun_tool", ROOT / "tools" / "torchrun.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_two_gloo_processes_train_the_same_lora_weights_as_one_process_over_the_global_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "torchrun.py"), "-n", "2", __file__, "--", str(out)],
                          capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rank 0 of 2 done" in done.stdout and "rank 1 of 2 done" not in done.stdout  # rank 0's output only
    differences = compare_with_one_process(out)
    print("2 processes vs 1, max |difference| of the LoRA weights:", differences)
    assert max(differences.values()) < 1e-5


def test_shard_gives_each_process_its_share_of_a_list_and_of_a_dataloader():
    from ftlab.distributed import Shard

    batches = list(range(7))
    assert [list(Shard(batches, rank=r, world_size=2)) for r in (0, 1)] == [[0, 2, 4, 6], [1, 3, 5]]
    loader = DataLoader(list(range(10)), batch_size=2)
    shares = [[b.tolist() for b in Shard(loader, rank=r, world_size=2)] for r in (0, 1)]
    assert shares == [[[0, 2], [4, 6], [8]], [[1, 3], [5, 7], [9]]]
    shuffled = DataLoader(list(range(10)), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0))
    shard = Shard(shuffled, rank=0, world_size=2)
    first, second = [b.tolist() for b in shard], [b.tolist() for b in shard]
    assert first != second  # a new order every pass (set_epoch)
    union = sorted(sum((b.tolist() for r in (0, 1) for b in Shard(shuffled, rank=r, world_size=2)), []))
    assert union == list(range(10))


def test_without_torchrun_fit_is_one_process():
    from ftlab import distributed

    assert not distributed.launched() and distributed.get_rank() == 0 and distributed.get_world_size() == 1
    assert distributed.is_main()
    t = torch.tensor([1.0, 2.0])
    assert distributed.average(t) is t


def test_torchrun_tool_turns_a_notebooks_code_cells_into_a_script(tmp_path, capsys):
    tool = load_tool()
    notebook = {"cells": [
        {"cell_type": "markdown", "source": ["# title"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "import ftlab\n", "!ls\n"]},
        {"cell_type": "code", "source": ["x = 1\n", "display(x)"]},
        {"cell_type": "code", "source": ["y = 2"]},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "demo.ipynb"
    path.write_text(json.dumps(notebook))
    script = tool.notebook_to_script(path)
    assert "%matplotlib" not in script and "!ls" not in script and "# title" not in script
    assert "import ftlab" in script and "display(x)" in script and "from IPython.display import display" in script
    compile(script, "demo.py", "exec")
    assert "y = 2" not in tool.notebook_to_script(path, cells="1-2")
    assert tool.parse_cells("1,3-4", 6) == [1, 3, 4]
    with pytest.raises(ValueError, match="outside the notebook's cells 0-3"):
        tool.notebook_to_script(path, cells="2-9")
    assert tool.main(["--print-script", str(path), "--cells", "1-2"]) == 0  # options after the path
    printed = capsys.readouterr().out
    assert "x = 1" in printed and "y = 2" not in printed
    command = tool.torchrun_command("demo.py", 2, ["--steps", "3"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--local-ranks-filter=0", "demo.py", "--steps", "3"]


if __name__ == "__main__":  # under torchrun: test_distributed.py OUT_FILE [DEVICE]
    worker(*sys.argv[1:])
