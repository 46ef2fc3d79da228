"""Command line: ``python -m ftlab info`` (more commands arrive with the method issues)."""
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
    parser = argparse.ArgumentParser(prog="python -m ftlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device, mode and offline models")
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    return 0


if __name__ == "__main__":
    sys.exit(main())
