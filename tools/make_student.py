"""Write notebooks/student/ from the main notebooks (solutions replaced by stubs).

    python tools/make_student.py          # (re)write the student notebooks
    python tools/make_student.py --check  # exit 1 when they are out of date
"""
import argparse
import sys
from pathlib import Path

import nbformat

from ftlab.student import student_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that notebooks/student/ is up to date")
    args = parser.parse_args()
    stale = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        text = nbformat.writes(student_notebook(nbformat.read(path, as_version=4))) + "\n"
        target = NOTEBOOKS / "student" / path.name
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not args.check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text)
    if args.check and stale:
        print("out of date (run python tools/make_student.py):", *stale, sep="\n  ")
        return 1
    print(("up to date" if args.check else f"wrote {len(stale)} student notebook(s)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
