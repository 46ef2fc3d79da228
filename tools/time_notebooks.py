"""Time every notebook as a new user would run it, and write the README's runtime table from the record.

    python tools/time_notebooks.py                      # every notebook, classroom and FAST mode
    python tools/time_notebooks.py --mode fast --only 07 --only 12
    python tools/time_notebooks.py --update-readme-only # rewrite the README's table from the record

Each notebook runs alone: in a fresh ``git clone`` of HEAD (uncommitted changes are not timed), with an empty
model cache (``$FTLAB_CACHE`` in a new temporary folder), a fixed number of torch threads, under
``jupyter nbconvert --execute``; the time is the wall time of that command, kernel start included.

The record is data/results/notebook_times.csv (one row per notebook and mode; a new run replaces the rows it
measured and keeps the others) and data/results/notebook_times.json (how it was measured, on what machine).
The README's table sits between the two marker comments below and is rewritten from the record.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "data" / "results" / "notebook_times"
README = REPO / "README.md"
BEGIN = "<!-- notebook-times:begin (written by tools/time_notebooks.py from data/results/notebook_times.csv) -->"
END = "<!-- notebook-times:end -->"
MODES = ("classroom", "fast")
COLUMNS = ["notebook", "mode", "seconds", "status", "date", "commit", "load", "threads", "torch", "cores", "cpu"]
KERNEL = "ftlab-timing"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both", help="run mode(s) to time (default both)")
    parser.add_argument("--only", action="append", metavar="NN",
                        help="time only the notebook whose name starts with NN (repeatable)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch / OpenMP threads per notebook (default: every core, as a notebook run alone gets)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a single cell may run (default 1800)")
    parser.add_argument("--update-readme-only", action="store_true", help="rewrite the README's table, run nothing")
    parser.add_argument("--record", type=Path, default=RECORD, help="record path without extension")
    parser.add_argument("--readme", type=Path, default=README, help="README to rewrite")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")

    failed = []
    if not args.update_readme_only:
        modes = MODES if args.mode == "both" else (args.mode,)
        names = select_notebooks(sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")), args.only)
        if git("status", "--porcelain", "--untracked-files=no"):
            print("note: the working tree has uncommitted changes; this times HEAD", file=sys.stderr)
        command = "python tools/time_notebooks.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        rows, machine = time_notebooks(names, modes, threads=args.threads, timeout=args.timeout)
        merged = merge_rows(read_rows(args.record), rows)
        write_record(args.record, merged, provenance(command, machine, args.threads))
        print(f"wrote {args.record.with_suffix('.csv')} and .json")
        failed = [f"{row['notebook']} ({row['mode']})" for row in rows if row["status"] != "ok"]
    rows = read_rows(args.record)
    if not rows:
        print(f"no record at {args.record.with_suffix('.csv')}: time some notebooks first", file=sys.stderr)
        return 1
    update_readme(args.readme, runtime_block(rows, notebook_titles(REPO / "notebooks")))
    print(f"rewrote the runtime table in {args.readme}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def select_notebooks(names: list[str], only: list[str] | None) -> list[str]:
    """The notebooks to time: all, or those whose names start with one of ``only`` (each must match one)."""
    if not only:
        return names
    chosen = []
    for prefix in only:
        matches = [name for name in names if name.startswith(prefix)]
        if len(matches) != 1:
            raise SystemExit(f"--only {prefix} matches {len(matches)} notebooks; give a number such as 07 "
                             f"(notebooks: {', '.join(n[:2] for n in names)})")
        chosen += matches
    return chosen


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def time_notebooks(names: list[str], modes, *, threads: int, timeout: int) -> tuple[list[dict], dict]:
    """Run each notebook in each mode from a fresh clone with an empty cache; one row per run, and the machine."""
    rows, machine = [], None
    with tempfile.TemporaryDirectory(prefix="ftlab-times-") as tmp:
        tmp = Path(tmp)
        write_kernel(tmp / "jupyter")
        for name in names:
            for mode in modes:
                work = tmp / f"{name}-{mode}"
                git("clone", "--quiet", str(REPO), str(work / "clone"), cwd=tmp)
                commit = git("rev-parse", "--short", "HEAD", cwd=work / "clone")  # HEAD may move during a long run
                env = notebook_env(work, mode, threads, tmp / "jupyter")
                machine = machine or machine_info(env)
                print(f"{name} ({mode}) ...", end=" ", flush=True)
                load = round(os.getloadavg()[0], 1)  # other work on the machine slows the notebook down
                seconds, ok, log = run_notebook(work / "clone" / "notebooks" / name, work, env, timeout)
                print(f"{seconds:.0f} s" + ("" if ok else f" FAILED\n{log[-2000:]}"), flush=True)
                rows.append({"notebook": name, "mode": mode, "seconds": round(seconds, 1),
                             "status": "ok" if ok else "failed", "date": datetime.now(timezone.utc).date().isoformat(),
                             "commit": commit, "load": load, **machine})
    return rows, machine


def write_kernel(jupyter_dir: Path) -> None:
    """A kernel spec that runs this Python, so the notebooks use the same interpreter and packages."""
    spec = jupyter_dir / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ftlab timing", "language": "python"}))


def notebook_env(work: Path, mode: str, threads: int, jupyter_dir: Path) -> dict:
    """The environment of one run: the clone's ftlab, an empty model cache, the mode and the thread count."""
    env = {key: value for key, value in os.environ.items() if key != "FTLAB_FAST"}
    cache = work / "cache"
    cache.mkdir(parents=True)
    env.update(PYTHONPATH=str(work / "clone"), FTLAB_CACHE=str(cache), JUPYTER_PATH=str(jupyter_dir),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    if mode == "fast":
        env["FTLAB_FAST"] = "1"
    return env


def run_notebook(path: Path, work: Path, env: dict, timeout: int) -> tuple[float, bool, str]:
    """``jupyter nbconvert --execute`` one notebook; its wall time, whether it succeeded, and its output."""
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               f"--ExecutePreprocessor.timeout={timeout}", f"--ExecutePreprocessor.kernel_name={KERNEL}",
               "--output-dir", str(work / "executed"), str(path)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=path.parent, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode == 0, done.stdout + done.stderr


def machine_info(env: dict) -> dict:
    """Cores, CPU model, and the torch version and thread count a notebook kernel gets in ``env``."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.get_num_threads())"],
                           env=env, check=True, capture_output=True, text=True).stdout.split()
    return {"threads": int(probe[1]), "torch": probe[0], "cores": os.cpu_count(), "cpu": cpu_model()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(command: str, machine: dict, threads: int) -> dict:
    return {"command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "HEAD"), "machine": machine, "settings": {
                "threads": threads, "clone": "fresh git clone of HEAD per run", "cache": "empty FTLAB_CACHE per run",
                "runner": "jupyter nbconvert --to notebook --execute", "time": "wall time, kernel start included"}}


def read_rows(record: Path) -> list[dict]:
    path = record.with_suffix(".csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(rows[0]) != set(COLUMNS):
        raise ValueError(f"{path} has columns {list(rows[0])}, expected {COLUMNS}")
    return [{**row, "seconds": float(row["seconds"]), "load": float(row["load"]), "threads": int(row["threads"]),
             "cores": int(row["cores"])} for row in rows]


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with the (notebook, mode) pairs of ``new`` replaced, sorted by notebook then mode."""
    keyed = {(row["notebook"], row["mode"]): row for row in old}
    keyed.update({(row["notebook"], row["mode"]): row for row in new})
    return [keyed[key] for key in sorted(keyed, key=lambda k: (k[0], MODES.index(k[1])))]


def write_record(record: Path, rows: list[dict], meta: dict) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    record.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def notebook_titles(folder: Path) -> dict[str, str]:
    """``{"04_lora.ipynb": "04 · LoRA"}``: each notebook's first heading, up to its colon."""
    titles = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        first = "".join(json.loads(path.read_text())["cells"][0]["source"]).splitlines()[0]
        titles[path.name] = first.lstrip("# ").split(":")[0].strip()
    return titles


def runtime_block(rows: list[dict], titles: dict[str, str]) -> str:
    """The README's runtime section: how it was measured, then one line per notebook (classroom, FAST)."""
    def distinct(key: str) -> str:
        return " / ".join(sorted({str(row[key]) for row in rows}))

    dates = sorted({row["date"] for row in rows})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    loads = sorted(row["load"] for row in rows)
    threads = distinct("threads")
    how = (f"Measured by `python tools/time_notebooks.py` on {when} (commit {distinct('commit')}): each notebook run "
           f"alone from a fresh clone with an empty model cache, `jupyter nbconvert --execute`, wall time including "
           f"the kernel start, {threads} torch thread{'' if threads == '1' else 's'}, on {distinct('cpu')} "
           f"({distinct('cores')} cores), torch {distinct('torch')}; the machine's load average before each run was "
           f"{loads[0]:g} to {loads[-1]:g}.")
    lines = [*textwrap.wrap(how, width=118), "", "| notebook | classroom | FAST |", "| --- | --- | --- |"]
    by_key = {(row["notebook"], row["mode"]): row for row in rows}
    for name in sorted({row["notebook"] for row in rows} | set(titles)):
        cells = []
        for mode in MODES:
            row = by_key.get((name, mode))
            if row is None:
                cells.append("not measured")
            elif row["status"] == "ok":
                cells.append(f"{row['seconds']:.0f} s")
            else:
                cells.append(f"failed after {row['seconds']:.0f} s")
        lines.append(f"| {titles.get(name, name.removesuffix('.ipynb'))} | {cells[0]} | {cells[1]} |")
    totals = []
    for mode in MODES:
        times = [row["seconds"] for row in rows if row["mode"] == mode and row["status"] == "ok"]
        totals.append(f"{sum(times):.0f} s ({len(times)} notebook{'' if len(times) == 1 else 's'})" if times
                      else "not measured")
    lines.append(f"| all that ran | {totals[0]} | {totals[1]} |")
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    """Replace what lies between the two markers of ``readme`` with ``block`` (the markers stay)."""
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme} needs the two marker lines, once each and in this order:\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
