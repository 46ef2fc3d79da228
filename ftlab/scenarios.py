"""Where fine-tuning is applied: one experiment per scenario, each a function returning a DataFrame.

* ``qa_experiment``: extractive question answering with MiniLM and a span head
  (``ftlab.tasks.qa``): full fine-tuning, LoRA and adapters, and the same network from random
  weights; SQuAD exact match and F1 on passages about people and towns never seen in training.
* ``domain_pretraining_experiment``: the "industry-specific language model": continued
  pretraining of the tiny GPT-2 on clinic notes (``ftlab.tasks.domain``) with LoRA, LoRA with
  trainable embeddings, or every weight; perplexity on held-out notes and on held-out general
  text before and after (adaptation and forgetting).
* ``domain_instruction_experiment``: instruction tuning on questions about notes and drugs, from
  the general model and from the domain-adapted one; exact match per kind of question.
* ``boxes_experiment``: object localisation, one digit on a cluttered canvas
  (``ftlab.tasks.boxes``), with the glyph ResNet-18: head only, LoRA on the convolutions, full,
  and from scratch; class accuracy, mean IoU and accuracy at IoU 0.5, at few labels per class.
* ``translation_experiment``: the tiny GPT-2 instruction-tuned to translate between English and
  Lindish, a rule-based made-up language (``ftlab.tasks.translation``); exact match and chrF.

Every experiment runs each method on a fresh copy of the same model, once per seed in
``seeds``, with the same data and number of steps; one row per run with the settings, the
scores, the trainable and total parameter counts, and the training time (wall-clock
``seconds`` and ``cpu seconds``, the process's CPU time, which other programs on the machine
do not inflate). Classroom sizes by default, shrunk in FAST mode (``ftlab.config.pick``).
"""
from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch.utils.data import Subset

from ftlab.config import mode, pick, seed_everything
from ftlab.measure import count_parameters
from ftlab.methods import apply
from ftlab.sweep import (
    RESULTS_DIR,
    check_writable,
    checkpoint_hashes,
    load_results_file,
    provenance_problems,
    record_provenance,
    refuse_fast_writes,
)
from ftlab.train import fit
from ftlab.validate import check_positive_int

# The sizes of each experiment when an argument is not given: (classroom, FAST). The classroom sizes made the
# reference results (``make_reference``); their provenance records them, so changing one makes the shipped file stale.
DEFAULTS: dict[str, tuple[dict, dict]] = {
    "qa": ({"num_steps": 60, "batch_size": 16, "sizes": {"train": 2000, "validation": 8, "test": 200}},
           {"num_steps": 2, "batch_size": 4, "sizes": {"train": 16, "validation": 4, "test": 8}}),
    "domain": ({"num_steps": 150, "batch_size": 8, "block_size": 128, "num_eval": 50, "sizes": None},
               {"num_steps": 2, "batch_size": 2, "block_size": 32, "num_eval": 4,
                "sizes": {"train": 40, "validation": 2, "test": 4}}),
    "instruction": ({"pretraining_steps": 150, "pretraining_batch_size": 8, "block_size": 128, "num_steps": 200,
                     "batch_size": 16, "num_test": 150, "corpus_sizes": None, "question_sizes": None},
                    {"pretraining_steps": 2, "pretraining_batch_size": 2, "block_size": 32, "num_steps": 2,
                     "batch_size": 2, "num_test": 5, "corpus_sizes": {"train": 40, "validation": 2, "test": 2},
                     "question_sizes": {"train": 20, "validation": 5, "test": 5}}),
    "boxes": ({"labels_per_class": [10, 50], "num_steps": 100, "batch_size": 32, "num_test": None},
              {"labels_per_class": [1], "num_steps": 2, "batch_size": 4, "num_test": 8}),
    "translation": ({"num_steps": 300, "batch_size": 16, "num_test": 300, "sizes": None},
                    {"num_steps": 2, "batch_size": 2, "num_test": 4,
                     "sizes": {"train": 20, "validation": 2, "test": 4}}),
}


def defaults(name: str) -> dict:
    """The sizes of experiment ``name`` in the current mode (``DEFAULTS``)."""
    return pick(*DEFAULTS[name])


def _check_runs(methods: Sequence[str] | None, known: dict[str, dict], seeds: Sequence[int]) -> list[str]:
    """The method labels to run (all of ``known`` when None), checked with the seeds before anything trains."""
    labels = list(known) if methods is None else list(methods)
    if not labels:
        raise ValueError(f"methods is empty; choose some of: {', '.join(known)}")
    unknown = [m for m in labels if m not in known]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r} for this scenario; choose from: {', '.join(known)}")
    if not list(seeds) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of whole numbers, got {seeds!r}")
    return labels


def _each_run(labels: list[str], known: dict[str, dict], seeds: Sequence[int], make_data):
    """Every run of an experiment as ``(seed, label, options, data)``, seed by seed: ``make_data(seed)`` draws the
    seed's data once for all its methods, and each run starts from ``seed_everything(seed)``, so a method's run does
    not depend on which methods ran before it."""
    for seed in seeds:
        data = make_data(seed)
        for label in labels:
            seed_everything(seed)
            yield seed, label, known[label], data


def _apply(model, options: dict, head: list[str]):
    """``ftlab.apply`` with the method of ``options``; ``head`` trains in full (``full`` trains everything anyway,
    ``freeze`` keeps its top layer group, the head, trainable)."""
    method = options["method"]
    extra = {k: v for k, v in options.items() if k not in ("method", "lr", "pretrained")}
    if method in ("full", "freeze"):
        return apply(model, method, **extra)
    extra = {"modules_to_save": head, **extra}
    if not extra["modules_to_save"]:  # nothing to train in full: apply refuses an empty list
        del extra["modules_to_save"]
    return apply(model, method, **extra)


# ---------------------------------------------------------------- question answering

# Learning rates: full fine-tuning of MiniLM uses BERT's usual range; LoRA and adapters a larger rate, chosen from
# 1e-3 and 5e-3 by one 60-step run each (seed 0): 5e-3. "lora" has peft's default targets for BERT (query, value);
# "lora qkvo" adds the key and the attention output, which matters here: matching a question's words to the
# passage's happens in the attention scores, made of queries and keys.
QA_METHODS: dict[str, dict] = {
    "full": {"method": "full", "lr": 1e-4},
    "lora": {"method": "lora", "lr": 5e-3, "r": 8},
    "lora qkvo": {"method": "lora", "lr": 5e-3, "r": 8, "targets": ["query", "key", "value", "attention.output.dense"]},
    "adapter": {"method": "adapter", "lr": 5e-3},
    "random init": {"method": "full", "lr": 1e-4, "pretrained": False},
}


def qa_experiment(methods: Sequence[str] | None = None, *, seeds: Sequence[int] = (0, 1, 2),
                  num_steps: int | None = None, batch_size: int | None = None, sizes: dict | None = None,
                  progress: bool = False) -> pd.DataFrame:
    """Fine-tune MiniLM with a span head on ``ftlab.tasks.qa`` per method and seed; SQuAD scores on the test split.

    ``methods``: labels of ``QA_METHODS`` (default: all): ``"full"``, ``"lora"``, ``"adapter"``
    (pretrained MiniLM) and ``"random init"`` (the same architecture from random weights, fully
    trained). Each seed draws its own data (``make_qa(seed)``), head and batch order.
    Columns: ``task``, ``method``, ``seed``, ``num_steps``, ``batch_size``, ``lr``,
    ``exact match``, ``f1`` (test, in [0, 1]), ``em town`` ... ``em count`` (exact match per
    question kind), ``trainable``, ``total``, ``seconds`` and ``cpu seconds`` (training: wall-clock time, and
    the CPU time of this process, which other programs on the machine do not inflate).
    """
    from ftlab.tasks.qa import evaluate_qa, load_span_qa, make_qa, qa_loader

    labels = _check_runs(methods, QA_METHODS, seeds)
    default = defaults("qa")
    num_steps = check_positive_int("num_steps", num_steps or default["num_steps"])
    batch_size = check_positive_int("batch_size", batch_size or default["batch_size"])
    sizes = sizes or default["sizes"]
    rows = []
    for seed, label, options, data in _each_run(labels, QA_METHODS, seeds, lambda seed: make_qa(seed, sizes)):
        model, tokenizer = load_span_qa(pretrained=options.get("pretrained", True), seed=seed)
        model = _apply(model, options, ["qa_outputs"])
        train = qa_loader(data["train"], tokenizer, batch_size=batch_size, shuffle=True, seed=seed)
        start, cpu = time.perf_counter(), time.process_time()
        fit(model, train, num_steps=num_steps, lr=options["lr"], progress=progress)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        scores = evaluate_qa(model, tokenizer, data["test"])
        counts = count_parameters(model)
        rows.append({"task": "qa", "method": label, "seed": seed, "num_steps": num_steps,
                     "batch_size": batch_size, "lr": options["lr"], "exact match": scores.pop("exact_match"),
                     "f1": scores.pop("f1"), **scores, "trainable": counts["trainable"],
                     "total": counts["total"], "seconds": seconds, "cpu seconds": cpu})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- a domain-specific language model

# Continued pretraining on clinic notes: LoRA on every linear layer of the blocks; the same with the token
# embeddings and the output layer trained in full (untied copies: modules_to_save); or every weight. Why the
# embeddings: about 40% of the tokens of a clinic note (digits, "/", "%", word pieces such as "li" or "ic") never
# occur in the GPT-2's pretraining text, so their embeddings were never trained, and LoRA cannot change them.
DOMAIN_METHODS: dict[str, dict] = {
    "lora": {"method": "lora", "lr": 2e-3, "r": 8, "targets": ["c_attn", "c_proj", "c_fc"]},
    "lora + embeddings": {"method": "lora", "lr": 2e-3, "r": 8, "targets": ["c_attn", "c_proj", "c_fc"],
                          "modules_to_save": ["wte", "lm_head"]},
    "full": {"method": "full", "lr": 1e-3},
}


@functools.lru_cache(maxsize=1)
def general_test_documents() -> tuple[str, ...]:
    """The test split the shipped tiny GPT-2 was evaluated on (data/gpt2_tiny/README.md: 500 documents,
    perplexity 2.031): ``make_corpus(seed=0)`` with the pretraining sizes, so no pretraining document is in it."""
    from ftlab.tasks.corpus import make_corpus

    return tuple(make_corpus(0, sizes={"train": 50000, "validation": 500, "test": 500})["test"])


def language_scores(model, tokenizer, domain_docs: Sequence[str], general_docs: Sequence[str]) -> dict[str, float]:
    """Perplexity on domain and on general documents, and ``fact_recall`` (which drug treats which condition)."""
    from ftlab.lm import lm_loader, perplexity
    from ftlab.tasks.domain import fact_recall

    return {"domain ppl": perplexity(model, lm_loader(domain_docs, tokenizer, batch_size=32)),
            "general ppl": perplexity(model, lm_loader(general_docs, tokenizer, batch_size=32)),
            "fact recall": fact_recall(model, tokenizer)}


def continue_pretraining(model, tokenizer, documents: Sequence[str], options: dict, *, num_steps: int,
                         batch_size: int, block_size: int, seed: int, progress: bool = False):
    """Apply ``options["method"]`` and train ``model`` on ``documents`` as packed next-token prediction; returns it."""
    from ftlab.lm import packed_loader

    model = _apply(model, options, [])
    data = packed_loader(documents, tokenizer, block_size=block_size, batch_size=batch_size, shuffle=True, seed=seed)
    fit(model, data, num_steps=num_steps, lr=options["lr"], warmup_steps=max(1, num_steps // 20), max_grad_norm=1.0,
        progress=progress)
    return model


def domain_pretraining_experiment(methods: Sequence[str] | None = None, *, seeds: Sequence[int] = (0, 1, 2),
                                  num_steps: int | None = None, batch_size: int | None = None,
                                  block_size: int | None = None, num_eval: int | None = None,
                                  progress: bool = False) -> pd.DataFrame:
    """Continued pretraining of the tiny GPT-2 on clinic notes (``ftlab.tasks.domain``), per method and seed.

    Perplexity on held-out domain documents (the domain corpus's test split) and on held-out
    general documents (``general_test_documents``, the GPT-2's own test split) before and after:
    the first should fall, the second shows what general ability is lost (forgetting, as in
    ``ftlab.continual``); and ``fact recall`` (``ftlab.tasks.domain.fact_recall``: which drug
    treats which condition, a 16-way choice). ``methods``: labels of ``DOMAIN_METHODS`` (default:
    all). Columns: ``task``, ``method``, ``seed``, ``num_steps``, ``batch_size``, ``block_size``,
    ``lr``, ``domain ppl before``, ``general ppl before``, ``fact recall before``, the same three
    ``after``, ``trainable``, ``total``, ``seconds``, ``cpu seconds``.
    """
    from ftlab.tasks.domain import make_domain_corpus
    from ftlab.zoo import load_gpt2

    labels = _check_runs(methods, DOMAIN_METHODS, seeds)
    default = defaults("domain")
    num_steps = check_positive_int("num_steps", num_steps or default["num_steps"])
    batch_size = check_positive_int("batch_size", batch_size or default["batch_size"])
    block_size = check_positive_int("block_size", block_size or default["block_size"])
    num_eval = check_positive_int("num_eval", num_eval or default["num_eval"])
    general = general_test_documents()[:num_eval]
    rows = []
    sizes = default["sizes"] and {**default["sizes"], "test": max(num_eval, default["sizes"]["test"])}
    for seed, label, options, corpus in _each_run(labels, DOMAIN_METHODS, seeds,
                                                  lambda seed: make_domain_corpus(seed, sizes=sizes)):
        domain = corpus["test"][:num_eval]
        model, tokenizer = load_gpt2()
        before = language_scores(model, tokenizer, domain, general)
        start, cpu = time.perf_counter(), time.process_time()
        model = continue_pretraining(model, tokenizer, corpus["train"], options, num_steps=num_steps,
                                     batch_size=batch_size, block_size=block_size, seed=seed, progress=progress)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        after = language_scores(model, tokenizer, domain, general)
        counts = count_parameters(model)
        rows.append({"task": "domain lm", "method": label, "seed": seed, "num_steps": num_steps,
                     "batch_size": batch_size, "block_size": block_size, "lr": options["lr"],
                     **{f"{name} before": value for name, value in before.items()},
                     **{f"{name} after": value for name, value in after.items()},
                     "trainable": counts["trainable"], "total": counts["total"], "seconds": seconds,
                     "cpu seconds": cpu})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- object localisation

# The glyph ResNet-18 with a class-and-box head: head only ("freeze": the convolutions stay as pretrained), LoRA on
# every convolution of layer1..layer4, every weight, and every weight from random initialisation. Each rate is the
# one of BOX_LR_GRID with the best accuracy at IoU 0.5 on the validation split (seed 0, 10 labels per class:
# boxes_lr_grid, shipped as data/results/scenarios_boxes_lr.csv; check_reference checks the choice). The rates first
# used here (head 1e-2, LoRA 3e-3, full 1e-3) placed almost no box right with the head alone: every box went into the
# sigmoid's flat tail. For the head and LoRA the chosen rate is the lowest of their grids (3e-4 and 1e-3 scored
# almost the same); a lower one was not tried.
BOX_LR_GRID: dict[str, list[float]] = {"freeze": [3e-4, 1e-3, 3e-3, 1e-2], "lora": [3e-4, 1e-3, 3e-3, 1e-2],
                                       "full": [1e-4, 3e-4, 1e-3, 3e-3], "scratch": [1e-4, 3e-4, 1e-3, 3e-3]}
BOX_METHODS: dict[str, dict] = {
    "freeze": {"method": "freeze", "lr": 3e-4},
    "lora": {"method": "lora", "lr": 3e-4, "r": 8},
    "full": {"method": "full", "lr": 3e-4},
    "scratch": {"method": "full", "lr": 1e-3, "pretrained": False},
}


def boxes_experiment(methods: Sequence[str] | None = None, *, labels_per_class: Sequence[int] | None = None,
                     seeds: Sequence[int] = (0, 1, 2), num_steps: int | None = None, batch_size: int | None = None,
                     rates: dict[str, float] | None = None, split: str = "test",
                     progress: bool = False) -> pd.DataFrame:
    """Localise and classify one digit on a cluttered 64x64 canvas (``ftlab.tasks.boxes``), per method, labels and seed.

    ``methods``: labels of ``BOX_METHODS`` (default: all); ``labels_per_class``: training digits
    per class, one run each (default ``[10, 50]``). Columns: ``task``, ``method``,
    ``labels_per_class``, ``seed``, ``num_steps``, ``batch_size``, ``lr``, ``accuracy``,
    ``mean iou``, ``acc@iou0.5``, ``localised`` (test, 500 digits), ``trainable``, ``total``,
    ``seconds``, ``cpu seconds``. ``rates``: learning rates replacing ``BOX_METHODS``' (by method);
    ``split``: the split scored, ``"test"`` or ``"validation"`` (300 digits, for choosing rates).
    """
    from ftlab.tasks.boxes import box_loader, box_loss, box_model, evaluate_boxes, make_boxes

    labels = _check_runs(methods, BOX_METHODS, seeds)
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    rates = dict(rates or {})
    if set(rates) - set(labels) or not all(isinstance(v, float) and v > 0 for v in rates.values()):
        raise ValueError(f"rates must map methods of this run ({', '.join(labels)}) to positive floats, got {rates!r}")
    default = defaults("boxes")
    counts_per_class = list(labels_per_class or default["labels_per_class"])
    num_steps = check_positive_int("num_steps", num_steps or default["num_steps"])
    batch_size = check_positive_int("batch_size", batch_size or default["batch_size"])
    rows = []
    for k in counts_per_class:
        for seed, label, options, data in _each_run(labels, BOX_METHODS, seeds, functools.partial(make_boxes, k)):
            options = {**options, "lr": rates.get(label, options["lr"])}
            test = Subset(data[split], range(min(len(data[split]), default["num_test"] or len(data[split]))))
            model = box_model("glyphs" if options.get("pretrained", True) else "scratch", seed=seed)
            model = _apply(model, options, ["fc"])
            train = box_loader(data["train"], batch_size=min(batch_size, len(data["train"])), shuffle=True, seed=seed)
            start, cpu = time.perf_counter(), time.process_time()
            fit(model, train, num_steps=num_steps, lr=options["lr"], loss_fn=box_loss, progress=progress)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            scores = evaluate_boxes(model, test)
            counts = count_parameters(model)
            rows.append({"task": "boxes", "method": label, "labels_per_class": k, "seed": seed, "split": split,
                         "num_steps": num_steps, "batch_size": batch_size, "lr": options["lr"], **scores,
                         "trainable": counts["trainable"], "total": counts["total"], "seconds": seconds,
                         "cpu seconds": cpu})
    return pd.DataFrame(rows)


def boxes_lr_grid(methods: Sequence[str] | None = None, *, seeds: Sequence[int] = (0,),
                  labels_per_class: Sequence[int] = (10,), progress: bool = False) -> pd.DataFrame:
    """``boxes_experiment`` at every rate of ``BOX_LR_GRID``, scored on the validation split; one row per run."""
    labels = _check_runs(methods, BOX_METHODS, seeds)
    return pd.concat([boxes_experiment(labels, labels_per_class=labels_per_class, seeds=seeds, split="validation",
                                       rates={m: BOX_LR_GRID[m][i] for m in labels}, progress=progress)
                      for i in range(len(next(iter(BOX_LR_GRID.values()))))], ignore_index=True)


def choose_box_rates(rows: pd.DataFrame) -> dict[str, float]:
    """Each method's rate with the best mean ``acc@iou0.5`` over the seeds of ``boxes_lr_grid``'s rows; ties by the
    higher mean IoU, then the smaller rate."""
    means = rows.groupby(["method", "lr"])[["acc@iou0.5", "mean iou"]].mean()
    return {method: float(min(group.index.get_level_values("lr"),
                              key=lambda lr: (-round(group.loc[(method, lr), "acc@iou0.5"], 9),
                                              -round(group.loc[(method, lr), "mean iou"], 9), lr)))
            for method, group in means.groupby(level="method", sort=False)}


# Instruction tuning on domain questions afterwards, the same way from both starts: LoRA with trainable embeddings
# (answers are drug and condition names, made of tokens the general model never saw), from the general model or
# from the domain-adapted one (its continued pretraining merged into the weights first).
DOMAIN_SFT: dict = DOMAIN_METHODS["lora + embeddings"]
DOMAIN_STARTS = ("general", "domain-adapted")


def domain_instruction_experiment(starts: Sequence[str] = DOMAIN_STARTS, *, seeds: Sequence[int] = (0, 1, 2),
                                  pretraining_steps: int | None = None, num_steps: int | None = None,
                                  batch_size: int | None = None, num_test: int | None = None,
                                  progress: bool = False) -> pd.DataFrame:
    """Instruction-tune the tiny GPT-2 on domain questions (``make_domain_instructions``) from two starting points.

    ``"general"``: the shipped model; ``"domain-adapted"``: after ``pretraining_steps`` of
    continued pretraining on clinic notes (``DOMAIN_METHODS["lora + embeddings"]``, merged). Both are then
    tuned with ``DOMAIN_SFT`` for ``num_steps`` and scored by greedy exact match on held-out
    questions, overall and per kind: the ``clinic`` questions ask what only the domain corpus states (the
    ``use`` answers also show in the training questions' notes: ``ftlab.tasks.domain``). Columns: ``task``, ``start``,
    ``seed``, ``pretraining_steps``, ``num_steps``, ``batch_size``, ``lr``, ``exact match``,
    ``em drug`` ... ``em clinic``, ``seconds`` and ``cpu seconds`` (both trainings).
    """
    from ftlab import merge_and_unload
    from ftlab.align.sft import evaluate_exact_match, train_sft
    from ftlab.tasks.domain import make_domain_corpus, make_domain_instructions
    from ftlab.zoo import load_gpt2

    unknown = [s for s in starts if s not in DOMAIN_STARTS]
    if unknown or not list(starts):
        raise ValueError(f"unknown start {unknown[0] if unknown else starts!r}; "
                         f"choose from: {', '.join(DOMAIN_STARTS)}")
    _check_runs(None, DOMAIN_METHODS, seeds)
    default = defaults("instruction")
    pretraining_steps = check_positive_int("pretraining_steps", pretraining_steps or default["pretraining_steps"])
    num_steps = check_positive_int("num_steps", num_steps or default["num_steps"])
    batch_size = check_positive_int("batch_size", batch_size or default["batch_size"])
    num_test = check_positive_int("num_test", num_test or default["num_test"])
    question_sizes = default["question_sizes"] and {**default["question_sizes"],
                                                     "test": max(num_test, default["question_sizes"]["test"])}
    rows = []
    for seed in seeds:
        corpus = make_domain_corpus(seed, sizes=default["corpus_sizes"])
        questions = make_domain_instructions(seed, sizes=question_sizes)
        for start_name in starts:
            seed_everything(seed)
            model, tokenizer = load_gpt2()
            start, cpu = time.perf_counter(), time.process_time()
            if start_name == "domain-adapted":
                model = continue_pretraining(model, tokenizer, corpus["train"], DOMAIN_METHODS["lora + embeddings"],
                                             num_steps=pretraining_steps,
                                             batch_size=default["pretraining_batch_size"],
                                             block_size=default["block_size"], seed=seed, progress=progress)
                model = merge_and_unload(model)
            model = _apply(model, DOMAIN_SFT, [])
            train_sft(model, tokenizer, questions["train"], num_steps=num_steps, lr=DOMAIN_SFT["lr"],
                      batch_size=batch_size, seed=seed, warmup_steps=max(1, num_steps // 20), max_grad_norm=1.0,
                      progress=progress)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            scores = evaluate_exact_match(model, tokenizer, questions["test"][:num_test], max_new_tokens=24)
            rows.append({"task": "domain sft", "start": start_name, "seed": seed,
                         "pretraining_steps": pretraining_steps if start_name == "domain-adapted" else 0,
                         "num_steps": num_steps, "batch_size": batch_size, "lr": DOMAIN_SFT["lr"],
                         "exact match": scores.pop("all"), **{f"em {k}": v for k, v in scores.items()},
                         "seconds": seconds, "cpu seconds": cpu})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- translation

# Instruction tuning the tiny GPT-2 to translate, at the rates of ftlab.compare.TASK_SETTINGS["instructions"];
# "scratch" is the same architecture and tokenizer from random weights, fully trained. LoRA trains the embeddings
# too, as in DOMAIN_METHODS: Lindish words are made of tokens the GPT-2 never saw (LoRA alone reached chrF 0.11
# after 300 steps, seed 0, where full fine-tuning reached 0.35).
TRANSLATION_METHODS: dict[str, dict] = {
    "full": {"method": "full", "lr": 2e-3},
    "lora + embeddings": {"method": "lora", "lr": 3e-3, "r": 8, "targets": ["c_attn", "c_proj", "c_fc"],
                          "modules_to_save": ["wte", "lm_head"]},
    "scratch": {"method": "full", "lr": 2e-3, "pretrained": False},
}


def translation_experiment(methods: Sequence[str] | None = None, *, seeds: Sequence[int] = (0, 1, 2),
                           num_steps: int | None = None, batch_size: int | None = None, num_test: int | None = None,
                           progress: bool = False) -> pd.DataFrame:
    """Instruction-tune the tiny GPT-2 to translate English <-> Lindish (``ftlab.tasks.translation``), per method, seed.

    Greedy translations of held-out sentences scored by exact match and chrF, overall and per
    direction. ``methods``: labels of ``TRANSLATION_METHODS`` (default: all). Columns: ``task``,
    ``method``, ``seed``, ``num_steps``, ``batch_size``, ``lr``, ``exact match``, ``chrf``,
    ``em to_lindish``, ``chrf to_lindish``, ``em to_english``, ``chrf to_english``,
    ``trainable``, ``total``, ``seconds``, ``cpu seconds``.
    """
    from ftlab.align.sft import generate, train_sft
    from ftlab.tasks.translation import KINDS, make_translation, translation_scores
    from ftlab.zoo import load_gpt2

    labels = _check_runs(methods, TRANSLATION_METHODS, seeds)
    default = defaults("translation")
    num_steps = check_positive_int("num_steps", num_steps or default["num_steps"])
    batch_size = check_positive_int("batch_size", batch_size or default["batch_size"])
    num_test = check_positive_int("num_test", num_test or default["num_test"])
    rows = []
    sizes = default["sizes"] and {**default["sizes"], "test": max(num_test, default["sizes"]["test"])}
    for seed, label, options, data in _each_run(labels, TRANSLATION_METHODS, seeds,
                                                lambda seed: make_translation(seed, sizes=sizes)):
        test = data["test"][:num_test]
        model, tokenizer = load_gpt2("tiny" if options.get("pretrained", True) else "scratch", seed=seed)
        model = _apply(model, options, [])
        start, cpu = time.perf_counter(), time.process_time()
        train_sft(model, tokenizer, data["train"], num_steps=num_steps, lr=options["lr"], batch_size=batch_size,
                  seed=seed, warmup_steps=max(1, num_steps // 20), progress=progress)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        predictions = generate(model, tokenizer, [e["prompt"] for e in test], max_new_tokens=32)
        scores = translation_scores(predictions, [e["answer"] for e in test])
        per_kind = {}
        for kind in KINDS:
            pairs = [(p, e["answer"]) for p, e in zip(predictions, test) if e["kind"] == kind]
            if pairs:
                kind_scores = translation_scores(*zip(*pairs))
                per_kind.update({f"em {kind}": kind_scores["exact_match"], f"chrf {kind}": kind_scores["chrf"]})
        counts = count_parameters(model)
        rows.append({"task": "translation", "method": label, "seed": seed, "num_steps": num_steps,
                     "batch_size": batch_size, "lr": options["lr"], "exact match": scores["exact_match"],
                     "chrf": scores["chrf"], **per_kind, "trainable": counts["trainable"],
                     "total": counts["total"], "seconds": seconds, "cpu seconds": cpu})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- reference results

REFERENCE_SEEDS = (0, 1, 2)
# name: (experiment, its arguments, the task of ftlab.compare.CHECKPOINTS whose checkpoint it fine-tunes); the seeds
# are REFERENCE_SEEDS unless the arguments say otherwise (the learning-rate grid runs seed 0 only)
REFERENCES: dict[str, tuple] = {
    "qa": (qa_experiment, {}, "sentiment"),
    "domain": (domain_pretraining_experiment, {}, "instructions"),
    "instruction": (domain_instruction_experiment, {}, "instructions"),
    "boxes_lr": (boxes_lr_grid, {"seeds": [0], "labels_per_class": [10]}, "digits"),
    "boxes": (boxes_experiment, {"labels_per_class": [10]}, "digits"),
    "translation": (translation_experiment, {}, "instructions"),
}


def _methods_table(name: str) -> dict:
    if name == "boxes_lr":
        return {"grid": BOX_LR_GRID, "methods": {m: {k: v for k, v in o.items() if k != "lr"}
                                                 for m, o in BOX_METHODS.items()}}
    return {"qa": QA_METHODS, "domain": DOMAIN_METHODS, "boxes": BOX_METHODS, "translation": TRANSLATION_METHODS,
            "instruction": {"pretraining": DOMAIN_METHODS["lora + embeddings"], "sft": DOMAIN_SFT}}[name]


def _check_reference_name(name: str) -> None:
    if name not in REFERENCES:
        raise ValueError(f"unknown scenario {name!r}; the reference results are: {', '.join(REFERENCES)}")


def reference_paths(name: str, out: str | Path = RESULTS_DIR) -> tuple[Path, Path]:
    """``(csv, json)`` of a scenario's reference results: ``out/scenarios_<name>.csv`` and ``.json``."""
    _check_reference_name(name)
    return Path(out) / f"scenarios_{name}.csv", Path(out) / f"scenarios_{name}.json"


def reference_settings(name: str, run_mode: str | None = None) -> dict:
    """What the reference results of scenario ``name`` depend on: the experiment, its arguments, the sizes of the
    mode (``DEFAULTS``), the methods with their options, and the seeds."""
    _check_reference_name(name)
    experiment, arguments, _ = REFERENCES[name]
    run_mode = run_mode or mode()
    return {"kind": "scenarios", "scenario": name, "mode": run_mode, "experiment": experiment.__name__,
            "arguments": arguments,
            "defaults": DEFAULTS[name.removesuffix("_lr")][0 if run_mode == "classroom" else 1],
            "methods": _methods_table(name), "seeds": list(arguments.get("seeds", REFERENCE_SEEDS))}


def make_reference(name: str, out: str | Path = RESULTS_DIR, *, progress: bool = False,
                   command: str | None = None) -> pd.DataFrame:
    """Run scenario ``name``'s experiment (``REFERENCES``) for ``REFERENCE_SEEDS`` and write its rows and provenance
    (settings, the checkpoint's SHA-256, the command with ftlab's commit) to ``reference_paths(name, out)``,
    replacing any earlier file. Refuses FAST mode into the shipped folder before anything runs."""
    csv_path, json_path = reference_paths(name, out)
    check_writable([csv_path, json_path])
    refuse_fast_writes(out)
    experiment, arguments, task = REFERENCES[name]
    rows = experiment(**{"seeds": REFERENCE_SEEDS, **arguments}, progress=progress)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(csv_path, index=False)
    json_path.unlink(missing_ok=True)
    new = {"file": csv_path.name, "columns": list(rows.columns), "settings": reference_settings(name),
           "checkpoints": checkpoint_hashes(task), "commands": []}
    record_provenance(json_path, new, command or f"python tools/scenario_reference.py {name}")
    return rows


def load_reference(name: str, out: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """The shipped reference rows of scenario ``name`` (``REFERENCES``), provenance in ``df.attrs["provenance"]``."""
    csv_path, json_path = reference_paths(name, out)
    return load_results_file(csv_path, json_path, f"make them with python tools/scenario_reference.py {name}")


def against_reference(live: dict, rows: pd.DataFrame, run: str, values: Sequence[str], by: str = "method",
                      seed: int = 0) -> pd.DataFrame:
    """A live run's ``values`` beside the reference row of the same ``run`` (a ``by`` value) and ``seed``: a notebook's
    live run with a reference run's settings should land on it (up to the threads' rounding)."""
    stored = rows[(rows[by] == run) & (rows["seed"] == seed)]
    if stored.empty:
        raise ValueError(f"no reference row with {by} == {run!r} and seed {seed}; "
                         f"{by} values: {', '.join(map(str, dict.fromkeys(rows[by])))}")
    return pd.DataFrame({"live (this run)": [live[v] for v in values],
                         f"reference, seed {seed}": [stored.iloc[0][v] for v in values]}, index=list(values))


def check_reference(json_path: str | Path) -> list[str]:
    """What no longer matches between a scenario's reference file (``.json`` and ``.csv``) and the code: the
    checkpoint's SHA-256, the classroom settings (``reference_settings``), the columns, and one row per seed and
    method (or start) (for the learning-rate grid, one per rate, and ``BOX_METHODS`` holding the rates it
    chooses). One sentence per problem; empty: the file is current."""
    json_path = Path(json_path)
    stored = json.loads(json_path.read_text())
    name = stored["settings"]["scenario"]
    problems = provenance_problems(stored, reference_settings(name, "classroom"),
                                   checkpoint_hashes(REFERENCES[name][2]))
    rows = pd.read_csv(json_path.with_suffix(".csv"))
    if list(rows.columns) != stored["columns"]:
        problems.append(f"{json_path.with_suffix('.csv').name}: columns {list(rows.columns)}, "
                        f"the provenance says {stored['columns']}")
        return problems
    runs = DOMAIN_STARTS if name == "instruction" else list(BOX_METHODS if name == "boxes_lr" else _methods_table(name))
    column = "start" if name == "instruction" else "method"
    arguments = REFERENCES[name][1]
    expected = {(seed, run) for seed in arguments.get("seeds", REFERENCE_SEEDS) for run in runs}
    found = set(zip(rows["seed"], rows[column]))
    per_pair = len(arguments.get("labels_per_class", [0])) * (len(BOX_LR_GRID["full"]) if name == "boxes_lr" else 1)
    if name == "boxes_lr" and found == expected:
        chosen = choose_box_rates(rows)
        problems += [f"method {m}: BOX_METHODS has lr {BOX_METHODS[m]['lr']:g}, the grid's rows choose {lr:g}"
                     for m, lr in chosen.items() if not math.isclose(BOX_METHODS[m]["lr"], lr, rel_tol=1e-9)]
    if found != expected or len(rows) != len(expected) * per_pair:
        problems.append(f"{json_path.with_suffix('.csv').name}: rows for {sorted(found)}, expected one per seed and "
                        f"{column}: {sorted(expected)}")
    return problems
