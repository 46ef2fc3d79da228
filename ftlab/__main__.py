"""Command line: ``python -m ftlab info``, ``python -m ftlab bench lora``,
``python -m ftlab compare --task sentiment --methods all --seeds 3``,
``python -m ftlab tune --task sentiment``, ``python -m ftlab sweep --task digits --labels-per-class 1,2,5,20``,
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
    """Fine-tune every chosen method on one task over ``--seeds`` seeds, print the runs and each method's spread;
    with ``--out`` also write compare_TASK.csv and compare_TASK.png.

    Bad input stops with ``parser.error`` (exit code 2) before anything is trained or written:
    ``ftlab.compare.compare`` checks every method before it trains, and ``--out`` is checked first
    (its files must be creatable), so a long run never fails at the end for want of a folder.
    """
    import torch

    from ftlab.compare import compare as run_compare
    from ftlab.compare import default_budget, summarize, summary_table
    from ftlab.config import mode
    from ftlab.sweep import check_writable

    names = [n for item in args.methods for n in item.split(",") if n]
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive number of optimizer steps, got {args.steps}")
    _set_threads(parser, args.threads)
    paths = None
    if args.out is not None:
        paths = args.out / f"compare_{args.task}.csv", args.out / f"compare_{args.task}.png"
        try:
            check_writable(paths)
        except ValueError as err:
            parser.error(str(err))
    budget = default_budget(args.task)
    if args.steps is not None:
        budget["num_steps"] = args.steps
    print(f"task {args.task}: {budget['num_steps']} steps per method, seeds {args.seeds}, mode {mode()}, "
          f"{torch.get_num_threads()} torch thread(s)")
    try:
        df = run_compare("all" if names == ["all"] else names, args.task, seeds=args.seeds, **budget)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    for name, reason in df.attrs["skipped"].items():
        print(f"  skipped {name}: {reason}")
    print(summary_table(df).to_string(index=False))
    print(f"\n{df.attrs['metric']} over {len(args.seeds)} seed(s):")
    print(summarize(df).round(3).to_string(index=False))
    if paths is not None:
        from ftlab.viz import plot_comparison

        csv, png = paths
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv, index=False)
        plot_comparison(df).savefig(png, dpi=120)
        print(f"wrote {csv} and {png}")


def _set_threads(parser: argparse.ArgumentParser, threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            parser.error(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def _numbers(text: str) -> list[int]:
    """argparse type: "30,80,150" -> [30, 80, 150] (whole numbers >= 1)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, e.g. 30,80,150; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}")
    return values


def _seeds(text: str) -> list[int]:
    """argparse type: "3" -> seeds [0, 1, 2]; "4,7" -> seeds [4, 7]."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seeds (3 means 0,1,2) or seeds separated by commas; "
                                         f"got {text!r}") from None
    if "," not in text and len(values) == 1:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"the number of seeds must be at least 1, got {text!r}")
        return list(range(values[0]))
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"seeds must be distinct whole numbers >= 0, got {text!r}")
    return values


def tune(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """Choose each method's learning rate on one task (``ftlab.sweep.tune``): grid rows to
    OUT/lr_grid_TASK.csv (+ .json provenance), chosen rates to RATES; resumable."""
    from ftlab.sweep import tune as run_tune

    _set_threads(parser, args.threads)
    names = [n for item in args.methods for n in item.split(",") if n]
    try:
        chosen = run_tune(args.task, "all" if names == ["all"] else names, seeds=args.seeds, out=args.out,
                          rates_file=args.rates, command=" ".join(["python -m ftlab", *argv]))
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    for name, result in chosen.items():
        print(f"{name:<8} lr {result['lr']:.3g}   " + "  ".join(f"{lr:.3g}: {v:.3f}" for lr, v in
                                                             result["validation"].items()))


def sweep(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """Every method x seed x budget on one task with the chosen rates (``ftlab.sweep.sweep``) into
    OUT/sweep_TASK.csv (+ .json provenance); resumable."""
    from ftlab.compare import summarize
    from ftlab.sweep import sweep as run_sweep

    _set_threads(parser, args.threads)
    names = [n for item in args.methods for n in item.split(",") if n]
    try:
        rows = run_sweep(args.task, "all" if names == ["all"] else names, seeds=args.seeds, steps=args.steps,
                         train_examples=args.train_examples, labels_per_class=args.labels_per_class, out=args.out,
                         command=" ".join(["python -m ftlab", *argv]))
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    print(summarize(rows).round(3).to_string(index=False))
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
    shootout.add_argument("--seeds", type=_seeds, default=[0],
                          help="how many seeds (3 means 0,1,2) or a list (4,7); seed s fixes the data, the new head "
                               "and the batch order, the same for every method (default: 1)")
    shootout.add_argument("--out", type=Path, help="folder for compare_TASK.csv and compare_TASK.png")
    shootout.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")

    from ftlab.compare import LEARNING_RATES_FILE
    from ftlab.sweep import RESULTS_DIR

    tuning = sub.add_parser("tune", help="choose each method's learning rate on one task (validation split, "
                                         "mean over seeds); resumable")
    tuning.add_argument("--task", required=True, choices=list(TASKS))
    tuning.add_argument("--methods", nargs="+", default=["all"], help="'all' or method names (spaces or commas)")
    tuning.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="seeds per rate: a count or a list (default 3)")
    tuning.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of lr_grid_TASK.csv/.json "
                                                                      "(default: data/results)")
    tuning.add_argument("--rates", type=Path, default=LEARNING_RATES_FILE,
                        help="learning-rates file to update (default: ftlab/learning_rates.json)")
    tuning.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    sweeping = sub.add_parser("sweep", help="reference results: every method x seed x budget on one task; resumable")
    sweeping.add_argument("--task", required=True, choices=list(TASKS))
    sweeping.add_argument("--methods", nargs="+", default=["all"], help="'all' or method names (spaces or commas)")
    sweeping.add_argument("--seeds", type=_seeds, default=list(range(5)), help="a count or a list (default 5)")
    sweeping.add_argument("--steps", type=_numbers, help="numbers of steps, e.g. 30,80,150 (default: the budget's)")
    sweeping.add_argument("--train-examples", type=_numbers,
                          help="text tasks: training examples, e.g. 16,64,400 (default: all)")
    sweeping.add_argument("--labels-per-class", type=_numbers,
                          help="image tasks: training images per class, e.g. 1,2,5,20 (default: the budget's)")
    sweeping.add_argument("--out", type=Path, default=RESULTS_DIR,
                          help="folder of sweep_TASK.csv/.json (default: data/results)")
    sweeping.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    from ftlab.estimate import OPTIMIZER_MOMENTS, PRECISIONS
    from ftlab.methods import available

    memory = sub.add_parser("estimate", help="memory of one training step of any model or config, up to 70B, "
                                             "part by part (nothing is allocated)")
    memory.add_argument("--model", required=True,
                        help="a catalogue name (llama-7b, llama-13b, llama-70b, mistral-7b, qwen2-7b, gpt2, gpt2-xl, "
                             "bert-base, minilm, gpt2-tiny, resnet18, ...: see ftlab.estimate.CONFIGS), a folder "
                             "with config.json, or a hub name in the local cache")
    memory.add_argument("--method", default="lora", choices=available(), help="fine-tuning method (default lora)")
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
    elif args.command == "tune":
        tune(tuning, args, sys.argv[1:] if argv is None else argv)
    elif args.command == "sweep":
        sweep(sweeping, args, sys.argv[1:] if argv is None else argv)
    elif args.command == "estimate":
        estimate(memory, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
