"""Quantisation error of NF4, FP4 and int4 on every pretrained MiniLM linear weight, and storage.

    python tools/bench_nf4.py

Prints, per weight, the relative error ||W - dequantize(quantize(W))|| / ||W|| (block 64, double
quantisation on), then the errors over all weights together and the stored bits per parameter.
The classifier head is left out: it is freshly initialised, not pretrained.
"""
import torch

from ftlab.methods.nf4 import QUANT_TYPES, bits_per_parameter, dequantize, quantization_error, quantize
from ftlab.zoo import load_bert


def main() -> None:
    model, _ = load_bert()
    weights = {name: module.weight.detach() for name, module in model.bert.named_modules()
               if isinstance(module, torch.nn.Linear)}
    print(f"{'weight':42s} {'shape':>11s} " + " ".join(f"{t:>7s}" for t in QUANT_TYPES))
    for name, w in weights.items():
        errors = " ".join(f"{quantization_error(w, quant_type=t):7.4f}" for t in QUANT_TYPES)
        print(f"{name:42s} {'x'.join(map(str, w.shape)):>11s} {errors}")

    squared_error = dict.fromkeys(QUANT_TYPES, 0.0)
    stored_bits = {"double_quant": 0.0, "plain": 0.0}
    for w in weights.values():
        for t in QUANT_TYPES:
            squared_error[t] += (w.double() - dequantize(quantize(w, quant_type=t)).double()).square().sum().item()
        stored_bits["double_quant"] += bits_per_parameter(quantize(w, double_quant=True)) * w.numel()
        stored_bits["plain"] += bits_per_parameter(quantize(w, double_quant=False)) * w.numel()
    total = sum(w.numel() for w in weights.values())
    norm = sum(w.double().square().sum().item() for w in weights.values()) ** 0.5
    print(f"\nall {len(weights)} weights ({total:,d} parameters), relative error: "
          + ", ".join(f"{t} {squared_error[t] ** 0.5 / norm:.4f}" for t in QUANT_TYPES))
    print(f"bits per parameter: {stored_bits['double_quant'] / total:.4f} with double quantisation, "
          f"{stored_bits['plain'] / total:.4f} without (float32: 32)")
    big = quantize(torch.randn(1536, 384))
    print(f"one 1536x384 matrix: {bits_per_parameter(big):.4f} bits per parameter with double quantisation")


if __name__ == "__main__":
    main()
