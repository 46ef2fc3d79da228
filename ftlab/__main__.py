"""Command line: ``python -m ftlab info``, ``python -m ftlab bench lora``,
``python -m ftlab compare --task sentiment --methods all``,
``python -m ftlab estimate --model llama-7b --method qlora --batch 4 --seq 512``."""
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


def compare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fine-tune every chosen method on one task, print the table; with ``--out`` also write a CSV and a PNG.

    Bad input stops with ``parser.error`` (exit code 2): ``ftlab.compare.compare`` checks every method
    before it trains anything, so nothing is trained or written.
    """
    import torch

    from ftlab.compare import compare as run_compare, default_budget, summary_table
    from ftlab.config import mode

    names = [n for item in args.methods for n in item.split(",") if n]
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive number of optimizer steps, got {args.steps}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    budget = default_budget(args.task)
    if args.steps is not None:
        budget["num_steps"] = args.steps
    print(f"task {args.task}: {budget['num_steps']} steps per method, mode {mode()}, "
          f"{torch.get_num_threads()} torch thread(s)")
    try:
        df = run_compare("all" if names == ["all"] else names, args.task, seed=args.seed, **budget)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    for name, reason in df.attrs["skipped"].items():
        print(f"  skipped {name}: {reason}")
    print(summary_table(df).to_string(index=False))
    if args.out is not None:
        from ftlab.viz import plot_comparison

        args.out.mkdir(parents=True, exist_ok=True)
        csv, png = args.out / f"compare_{args.task}.csv", args.out / f"compare_{args.task}.png"
        df.to_csv(csv, index=False)
        plot_comparison(df).savefig(png, dpi=120)
        print(f"wrote {csv} and {png}")


def estimate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Print the memory of one training step, part by part, from ``ftlab.estimate_memory`` (nothing is allocated).

    Bad input stops with ``parser.error`` (exit code 2) and the estimator's message.
    """
    import ast

    from ftlab.estimate import CONFIGS, estimate_memory, estimate_table
    from ftlab.measure import format_parameters
    from ftlab.zoo import ModelNotAvailableError

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"--option takes KEY=VALUE, e.g. --option r=16 or --option targets=all-linear; got {item!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain word such as all-linear
    length = {"image_size": args.image_size} if args.image_size is not None else {"seq_len": args.seq}
    try:
        row = estimate_memory(args.model, args.method, batch_size=args.batch, precision=args.precision,
                              optimizer=args.optimizer, gradient_checkpointing=args.checkpointing,
                              device=args.device, **length, **options)
    except (ValueError, TypeError, ModelNotAvailableError) as err:
        parser.error(str(err))
    source = CONFIGS[args.model]["source"] if args.model in CONFIGS else args.model
    shape = f"{row['image_size']}x{row['image_size']} images" if args.image_size is not None else \
        f"{row['seq_len']} tokens"
    print(f"{args.model}: {source}")
    print(f"{args.method}, batch {row['batch_size']} x {shape}, {row['precision']}, {row['optimizer']}, "
          f"gradient checkpointing {'on' if row['gradient_checkpointing'] else 'off'}, "
          f"attention kernels of {row['device']}")
    print(format_parameters(row["trainable_parameters"], row["parameters"]))
    print(estimate_table(row).to_string(index=False))


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
    from pathlib import Path

    from ftlab.compare import TASKS

    shootout = sub.add_parser("compare", help="fine-tune several methods on one task under one budget, side by side")
    shootout.add_argument("--task", required=True, choices=list(TASKS),
                          help="; ".join(f"{name}: {about}" for name, about in TASKS.items()))
    shootout.add_argument("--methods", nargs="+", default=["all"],
                          help="'all' (every method that applies to the task's model) or method names, "
                               "separated by spaces or commas")
    shootout.add_argument("--steps", type=int, help="optimizer steps per method (default: the task's budget)")
    shootout.add_argument("--seed", type=int, default=0, help="seed for the data, the new head and training")
    shootout.add_argument("--out", type=Path, help="folder for compare_TASK.csv and compare_TASK.png")
    shootout.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    from ftlab.estimate import OPTIMIZER_MOMENTS, PRECISIONS
    from ftlab.methods import METHODS

    memory = sub.add_parser("estimate", help="memory of one training step of any model or config, up to 70B, "
                                             "part by part (nothing is allocated)")
    memory.add_argument("--model", required=True,
                        help="a catalogue name (llama-7b, llama-13b, llama-70b, mistral-7b, qwen2-7b, gpt2, gpt2-xl, "
                             "bert-base, minilm, gpt2-tiny, resnet18, ...: see ftlab.estimate.CONFIGS), a folder "
                             "with config.json, or a hub name in the local cache")
    memory.add_argument("--method", default="lora", choices=list(METHODS), help="fine-tuning method (default lora)")
    memory.add_argument("--batch", type=int, default=1, help="examples per batch (default 1)")
    memory.add_argument("--seq", type=int, default=512, help="tokens per example (default 512)")
    memory.add_argument("--image-size", type=int, help="for a ResNet: the side of a square image in pixels")
    memory.add_argument("--precision", default="bf16-mixed", choices=list(PRECISIONS),
                        help="default bf16-mixed (16-bit model, fp32 master weights in the optimizer)")
    memory.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZER_MOMENTS))
    memory.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    memory.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="whose attention kernels to count (default cuda)")
    memory.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, repeatable: --option r=16 --option targets=all-linear")
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    elif args.command == "bench":
        BENCHMARKS[args.method](repeats=args.repeats, batch_size=args.batch_size, seq_len=args.seq_len,
                                 threads=args.threads)
    elif args.command == "compare":
        compare(shootout, args)
    elif args.command == "estimate":
        estimate(memory, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
