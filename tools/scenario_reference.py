"""Reference results of the application scenarios (ftlab.scenarios.REFERENCES), classroom sizes, seeds 0, 1, 2
(the localisation learning-rate grid, boxes_lr: seed 0).

    python tools/scenario_reference.py                                   # all, in this order:
    python tools/scenario_reference.py qa domain instruction boxes_lr boxes translation

Writes data/results/scenarios_<name>.csv (one row per run) and .json (its provenance), replacing earlier files.
The medical-style imaging scenario (cells) is notebook 13's, from ftlab.compare with its own reference results.
"""
import sys
import time

from ftlab import scenarios

if __name__ == "__main__":
    names = sys.argv[1:] or list(scenarios.REFERENCES)
    for name in names:
        scenarios.reference_paths(name)  # an unknown name fails here, before any run
    for name in names:
        start, cpu = time.perf_counter(), time.process_time()
        df = scenarios.make_reference(name, command=f"python tools/scenario_reference.py {name}")
        print(f"{name}: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s cpu", flush=True)
        print(df.drop(columns=[c for c in ("total", "batch_size") if c in df]).to_string(), flush=True)
