"""tools/time_notebooks.py without running notebooks: the record's format, merging, and the README's table."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("time_notebooks", ROOT / "tools" / "time_notebooks.py")
tn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tn)

MACHINE = {"threads": 1, "torch": "2.14.1", "cores": 2, "cpu": "Test CPU"}
TITLES = {"00_start_here.ipynb": "00 · Start here", "07_loha_lokr_ia3.ipynb": "07 · LoHa, LoKr, IA3 and BitFit"}


def row(notebook, mode, seconds, status="ok", date="2026-12-01", commit="abc1234", load=0.5):
    return {"notebook": notebook, "mode": mode, "seconds": seconds, "status": status, "date": date,
            "commit": commit, "load": load, **MACHINE}


def test_record_round_trips_through_csv_and_json(tmp_path):
    rows = [row("07_loha_lokr_ia3.ipynb", "classroom", 40.2), row("07_loha_lokr_ia3.ipynb", "fast", 15.0)]
    meta = {"command": "python tools/time_notebooks.py --only 07", "machine": MACHINE}
    tn.write_record(tmp_path / "times", rows, meta)
    assert tn.read_rows(tmp_path / "times") == rows
    assert (tmp_path / "times.csv").read_text().splitlines()[0] == ",".join(tn.COLUMNS)
    assert json.loads((tmp_path / "times.json").read_text()) == meta


def test_a_new_run_replaces_only_the_rows_it_measured():
    old = [row("00_start_here.ipynb", "classroom", 87), row("07_loha_lokr_ia3.ipynb", "fast", 15, date="2026-11-01")]
    new = [row("07_loha_lokr_ia3.ipynb", "fast", 12), row("00_start_here.ipynb", "fast", 17)]
    merged = tn.merge_rows(old, new)
    assert [(r["notebook"], r["mode"], r["seconds"]) for r in merged] == [
        ("00_start_here.ipynb", "classroom", 87), ("00_start_here.ipynb", "fast", 17),
        ("07_loha_lokr_ia3.ipynb", "fast", 12)]


def test_readme_table_says_how_it_was_measured_and_marks_gaps_and_failures():
    rows = [row("00_start_here.ipynb", "classroom", 87.4), row("00_start_here.ipynb", "fast", 17.0, date="2026-12-02"),
            row("07_loha_lokr_ia3.ipynb", "classroom", 301, status="failed", load=1.2)]
    block = tn.runtime_block(rows, TITLES)
    how = " ".join(block.split("\n\n")[0].split())
    assert "on 2026-12-01 to 2026-12-02 (commit abc1234)" in how
    assert "1 torch thread, on Test CPU (2 cores), torch 2.14.1;" in how
    assert "the machine's load average before each run was 0.5 to 1.2." in how
    assert max(len(line) for line in block.splitlines() if not line.startswith("|")) <= 118
    assert "| 00 · Start here | 87 s | 17 s |" in block
    assert "| 07 · LoHa, LoKr, IA3 and BitFit | failed after 301 s | not measured |" in block
    assert "| all that ran | 87 s (1 notebook) | 17 s (1 notebook) |" in block


def test_update_readme_replaces_only_the_text_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# ftlab\n\n### Runtimes\n\n", "\n\nThe suite took 388 s.\n"
    readme.write_text(f"{before}{tn.BEGIN}\nold table\n{tn.END}{after}")
    tn.update_readme(readme, "new table")
    assert readme.read_text() == f"{before}{tn.BEGIN}\nnew table\n{tn.END}{after}"
    tn.update_readme(readme, "newer table")
    assert readme.read_text().count("table") == 1


def test_update_readme_refuses_a_readme_without_markers_and_leaves_it_untouched(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# ftlab\nno markers here\n")
    with pytest.raises(ValueError, match="needs the two marker lines"):
        tn.update_readme(readme, "new table")
    assert readme.read_text() == "# ftlab\nno markers here\n"


def test_update_readme_only_rewrites_the_table_from_the_record(tmp_path, capsys):
    tn.write_record(tmp_path / "times", [row("07_loha_lokr_ia3.ipynb", "fast", 14.6)], {})
    readme = tmp_path / "README.md"
    readme.write_text(f"{tn.BEGIN}\n{tn.END}\n")
    assert tn.main(["--update-readme-only", "--record", str(tmp_path / "times"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| 07 · LoHa, LoKr, IA3 and BitFit | not measured | 15 s |" in text
    assert "| 00 · Start here | not measured | not measured |" in text  # every notebook of the course is listed


def test_update_readme_only_without_a_record_says_so(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{tn.BEGIN}\n{tn.END}\n")
    assert tn.main(["--update-readme-only", "--record", str(tmp_path / "none"), "--readme", str(readme)]) == 1
    assert "no record" in capsys.readouterr().err
    assert readme.read_text() == f"{tn.BEGIN}\n{tn.END}\n"


def test_only_picks_one_notebook_per_number_and_refuses_unknown_ones():
    names = ["00_start_here.ipynb", "07_loha_lokr_ia3.ipynb", "12_dpo.ipynb"]
    assert tn.select_notebooks(names, ["12", "07"]) == ["12_dpo.ipynb", "07_loha_lokr_ia3.ipynb"]
    assert tn.select_notebooks(names, None) == names
    with pytest.raises(SystemExit, match="--only 5 matches 0 notebooks"):
        tn.select_notebooks(names, ["5"])


def test_the_repository_readme_has_the_markers_once():
    text = (ROOT / "README.md").read_text()
    assert text.count(tn.BEGIN) == 1 and text.count(tn.END) == 1


def test_notebook_titles_are_the_first_heading_up_to_its_colon():
    titles = tn.notebook_titles(ROOT / "notebooks")
    assert titles["04_lora.ipynb"] == "04 · LoRA"
    assert set(titles) == {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
