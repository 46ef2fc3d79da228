"""Reference results of notebook 14 (Training well): overfitting with few labels, over seeds.

    python tools/overfitting.py                      # both parts into data/results/ (about 35 CPU-minutes)
    python tools/overfitting.py freezing --seeds 5   # head only / last block / full on digits, 1-20 labels per class
    python tools/overfitting.py freezing --seeds 3 --labels 1 2 5   # fewer seeds and label counts
    python tools/overfitting.py schedules --seeds 3  # weight decay (digits) and warm-up (sentiment)
    FTLAB_FAST=1 python tools/overfitting.py --out /tmp/overfitting   # a quick run of every path, elsewhere

Writes data/results/overfitting_digits.csv and overfitting_schedules.csv, each with a JSON file of provenance
(command, ftlab commit, checkpoints' SHA-256, torch version and threads, date, settings); see ftlab.overfitting.
An interrupted command run again picks up where it stopped.
"""
from __future__ import annotations

import argparse
import shlex
import sys

import torch

from ftlab.overfitting import LABELS_PER_CLASS, freezing_sweep, load_results, schedules_sweep
from ftlab.sweep import RESULTS_DIR

PARTS = ("freezing", "schedules")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="part", help=f"which parts: {', '.join(PARTS)} (default: both)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: 5 freezing, 3 schedules)")
    parser.add_argument("--labels", type=int, nargs="+", default=None,
                        help="labels per class of the freezing part (default: 1 2 5 20)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder of the results files (default data/results)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    options = parser.parse_args(argv)
    unknown = [part for part in options.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if options.seeds is not None and options.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {options.seeds}")
    if options.labels is not None and min(options.labels) < 1:
        parser.error(f"--labels must be at least 1 each, got {options.labels}")
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    command = "python tools/overfitting.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    full_lr = None
    for part in options.parts or PARTS:
        if part == "freezing":
            _, rates = freezing_sweep(list(range(options.seeds or 5)), options.labels or LABELS_PER_CLASS,
                                      out=options.out, command=command.strip())
            full_lr = rates["full"]["lr"]
            print("chosen rates:", {name: entry["lr"] for name, entry in rates.items()})
        else:
            if full_lr is None:
                full_lr = load_results("digits", options.out).attrs["provenance"]["learning_rates"]["full"]["lr"]
            rows = schedules_sweep(list(range(options.seeds or 3)), full_lr=full_lr, out=options.out,
                                   command=command.strip())
            print(f"schedules: {len(rows)} rows")


if __name__ == "__main__":
    main()
