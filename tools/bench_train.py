"""fit's scaling options measured: memory by precision and checkpointing, checkpointing's time, lr_find's rates.

    python tools/bench_train.py                      # all three parts, on ftlab.config.device()
    python tools/bench_train.py memory time          # some parts
    python tools/bench_train.py --device cuda lr_find

1. memory: ``ftlab.measure.step_memory`` of one full fine-tuning step of MiniLM (batch 16 x 64
   tokens), the tiny GPT-2 (batch 8 x 128 tokens) and ResNet-18 (batch 64 of 32 x 32 images) at
   fp32, bf16-mixed (the loss computed under ``ftlab.train.autocast``), bf16 (a bfloat16 copy of the
   model), each with and without gradient checkpointing (``ftlab.train.checkpointed``), and a
   batch a quarter the size (what ``grad_accum_steps=4`` holds at once). Ratios to fp32.
   Under autocast the bfloat16 copies of the weights that matmuls save for backward are counted
   as activations (they are memory the step holds, though they are not activations).
2. time: median seconds of a training step (``ftlab.measure.time_step``) with and without
   checkpointing, measured in turns in one run; the ratio is the cost of recomputing.
3. lr_find: the suggested rate for full fine-tuning and for LoRA (r=8, classifier trained in
   full) of MiniLM on the sentiment task, 3 seeds (the head's initialisation and the data order).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import ftlab
from ftlab.measure import step_memory, time_step
from ftlab.tasks import text_loader
from ftlab.tasks.images import IMAGE_SIZE
from ftlab.tasks.sentiment import make_sentiment
from ftlab.train import checkpointed, lr_find, to_device
from ftlab.zoo import load_bert, load_gpt2, load_resnet

PARTS = ("memory", "time", "lr_find")
MB = 1e6


def models_and_batches(device: torch.device) -> dict:
    """``{name: (model, batch)}``: MiniLM, the tiny GPT-2 and ResNet-18, each with one training batch."""
    bert, tokenizer = load_bert()
    texts = [text for text, _ in make_sentiment()["train"][:16]]
    bert_batch = dict(tokenizer([t * 6 for t in texts], padding="max_length", truncation=True, max_length=64,
                                return_tensors="pt"))
    bert_batch["labels"] = torch.tensor([label for _, label in make_sentiment()["train"][:16]])
    gpt2, _ = load_gpt2()
    ids = torch.randint(0, gpt2.config.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    resnet = load_resnet(num_classes=10)
    images = torch.randn(64, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    return {
        "MiniLM": (bert.to(device), to_device(bert_batch, device)),
        "GPT-2 tiny": (gpt2.to(device), to_device({"input_ids": ids, "labels": ids}, device)),
        "ResNet-18": (resnet.to(device), to_device((images, torch.arange(64) % 10), device)),
    }


def quarter(batch):
    """The first quarter of a batch: one micro-batch of ``grad_accum_steps=4``."""
    if isinstance(batch, dict):
        return {k: v[: len(v) // 4] for k, v in batch.items()}
    return tuple(v[: len(v) // 4] for v in batch)


def memory(device: torch.device) -> None:
    print(f"\n1. Memory of one full fine-tuning step (MB; ratio = total / fp32 total), device {device}")
    header = f"{'model':>11s} {'setting':>26s} {'weights':>8s} {'grads':>7s} {'AdamW':>7s} {'activ.':>8s} " \
             f"{'total':>8s} {'ratio':>6s} {'activ. ratio':>12s}"
    print(header)
    for name, (model, batch) in models_and_batches(device).items():
        base = None
        settings = [(p, c) for p in ("fp32", "bf16-mixed", "bf16") for c in (False, True)]
        for precision, checkpointing in settings + [("fp32 batch / 4", False)]:
            small = precision.endswith("/ 4")
            row = step_memory(model, quarter(batch) if small else batch, precision="fp32" if small else precision,
                              gradient_checkpointing=checkpointing)
            base = base or row
            weights = row["weights_trainable"] + row["weights_frozen"] + row["buffers"]
            label = precision + (" + checkpointing" if checkpointing else "")
            print(f"{name:>11s} {label:>26s} {weights / MB:8.1f} {row['gradients'] / MB:7.1f} "
                  f"{row['optimizer_state'] / MB:7.1f} {row['activations'] / MB:8.1f} {row['total'] / MB:8.1f} "
                  f"{row['total'] / base['total']:6.2f} {row['activations'] / base['activations']:12.2f}")


def times(device: torch.device, repeats: int = 7) -> None:
    print(f"\n2. Time of one training step with and without checkpointing (median s over {repeats} turns)")
    print(f"{'model':>11s} {'plain':>8s} {'checkpointed':>13s} {'ratio':>6s} {'range of ratios':>16s}")
    for name, (model, batch) in models_and_batches(device).items():
        plain, checkpointed_, ratios = [], [], []
        for _ in range(repeats):  # in turns, so both see the same load on a shared machine
            a = time_step(model, batch, num_steps=3, warmup=1)
            with checkpointed(model):
                b = time_step(model, batch, num_steps=3, warmup=1)
            plain.append(a)
            checkpointed_.append(b)
            ratios.append(b / a)
        print(f"{name:>11s} {statistics.median(plain):8.3f} {statistics.median(checkpointed_):13.3f} "
              f"{statistics.median(ratios):6.2f} {min(ratios):7.2f} - {max(ratios):5.2f}")


def lr_find_rates(device: torch.device, seeds=(0, 1, 2)) -> None:
    print("\n3. lr_find on MiniLM, sentiment (50 steps from 1e-7 to 10, batch 16): suggested rate")
    print(f"{'seed':>4s} {'full: min':>10s} {'suggestion':>11s} {'LoRA: min':>10s} {'suggestion':>11s} "
          f"{'LoRA / full':>11s} {'seconds':>8s}")
    ratios = []
    for seed in seeds:
        start = time.perf_counter()
        out = {}
        for method in ("full", "lora"):
            model, tokenizer = load_bert(seed=seed)
            if method == "lora":
                ftlab.apply(model, "lora", modules_to_save=["classifier"])
            data = text_loader(make_sentiment(seed=seed)["train"], tokenizer, batch_size=16, shuffle=True, seed=seed)
            out[method] = lr_find(model.to(device), data, progress=False)
        ratio = out["lora"]["suggestion"] / out["full"]["suggestion"]
        ratios.append(ratio)
        print(f"{seed:4d} {out['full']['lr_min']:10.1e} {out['full']['suggestion']:11.1e} "
              f"{out['lora']['lr_min']:10.1e} {out['lora']['suggestion']:11.1e} {ratio:11.1f} "
              f"{time.perf_counter() - start:8.0f}")
    print(f"LoRA / full suggestion: median {statistics.median(ratios):.1f}, "
          f"range {min(ratios):.1f} - {max(ratios):.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="part", help=f"which parts: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: ftlab.config.device())")
    options = parser.parse_args(argv)
    unknown = [part for part in options.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    device = torch.device(options.device) if options.device else ftlab.device()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    for part in options.parts or PARTS:
        {"memory": memory, "time": times, "lr_find": lr_find_rates}[part](device)


if __name__ == "__main__":
    main()
