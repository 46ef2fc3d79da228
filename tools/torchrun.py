"""Run a notebook's experiment, or any Python file, in several processes with torchrun.

    python tools/torchrun.py -n 2 notebooks/00_start_here.ipynb --cells 1-11   # cells 1..11 of a notebook
    python tools/torchrun.py -n 2 my_experiment.py -- --steps 100               # a script and its arguments
    python tools/torchrun.py --print-script notebooks/04_lora.ipynb             # show the script, run nothing

Every process runs the whole script; each ``ftlab.train.fit`` in it trains one model together
(DistributedDataParallel: see ``ftlab.distributed``): gloo on the CPU, NCCL with one GPU per
process on CUDA. A notebook becomes a script of its code cells (all of them, or ``--cells``,
numbered from 0 over all cells as Jupyter shows them), with IPython magics and shell lines
(``%``, ``!``) left out, ``display`` imported and matplotlib drawing to no screen. Only rank 0's
output is shown (``--all-ranks`` shows every process's). Code that writes files writes them
from every process: guard it with ``if ftlab.distributed.is_main():``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PREAMBLE = """\
# made by tools/torchrun.py from {source}
import matplotlib
matplotlib.use("Agg")
from IPython.display import display
"""


def parse_cells(spec: str, num_cells: int) -> list[int]:
    """``"3"``, ``"3-7"`` or ``"1,4-6"`` as a sorted list of cell numbers, each below ``num_cells``."""
    cells = set()
    for part in spec.split(","):
        first, _, last = part.strip().partition("-")
        try:
            start, stop = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"--cells takes numbers and ranges such as 3, 3-7 or 1,4-6; got {spec!r}") from None
        if not 0 <= start <= stop < num_cells:
            raise ValueError(f"--cells {part.strip()!r} is outside the notebook's cells 0-{num_cells - 1}")
        cells.update(range(start, stop + 1))
    return sorted(cells)


def notebook_to_script(path: str | Path, cells: str | None = None) -> str:
    """The code cells of a notebook (all, or those ``cells`` names) as one Python script."""
    notebook = json.loads(Path(path).read_text())
    chosen = parse_cells(cells, len(notebook["cells"])) if cells else range(len(notebook["cells"]))
    parts = [PREAMBLE.format(source=Path(path).name)]
    for i in chosen:
        cell = notebook["cells"][i]
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        parts.append(f"# ---- cell {i}\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def torchrun_command(script: str | Path, nproc: int, args: list[str], all_ranks: bool = False) -> list[str]:
    """The ``torchrun`` command line (as ``python -m torch.distributed.run``) that runs ``script`` in ``nproc``
    processes on this machine (``--standalone``: a free port, no other machines)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    if not all_ranks:
        command.append("--local-ranks-filter=0")
    return command + [str(script), *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Arguments after -- go to the script.")
    parser.add_argument("path", help="a .ipynb notebook or a .py file")
    parser.add_argument("-n", "--nproc", type=int, default=2, help="processes (one GPU each on CUDA); default 2")
    parser.add_argument("--cells", help="a notebook's cells to run, e.g. 3-7 or 1,4-6 (default: all)")
    parser.add_argument("--all-ranks", action="store_true", help="show every process's output, not only rank 0's")
    parser.add_argument("--print-script", action="store_true", help="print the script a notebook becomes and stop")
    argv = sys.argv[1:] if argv is None else argv
    args = argv[argv.index("--") + 1:] if "--" in argv else []  # after --: the script's own arguments
    options = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    path = Path(options.path)
    if not path.is_file() or path.suffix not in (".py", ".ipynb"):
        parser.error(f"{path} is not a .py or .ipynb file")
    if options.nproc < 1:
        parser.error(f"-n must be at least 1, got {options.nproc}")
    if options.cells and path.suffix != ".ipynb":
        parser.error("--cells is for notebooks")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg"}
    if path.suffix == ".py":
        return subprocess.call(torchrun_command(path, options.nproc, args, options.all_ranks), env=env)
    try:
        script = notebook_to_script(path, options.cells)
    except ValueError as err:
        parser.error(str(err))
    if options.print_script:
        print(script)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        script_path = Path(folder) / (path.stem + ".py")
        script_path.write_text(script)
        # the notebook's relative paths (data/, ../data/) resolve from the notebook's folder, as in Jupyter
        return subprocess.call(torchrun_command(script_path, options.nproc, args, options.all_ranks), env=env,
                               cwd=path.resolve().parent)


if __name__ == "__main__":
    sys.exit(main())
