"""Command line: ``python -m ftlab info``, ``python -m ftlab bench lora``,
``python -m ftlab compare --task sentiment --methods all --seeds 3``,
``python -m ftlab tune --task sentiment``, ``python -m ftlab sweep --task digits --labels-per-class 1,2,5,20``."""
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

    from ftlab.compare import compare as run_compare, default_budget, summarize, summary_table
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
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, e.g. 30,80,150; got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}")
    return values


def _seeds(text: str) -> list[int]:
    """argparse type: "3" -> seeds [0, 1, 2]; "4,7" -> seeds [4, 7]."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seeds (3 means 0,1,2) or seeds separated by commas; "
                                         f"got {text!r}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
