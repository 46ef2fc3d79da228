"""Write the reference results of notebook 02: every freezing recipe on digits, five seeds, with provenance.

    OMP_NUM_THREADS=1 python tools/freezing_results.py              # data/results/freezing/freezing_digits.csv
    OMP_NUM_THREADS=1 python tools/freezing_results.py --seeds 5 6  # more seeds into the same file

``ftlab.transfer.write_freezing_results`` does the work: ``compare_freezing`` with all of ``FREEZE_RECIPES`` under
``FREEZING_BUDGET`` (60 steps, batch 32, top lr 1e-3, all training digits), one seed at a time, appended to the CSV;
the JSON file beside it records the command, ftlab's commit, torch version and threads, the date, the checkpoint's
SHA-256 and the settings. An interrupted run resumes with the seeds still missing. About 90 s of CPU per seed.
"""
import argparse
import sys
from pathlib import Path

import torch

from ftlab.config import mode
from ftlab.transfer import FREEZING_RESULTS, check_freezing_results, write_freezing_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds to run (default 0-4)")
    parser.add_argument("--out", type=Path, default=FREEZING_RESULTS,
                        help="the CSV to write (default: the shipped one)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python tools/freezing_results.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_freezing_results(args.seeds, path=args.out, command=command.strip())
    if mode() == "FAST":  # a FAST file is a check of the command, never a reference
        return 0
    problems = check_freezing_results(args.out)
    print("\n".join(problems) if problems else f"{args.out.name}: current")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
