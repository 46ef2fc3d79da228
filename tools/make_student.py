"""Write notebooks/student/ from the main notebooks (solutions replaced by stubs, no test plumbing).

    python tools/make_student.py          # (re)write the student notebooks
    python tools/make_student.py --check  # exit 1 when they are out of date

A student notebook whose main notebook no longer exists is stale too: it is removed (or, with --check, reported).
"""
import argparse
import sys
from pathlib import Path

import nbformat

from ftlab.student import student_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that notebooks/student/ is up to date")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the folder of the main notebooks")
    args = parser.parse_args(argv)
    main_notebooks = sorted(args.notebooks.glob("[0-9][0-9]_*.ipynb"))
    student = args.notebooks / "student"
    stale, orphans = [], []
    for path in main_notebooks:
        text = nbformat.writes(student_notebook(nbformat.read(path, as_version=4))) + "\n"
        target = student / path.name
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not args.check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text)
    names = {path.name for path in main_notebooks}
    for target in sorted(student.glob("*.ipynb")):
        if target.name not in names:
            orphans.append(target)
            if not args.check:
                target.unlink()
    if args.check and (stale or orphans):
        print("out of date (run python tools/make_student.py):", *stale, sep="\n  ")
        if orphans:
            print("without a main notebook:", *orphans, sep="\n  ")
        return 1
    print("up to date" if args.check else f"wrote {len(stale)} student notebook(s), removed {len(orphans)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
