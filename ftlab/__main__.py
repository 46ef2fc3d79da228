"""Command line: ``python -m ftlab info``, ``python -m ftlab bench lora`` (more commands arrive with the method issues)."""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys


def info() -> None:
    """Print versions, device, run mode and which offline models are available."""
    import torch

    from ftlab import zoo
    from ftlab.config import device, mode
    from ftlab.methods import available

    print(f"ftlab {importlib.metadata.version('ftlab')}  (python {platform.python_version()})")
    for package in ["torch", "torchvision", "transformers", "peft", "bitsandbytes", "safetensors"]:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        print(f"  {package:<13} {version}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"device: {device()}  (CUDA GPU: {cuda})")
    print(f"mode:   {mode()}  (set FTLAB_FAST=1 for the fast CI mode)")
    print("offline models:")
    for family, names in zoo.offline_models().items():
        for name in names:
            status = "available" if zoo.is_available(family, name) else "MISSING"
            print(f"  {family:<7} {name:<10} {status}")
    print(f"methods: {', '.join(available())}")


def main(argv: list[str] | None = None) -> int:
    from ftlab.bench import BENCHMARKS

    parser = argparse.ArgumentParser(prog="python -m ftlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device, mode and offline models")
    bench = sub.add_parser("bench", help="speed of a method against its reference, printed side by side")
    bench.add_argument("method", choices=sorted(BENCHMARKS),
                       help="lora: training step vs peft's LoRA, inference after merge vs the base model")
    bench.add_argument("--repeats", type=int, help="interleaved repeats (default 7; FAST mode 2)")
    bench.add_argument("--batch-size", type=int, help="examples per batch (default 16)")
    bench.add_argument("--seq-len", type=int, help="tokens per example (default 64)")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    elif args.command == "bench":
        BENCHMARKS[args.method](repeats=args.repeats, batch_size=args.batch_size, seq_len=args.seq_len,
                                 threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
