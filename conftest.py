"""Test-session setup shared by tests/ and notebooks/.

FTLAB_FAST is set here, before any notebook kernel starts, so that kernels inherit it
(DESIGN.md, principle 4: FAST mode shrinks, never skips).
"""
import os

os.environ["FTLAB_FAST"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `pytest -n 2` (pytest-xdist) runs two worker processes: each gets its share of the cores for torch and for the
# notebook kernels it starts, instead of every process spreading over every core and the two fighting for them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
