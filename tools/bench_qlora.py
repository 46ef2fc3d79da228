"""QLoRA against LoRA and bitsandbytes on the CPU: forward time, memory, and fine-tuning accuracy.

    python tools/bench_qlora.py [--num-steps 150] [--repeats 30]

1. Forward time of one layer on a batch of 32 x 64 tokens: our 4-bit ``Linear4bit`` (NF4, double
   quantisation), bitsandbytes' ``Linear4bit`` (nf4, compress_statistics=True) and a float32
   nn.Linear, measured round-robin in one run (so all three see the same machine load); medians
   and their ratios.
2. ``ftlab.measure.memory_report`` of one training step of MiniLM: full fine-tuning vs LoRA vs
   QLoRA (both r=8 on every linear layer, classifier trained in full), in MB.
3. LoRA vs QLoRA fine-tuned on the sentiment task, same rank, seed and steps
   (``ftlab.compare.compare``): test accuracy.
"""
import argparse
import copy
import statistics
import time

import bitsandbytes as bnb
import torch
from torch import nn

import ftlab
from ftlab.compare import compare
from ftlab.methods import qlora
from ftlab.tasks import text_loader
from ftlab.tasks.sentiment import make_sentiment
from ftlab.zoo import load_bert

MEMORY_COLUMNS = ["weights_trainable", "weights_frozen", "buffers", "gradients", "optimizer_state", "activations",
                  "total"]


def forward_times(n_in: int, n_out: int, tokens: tuple[int, int] = (32, 64), repeats: int = 30) -> dict:
    """Median forward seconds of the float32, our 4-bit and bitsandbytes' 4-bit layer, timed round-robin."""
    torch.manual_seed(0)
    linear = nn.Linear(n_in, n_out)
    ours = qlora.quantize_layer(linear)
    theirs = bnb.nn.Linear4bit(n_in, n_out, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
    theirs.load_state_dict(linear.state_dict())
    theirs = theirs.to("cpu")  # bitsandbytes quantises when the layer is moved to a device
    x = torch.randn(*tokens, n_in)  # (B, T, in)
    layers = {"float32": linear, "ours": ours, "bitsandbytes": theirs}
    times = {name: [] for name in layers}
    with torch.no_grad():
        difference = (ours(x) - theirs(x)).abs().max().item()
        for i in range(repeats + 3):
            for name, layer in layers.items():
                start = time.perf_counter()
                layer(x)
                if i >= 3:  # warm-up
                    times[name].append(time.perf_counter() - start)
    out = {name: statistics.median(t) for name, t in times.items()}
    out["max_output_difference"] = difference
    return out


def memory_table(r: int = 8, batch_size: int = 16) -> list[dict]:
    """``memory_report`` rows of MiniLM with full fine-tuning, LoRA and QLoRA on one sentiment batch."""
    base, tokenizer = load_bert()
    batch = next(iter(text_loader(make_sentiment()["train"], tokenizer, batch_size=batch_size)))
    options = {"r": r, "lora_alpha": 2 * r, "targets": "all-linear", "modules_to_save": ["classifier"]}
    rows = []
    for method, kwargs in (("full", {}), ("lora", options), ("qlora", options)):
        model = ftlab.apply(copy.deepcopy(base), method, **kwargs)
        rows.append(ftlab.memory_report(model, batch, name=method))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=150, help="fine-tuning steps per method")
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per layer")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")

    print("\n1. Forward time, batch 32 x 64 tokens (median ms; ratios measured in the same run)")
    print(f"{'layer in->out':>14s} {'float32':>8s} {'ours':>8s} {'bnb':>8s} {'ours/fp32':>10s} {'bnb/fp32':>9s} "
          f"{'ours/bnb':>9s} {'max |ours-bnb|':>15s}")
    for n_in, n_out in ((384, 1536), (1536, 384)):
        t = forward_times(n_in, n_out, repeats=args.repeats)
        print(f"{f'{n_in}->{n_out}':>14s} {1e3 * t['float32']:8.2f} {1e3 * t['ours']:8.2f} "
              f"{1e3 * t['bitsandbytes']:8.2f} {t['ours'] / t['float32']:10.2f} "
              f"{t['bitsandbytes'] / t['float32']:9.2f} {t['ours'] / t['bitsandbytes']:9.2f} "
              f"{t['max_output_difference']:15.2e}")

    print("\n2. Memory of one training step, MiniLM, batch of 16 sentiment sentences (MB)")
    rows = memory_table()
    print(f"{'':18s}" + "".join(f"{row['name']:>10s}" for row in rows))
    for column in MEMORY_COLUMNS:
        print(f"{column:18s}" + "".join(f"{row[column] / 2**20:10.2f}" for row in rows))
    full, lora, q = rows
    print(f"total vs full: lora {lora['total'] / full['total']:.3f}, qlora {q['total'] / full['total']:.3f}; "
          f"qlora vs lora {q['total'] / lora['total']:.3f}")
    report = qlora.storage_report(qlora.apply(load_bert()[0]))
    print(f"quantised layers: {report['layers']} layers, {report['parameters']:,d} weights, "
          f"{report['bytes'] / 2**20:.2f} MB vs {report['float32_bytes'] / 2**20:.2f} MB in float32 "
          f"(ratio {report['ratio']:.4f}, {report['bits_per_parameter']:.4f} bits per weight)")

    print(f"\n3. Sentiment fine-tuning, MiniLM, r=8 on every linear layer, {args.num_steps} steps")
    settings = {"r": 8, "lora_alpha": 16, "targets": "all-linear", "lr": 3e-4}
    results = compare({"lora": settings, "qlora": settings}, "sentiment", num_steps=args.num_steps, measure=False)
    for row in results.to_dict("records"):
        print(f"{row['method']:>6s}: test accuracy {row['test accuracy']:.4f}, trainable "
              f"{row['trainable']:,d} of {row['total']:,d}, {row['seconds']:.0f} s")


if __name__ == "__main__":
    main()
