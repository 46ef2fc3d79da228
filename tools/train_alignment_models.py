"""Train the SFT model and the reward model that notebooks 11 and 12 start from, and ship them in data/.

    OMP_NUM_THREADS=1 python tools/train_alignment_models.py    # about 5 + 2.5 minutes on one thread

Steps, with the code's current settings (``SFT_SETTINGS``, ``REWARD_SETTINGS``, classroom mode):

1. the SFT model: ``ftlab.align.sft.sft_experiment(**SFT_SETTINGS)`` from the shipped tiny GPT-2
   (data/gpt2_tiny); its weights are rounded to float16, as they are stored, and exact match is
   measured with the stored weights on every held-out test instruction; the greedy answers to the
   first ``CHECK`` test prompts are recorded, and the tests reproduce them;
2. the reward model: ``ftlab.align.reward.reward_experiment`` on that (rounded) SFT model,
   measured the same way (pairwise accuracy on every held-out test pair; the rewards of the first
   ``CHECK`` chosen responses recorded);
3. each is written as ``data/<kind>_tiny/`` (``model.safetensors`` in float16, ``info.json`` with
   settings, SHA-256 and results, and the model card ``README.md``) by ``ftlab.align.cache.save_entry``,
   so ``sft_model()`` and ``reward_model()`` load them while the settings still match.

Run it again (and commit the files) whenever the settings, the base checkpoint or
``CACHE_VERSION`` change: tests/test_align_cache.py fails until then.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ftlab.align.cache import display_path, save_entry
from ftlab.align.common import max_positions, preference_loader
from ftlab.align.generate import generate
from ftlab.align.reward import REWARD_SETTINGS, pairwise_accuracy, reward_cache_settings, reward_experiment, score
from ftlab.align.sft import SFT_SETTINGS, evaluate_exact_match, sft_cache_settings, sft_experiment
from ftlab.config import FAST, mode, pick
from ftlab.tasks.instructions import make_instructions
from ftlab.tasks.preferences import make_preferences
from ftlab.zoo import OFFLINE, file_sha256

ROOT = Path(__file__).resolve().parent.parent
CHECK = 16  # test prompts (SFT) and pairs (reward) whose outputs info.json records for the tests
COMMAND = "OMP_NUM_THREADS=1 python tools/train_alignment_models.py"


def provenance() -> dict:
    """How and where the models were made: command, date, torch version and threads, machine."""
    return {"command": COMMAND, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "mode": mode()}


def as_stored(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its weights rounded to float16 and back: exactly what loading the stored file gives."""
    return model.to(torch.float16).to(torch.float32).eval()


def ship_sft(out: Path, progress: bool = True) -> dict:
    """Train, measure and write the SFT model to ``out / "sft_tiny"``; returns the model, tokenizer and results."""
    start = time.time()
    result = sft_experiment(**SFT_SETTINGS, progress=progress)
    model, tokenizer = as_stored(result["model"]), result["tokenizer"]
    test = make_instructions(SFT_SETTINGS["seed"])["test"]
    test = test[:pick(len(test), 48)]  # FAST mode (the tests) shrinks the evaluation
    prompts = [e["prompt"] for e in test[:CHECK]]
    results = {"before": result["before"], "after_float32": result["after"],
               "after": evaluate_exact_match(model, tokenizer, test), "num_test": len(test),
               "seconds": result["seconds"], "total_seconds": time.time() - start, "loss": result["history"]["loss"],
               "check": {"prompts": prompts, "answers": generate(model, tokenizer, prompts)},
               "provenance": provenance()}
    settings = sft_cache_settings(SFT_SETTINGS)
    folder = out / "sft_tiny"
    if not save_entry(model, folder, "sft", settings, results, dtype=torch.float16,
                      files={"README.md": sft_card(settings, results)}):
        raise SystemExit(f"could not write {folder}")
    return {"model": model, "tokenizer": tokenizer, "settings": settings, "results": results}


def ship_reward(out: Path, sft: dict, progress: bool = True) -> dict:
    """Train, measure and write the reward model (on ``sft``'s model) to ``out / "reward_tiny"``."""
    start = time.time()
    tokenizer = sft["tokenizer"]
    result = reward_experiment(sft["model"], tokenizer, **REWARD_SETTINGS, progress=progress)
    model = as_stored(result["model"])
    pairs = make_preferences(REWARD_SETTINGS["seed"])["test"]
    pairs = pairs[:pick(len(pairs), 48)]
    limit = max_positions(model.backbone)
    by_kind = {kind: pairwise_accuracy(model, preference_loader([p for p in pairs if p["kind"] == kind], tokenizer,
                                                                max_length=limit, batch_size=64))
               for kind in dict.fromkeys(p["kind"] for p in pairs)}
    checked = pairs[:CHECK]
    results = {"before": result["before"], "after_float32": result["after"],
               "after": pairwise_accuracy(model, preference_loader(pairs, tokenizer, max_length=limit, batch_size=64)),
               "by_kind": by_kind, "num_test": len(pairs), "seconds": result["seconds"],
               "total_seconds": time.time() - start, "loss": result["history"]["loss"],
               "check": {"prompts": [p["prompt"] for p in checked], "responses": [p["chosen"] for p in checked],
                         "rewards": score(model, tokenizer, [p["prompt"] for p in checked],
                                          [p["chosen"] for p in checked]).tolist()},
               "provenance": provenance()}
    settings = reward_cache_settings(sft["settings"], REWARD_SETTINGS)
    folder = out / "reward_tiny"
    if not save_entry(model, folder, "reward", settings, results, dtype=torch.float16,
                      files={"README.md": reward_card(settings, sft["settings"], results)}):
        raise SystemExit(f"could not write {folder}")
    return {"model": model, "settings": settings, "results": results}


def _kinds_table(scores: dict, first: str, second: str, first_label: str, second_label: str) -> str:
    kinds = list(scores[second])
    rows = [f"| | {' | '.join(kinds)} |", "|---|" + "---|" * len(kinds)]
    for key, label in ((first, first_label), (second, second_label)):
        rows.append(f"| {label} | " + " | ".join(f"{scores[key][k]:.3f}" for k in kinds) + " |")
    return "\n".join(rows)


def _provenance_lines(p: dict) -> str:
    return (f"- **Command**: `{p['command']}` ({p['mode']} mode), {p['date']}, torch {p['torch']}, "
            f"{p['torch_threads']} torch thread(s), {p['machine']}.")


def sft_card(settings: dict, r: dict) -> str:
    """The model card of data/sft_tiny."""
    p = r["provenance"]
    return f"""# sft_tiny: the SFT model of notebooks 10 to 12

Loaded by `ftlab.align.sft.sft_model()` (and by `reward_model()`, PPO and DPO, which start from it) while its
recorded settings equal the code's current ones; otherwise ftlab trains it and caches the result. Notebook 10
trains it live (`sft_model(source="train")`), since that is its lesson.

- **Base model**: the shipped tiny GPT-2, `data/gpt2_tiny/model.safetensors`, SHA-256 `{settings['base']}`.
- **Training**: `ftlab.align.sft.sft_experiment(**SFT_SETTINGS)`: every weight (`method={settings['method']!r}`),
  {settings['num_steps']} steps of {settings['batch_size']} examples, AdamW at lr {settings['lr']} with
  {settings['warmup_steps']} warm-up steps then cosine decay, seed {settings['seed']}, on the training instructions
  of `ftlab.tasks.instructions` plus mixed demonstrations from `ftlab.tasks.preferences`
  (`with_preferences={settings['with_preferences']}`); {r['seconds']:.0f} s of training.
- **Settings** (as `info.json` records them; `version` is `ftlab.align.cache.CACHE_VERSION`):
  `{json.dumps(settings, sort_keys=True)}`
{_provenance_lines(p)}
- **Stored** as float16 safetensors; the figures below are measured with the stored weights.

## Exact match on the {r['num_test']} held-out test instructions (greedy answers)

{_kinds_table(r, 'before', 'after', 'before SFT (base model)', 'after SFT')}

Measured in float32 right after training: {r['after_float32']['all']:.3f} (on the test prompts that run used).
Training loss {sum(r['loss'][:20]) / 20:.3f} (mean of the first 20 steps) to {sum(r['loss'][-20:]) / 20:.3f}
(last 20). `info.json` holds every figure, the loss of every step and the greedy answers to the first
{len(r['check']['prompts'])} test prompts, which tests/test_align_cache.py reproduces.
"""


def reward_card(settings: dict, sft_settings: dict, r: dict) -> str:
    """The model card of data/reward_tiny."""
    p = r["provenance"]
    kinds = " | ".join(r["by_kind"])
    accuracies = " | ".join(f"{v:.3f}" for v in r["by_kind"].values())
    return f"""# reward_tiny: the reward model of notebooks 11 and 12

Loaded by `ftlab.align.reward.reward_model()` while its recorded settings equal the code's current ones;
otherwise ftlab trains it and caches the result. Notebook 11 trains it live (`reward_model(source="train")`),
since that is its lesson.

- **Base model**: the SFT model of `data/sft_tiny` (settings key `{settings['sft']}`), its transformer with a
  new scalar head `score` (zero at first) read at the last real token; the SFT model started from
  `data/gpt2_tiny/model.safetensors`, SHA-256 `{sft_settings['base']}`.
- **Training**: `ftlab.align.reward.reward_experiment(sft_model, tokenizer, **REWARD_SETTINGS)`: Bradley-Terry
  loss on the training pairs of `ftlab.tasks.preferences`, {settings['num_steps']} steps of
  {settings['batch_size']} pairs, AdamW at lr {settings['lr']} with {settings['warmup_steps']} warm-up steps then
  cosine decay, seed {settings['seed']}; {r['seconds']:.0f} s of training.
- **Settings** (as `info.json` records them): `{json.dumps(settings, sort_keys=True)}`
{_provenance_lines(p)}
- **Stored** as float16 safetensors; the figures below are measured with the stored weights.

## Pairwise accuracy on the {r['num_test']} held-out test pairs

Before training every reward is 0 (accuracy {r['before']:.3f}, ties count one half); after: **{r['after']:.3f}**
(float32 right after training: {r['after_float32']:.3f}).

| {kinds} |
|{'---|' * len(r['by_kind'])}
| {accuracies} |

Training loss {sum(r['loss'][:20]) / 20:.3f} (mean of the first 20 steps) to {sum(r['loss'][-20:]) / 20:.3f}
(last 20). `info.json` holds every figure, the loss of every step and the rewards of the first
{len(r['check']['prompts'])} chosen test responses, which tests/test_align_cache.py reproduces.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "data",
                        help="folder that receives sft_tiny/ and reward_tiny/ (default: data/)")
    args = parser.parse_args()
    if FAST:
        sys.exit("FTLAB_FAST is set: the shipped models are trained in classroom mode; unset FTLAB_FAST")
    base = Path(OFFLINE["gpt2"]["tiny"]()) / "model.safetensors"
    print(f"base checkpoint {display_path(base)}: SHA-256 {file_sha256(base)}")
    sft = ship_sft(args.out)
    print("SFT exact match (stored weights):", json.dumps(sft["results"]["after"]))
    reward = ship_reward(args.out, sft)
    print("reward model pairwise accuracy (stored weights):", round(reward["results"]["after"], 4),
          json.dumps(reward["results"]["by_kind"]))
    print(f"wrote {display_path(args.out / 'sft_tiny')} and {display_path(args.out / 'reward_tiny')}")


if __name__ == "__main__":
    main()
