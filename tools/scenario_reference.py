"""Reference results for the application scenarios (ftlab.scenarios), classroom sizes, seeds 0, 1, 2.

    python tools/scenario_reference.py qa boxes boxes50 domain instruction translation cells

Writes data/results/scenarios_<name>.csv, one row per run (the experiment's DataFrame).
"""
import sys
import time
from pathlib import Path

from ftlab import scenarios


def cells_experiment(seeds):
    """The glyph ResNet-18 on synthetic cells (ftlab.compare), head only, LoRA and full, at 5, 20 and 50 labels per
    class, 60 steps; the same full fine-tuning from random weights (``model="scratch"``)."""
    import pandas as pd

    from ftlab.compare import compare

    frames = []
    for k in (5, 20, 50):
        for model in (None, "scratch"):
            methods = ["freeze", "lora", "full"] if model is None else ["full"]
            df = compare(methods, task="cells", num_steps=60, labels_per_class=k, seeds=seeds, model=model,
                         measure=False)
            df["labels_per_class"], df["model"] = k, model or "glyphs"
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


EXPERIMENTS = {
    "cells": cells_experiment,
    "qa": lambda seeds: scenarios.qa_experiment(seeds=seeds),
    "boxes": lambda seeds: scenarios.boxes_experiment(labels_per_class=[10], seeds=seeds),
    "boxes50": lambda seeds: scenarios.boxes_experiment(labels_per_class=[50], seeds=seeds),
    "domain": lambda seeds: scenarios.domain_pretraining_experiment(seeds=seeds),
    "instruction": lambda seeds: scenarios.domain_instruction_experiment(seeds=seeds),
    "translation": lambda seeds: scenarios.translation_experiment(seeds=seeds),
}

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "data" / "results"
    for name in sys.argv[1:] or list(EXPERIMENTS):
        start, cpu = time.perf_counter(), time.process_time()
        df = EXPERIMENTS[name]((0, 1, 2))
        df.to_csv(out / f"scenarios_{name}.csv", index=False)
        print(f"{name}: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s cpu", flush=True)
        print(df.drop(columns=[c for c in ("total", "batch_size") if c in df]).to_string(), flush=True)
