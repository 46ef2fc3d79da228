"""Test-session setup shared by tests/ and notebooks/.

FTLAB_FAST is set here, before any notebook kernel starts, so that kernels inherit it
(DESIGN.md, principle 4: FAST mode shrinks, never skips).
"""
import os

os.environ["FTLAB_FAST"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
