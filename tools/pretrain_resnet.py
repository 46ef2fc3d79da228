"""Pretrain torchvision's ResNet-18 on the 52-letter glyph set and ship it as data/resnet18_glyphs.safetensors.

    OMP_NUM_THREADS=1 python tools/pretrain_resnet.py    # the shipped checkpoint (see its model card)

The architecture is torchvision's ``resnet18`` unchanged (standard stem, 32x32 inputs), so
ImageNet weights fit the same code. Training: ``ftlab.train.fit`` with SGD (momentum 0.9,
Nesterov, weight decay 5e-4), linear warm-up then cosine decay, on ``make_glyphs(seed)``.
The weights are stored in float16 with safetensors; the validation and test metrics are
measured on the checkpoint as reloaded by ``ftlab.zoo.load_resnet`` (so the float16 weights
are the ones measured) and written to a JSON file and a model card beside it.
Same seed, machine and thread count give the same weights.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

from ftlab.config import seed_everything
from ftlab.tasks.images import GLYPH_CLASSES, image_loader, make_glyphs
from ftlab.train import evaluate, fit
from ftlab.zoo import DATA_DIR, load_resnet


def pretrain(num_steps: int, batch_size: int, lr: float, warmup_steps: int, seed: int, out: Path) -> dict:
    """Train, save ``out.safetensors`` (float16), measure the saved weights, write ``out.json`` and ``out.md``."""
    start = time.perf_counter()
    seed_everything(seed)
    data = make_glyphs(seed)
    train = image_loader(data["train"], batch_size=batch_size, shuffle=True, seed=seed)
    validation = image_loader(data["validation"], batch_size=250)
    model = load_resnet("scratch", num_classes=len(GLYPH_CLASSES), seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    history = fit(model, train, num_steps=num_steps, optimizer=optimizer, warmup_steps=warmup_steps,
                  eval_data=validation, eval_every=100, device="cpu")
    train_seconds = time.perf_counter() - start

    out.parent.mkdir(parents=True, exist_ok=True)
    weights = out.with_suffix(".safetensors")
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"classes": "".join(GLYPH_CLASSES), "architecture": "torchvision resnet18"})

    threads_env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    reloaded = load_resnet(str(weights), num_classes=None)
    val = evaluate(reloaded, validation)
    test = evaluate(reloaded, image_loader(data["test"], batch_size=250))
    with torch.no_grad():
        pred = torch.cat([reloaded(x).argmax(-1) for x, _ in validation]).tolist()
    labels = data["validation"].tensors[1].tolist()
    other_case = sum(a != b and GLYPH_CLASSES[a].lower() == GLYPH_CLASSES[b].lower() for a, b in zip(labels, pred))
    record = {
        "checkpoint": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
        "classes": "".join(GLYPH_CLASSES),
        "data": {"task": "ftlab.tasks.images.make_glyphs", "seed": seed,
                 "sizes": {split: len(ds) for split, ds in data.items()}},
        "training": {"num_steps": num_steps, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                     "optimizer": "SGD(momentum=0.9, nesterov=True, weight_decay=5e-4), cosine decay",
                     "seed": seed, "seconds": round(train_seconds, 1), "threads": torch.get_num_threads(),
                     "final_train_loss": history["loss"][-1],
                     "validation_curve": [[s, e["accuracy"]] for s, e in zip(history["eval_step"], history["eval"])]},
        "validation": {"accuracy": val["accuracy"], "correct": round(val["accuracy"] * val["n"]), "n": val["n"],
                       "loss": val["loss"], "errors_same_letter_other_case": other_case},
        "test": {"accuracy": test["accuracy"], "correct": round(test["accuracy"] * test["n"]), "n": test["n"]},
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "python": platform.python_version(), "machine": platform.machine()},
        "command": threads_env + "python " + " ".join(sys.argv),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(model_card(record))
    return record


def model_card(record: dict) -> str:
    """The model card (Markdown) for a pretraining record."""
    t, v, s = record["training"], record["validation"], record["test"]
    curve = ", ".join(f"{step}: {acc:.3f}" for step, acc in t["validation_curve"])
    return f"""# ResNet-18 pretrained on glyphs (`{record['checkpoint']}`)

torchvision `resnet18`, architecture unchanged (standard 7x7 stride-2 stem and max-pool), head
`fc` with 52 outputs (`{record['classes']}`). Weights stored in float16 with safetensors
({record['size_bytes'] / 1e6:.1f} MB, sha256 `{record['sha256'][:16]}...`). Load it with
`ftlab.zoo.load_resnet()` (new head for your classes) or `load_resnet(num_classes=None)` (this head).

## Data
`ftlab.tasks.images.make_glyphs(seed={record['data']['seed']})`: the letters A-Z and a-z (no digits)
rendered from 22 TrueType fonts that matplotlib ships, random size, position, rotation
(+-20 degrees), stroke width, blur and noise; 32x32 RGB (grey), values normalised to [-1, 1].
Splits: {', '.join(f'{k} {n}' for k, n in record['data']['sizes'].items())} images.

## Training
`ftlab.train.fit`, {t['num_steps']} steps of batch {t['batch_size']}, {t['optimizer']},
peak learning rate {t['lr']} after {t['warmup_steps']} warm-up steps, seed {t['seed']}.
{t['seconds']:.0f} s with {t['threads']} CPU thread(s) on a 2-core machine shared with other jobs (torch
{record['versions']['torch']}, torchvision {record['versions']['torchvision']}).
Final training loss {t['final_train_loss']:.3f}. Validation accuracy during training (step: accuracy): {curve}.

## Metrics of the stored (float16) weights
- validation: accuracy {v['accuracy']:.4f} ({v['correct']}/{v['n']}), loss {v['loss']:.4f}
- test: accuracy {s['accuracy']:.4f} ({s['correct']}/{s['n']})

{v['errors_same_letter_other_case']} of the {v['n'] - v['correct']} validation errors are the right letter in the
other case (C/c, X/x, Z/z, O/o, V/v, S/s look alike at a random size). The numbers are also in
`{Path(record['checkpoint']).with_suffix('.json').name}`; `tests/test_zoo_resnet.py` checks the validation count.

## Command
`{record['command']}`
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DATA_DIR / "resnet18_glyphs",
                        help="path without suffix: writes .safetensors, .json and .md")
    args = parser.parse_args(argv)
    record = pretrain(args.num_steps, args.batch_size, args.lr, args.warmup_steps, args.seed, args.out)
    print(json.dumps({k: record[k] for k in ("validation", "test")}, indent=2))
    print(f"wrote {args.out.with_suffix('.safetensors')} ({record['size_bytes'] / 1e6:.1f} MB), .json and .md")


if __name__ == "__main__":
    main()
