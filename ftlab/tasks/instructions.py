"""Instructions over the synthetic language, with held-out prompts and an exact-match metric.

Each example is a dict ``{"kind", "prompt", "answer", "wrong"}``. A model is fine-tuned on
``prompt + " " + answer`` (the prompt ends with ``"Answer:"``), for example::

    Question: what is the plural of fox?
    Answer: foxes

``wrong`` is a typical mistake for the same prompt ("foxs"); ``ftlab.tasks.preferences`` uses it
as the rejected answer. Kinds (answers are one to four words, so a 4M-parameter GPT-2 can learn
them after a few hundred steps of supervised fine-tuning):

=============  ==========================================================  ================
kind           instruction                                                 answer (wrong)
=============  ==========================================================  ================
copy           repeat the words: red fox runs                              red fox runs (red fox)
reverse        reverse the words: red fox runs                             runs fox red (red fox runs)
last_word      what is the last word: red fox runs                         runs (red)
count          how many words: red fox runs                                three (four)
plural         what is the plural of fox?                                  foxes (foxs)
past           what is the past tense of hop?                              hopped (hoped)
who_has        Mara has a red kite. Tolo has a blue ball. who has the      Tolo (Mara)
               ball?
what_color     Mara has a red kite. Tolo has a blue ball. what color is    red (blue)
               the kite?
=============  ==========================================================  ================

Held out: the nouns of plural questions and the verbs of past-tense questions are split three
ways (``NOUN_SPLITS``, ``VERB_SPLITS``), so a test question asks about a word that no training
question mentions (the pretrained model has still seen it in the corpus, e.g. "a mouse ... three
mice"). Every other test prompt is a new combination of words, and no prompt occurs in two splits.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ftlab.tasks.corpus import (
    ACTIVITIES,
    ANIMALS,
    COLORS,
    FOOD_ACTIONS,
    FOODS,
    GAME_WORDS,
    NAMES,
    NUMBERS,
    OBJECTS,
    PLACES,
    THING_ACTIONS,
    past,
    plural,
    present_participle,
    use_an,
)

PROMPT = "Question: {instruction}\nAnswer:"
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 2400, "validation": 240, "test": 480}

NOUNS = sorted(set(ANIMALS + OBJECTS + FOODS + PLACES))
VERBS = sorted(set(ACTIVITIES + THING_ACTIONS + FOOD_ACTIONS))


def _three_ways(words: list[str]) -> dict[str, list[str]]:
    """Every 5th word for test, every 10th of the rest for validation, the others for training."""
    test = words[0::5]
    rest = [w for w in words if w not in test]
    validation = rest[0::10]
    return {"train": [w for w in rest if w not in validation], "validation": validation, "test": test}


NOUN_SPLITS = _three_ways(NOUNS)
VERB_SPLITS = _three_ways(VERBS)


def _phrase(rng: random.Random, low: int, high: int) -> list[str]:
    return rng.sample(GAME_WORDS, rng.randint(low, high))


def _copy(rng, split):
    words = _phrase(rng, 2, 4)
    return f"repeat the words: {' '.join(words)}", " ".join(words), " ".join(words[:-1])


def _reverse(rng, split):
    words = _phrase(rng, 2, 4)
    return f"reverse the words: {' '.join(words)}", " ".join(words[::-1]), " ".join(words)


def _last_word(rng, split):
    words = _phrase(rng, 2, 5)
    return f"what is the last word: {' '.join(words)}", words[-1], words[0]


def _count(rng, split):
    words = _phrase(rng, 2, 6)
    n = len(words)
    return f"how many words: {' '.join(words)}", NUMBERS[n - 1], NUMBERS[n if rng.random() < 0.5 else n - 2]


def _plural(rng, split):
    noun = rng.choice(NOUN_SPLITS[split])
    naive = noun + "s"  # the mistake a rule-free guess makes: foxs, mouses, sheeps
    return f"what is the plural of {noun}?", plural(noun), naive if naive != plural(noun) else noun


def _past(rng, split):
    verb = rng.choice(VERB_SPLITS[split])
    naive = verb + "ed"  # hoped for hopped, finded for found
    return f"what is the past tense of {verb}?", past(verb), naive if naive != past(verb) else present_participle(verb)


def _two_owners(rng):
    (a, _), (b, _) = rng.sample(NAMES, 2)
    thing_a, thing_b = rng.sample(OBJECTS, 2)
    color_a, color_b = rng.sample(COLORS, 2)
    story = use_an(f"{a} has a {color_a} {thing_a}. {b} has a {color_b} {thing_b}.")
    return story, [(a, thing_a, color_a), (b, thing_b, color_b)]


def _who_has(rng, split):
    story, owners = _two_owners(rng)
    k = rng.randint(0, 1)
    return f"{story} who has the {owners[k][1]}?", owners[k][0], owners[1 - k][0]


def _what_color(rng, split):
    story, owners = _two_owners(rng)
    k = rng.randint(0, 1)
    return f"{story} what color is the {owners[k][1]}?", owners[k][2], owners[1 - k][2]


# kind -> draw(rng, split) -> (instruction, answer, wrong)
KINDS: dict[str, Callable] = {"copy": _copy, "reverse": _reverse, "last_word": _last_word, "count": _count,
                              "plural": _plural, "past": _past, "who_has": _who_has, "what_color": _what_color}


def deal_splits(draw: Callable[[random.Random, str, int], dict], sizes: dict, rng: random.Random,
                max_tries: int = 100) -> dict[str, list[dict]]:
    """Draw ``sizes[split]`` examples per split with ``draw(rng, split, index)``.

    An example whose ``prompt`` already occurs in an earlier split is drawn again, so the prompts
    of validation and test are new (a split may repeat its own prompts).
    """
    unknown = [split for split in sizes if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown splits {unknown}; splits are {list(SPLITS)}")
    for split in SPLITS:
        n = sizes.get(split)
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"split {split!r} needs a positive number of examples, got {n!r}")
    seen: set[str] = set()
    data = {}
    for split in SPLITS:
        examples, tries = [], 0
        while len(examples) < sizes[split]:
            tries += 1
            if tries > max_tries * sizes[split]:
                raise ValueError(f"could not draw {sizes[split]} new prompts for split {split!r}; ask for fewer")
            example = draw(rng, split, len(examples))
            if example["prompt"] not in seen:
                examples.append(example)
        seen |= {e["prompt"] for e in examples}
        data[split] = examples
    return data


def make_instructions(seed: int = 0, sizes: dict | None = None,
                      kinds: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Generate ``{"train", "validation", "test"}`` lists of ``{"kind", "prompt", "answer", "wrong"}``.

    The kinds take turns, so every split is balanced between them; ``kinds`` picks a subset
    (default: all of ``KINDS``). The same arguments always give the same data.
    """
    kinds = list(kinds or KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown instruction kinds {unknown}; kinds are {list(KINDS)}")

    def draw(rng, split, index):
        kind = kinds[index % len(kinds)]
        instruction, answer, wrong = KINDS[kind](rng, split)
        return {"kind": kind, "prompt": PROMPT.format(instruction=instruction), "answer": answer, "wrong": wrong}

    return deal_splits(draw, {**SPLIT_SIZES, **(sizes or {})}, random.Random(seed))


def normalize(text: str) -> str:
    """What exact match compares: the first line, lower case, single spaces, no final full stop."""
    return " ".join(text.split("\n")[0].split()).rstrip(".").lower()


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of predictions equal to their answer after ``normalize`` (a value in [0, 1])."""
    if len(predictions) != len(answers):
        raise ValueError(f"got {len(predictions)} predictions for {len(answers)} answers; give one per answer")
    if len(answers) == 0:
        raise ValueError("exact_match got no answers")
    return sum(normalize(p) == normalize(a) for p, a in zip(predictions, answers)) / len(answers)


def exact_match_by_kind(examples: Sequence[dict], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match per instruction kind, plus ``"all"``: ``{"copy": 1.0, ..., "all": 0.82}``."""
    if len(predictions) != len(examples):
        raise ValueError(f"got {len(predictions)} predictions for {len(examples)} examples; give one per example")
    scores = {}
    for kind in dict.fromkeys(e["kind"] for e in examples):
        pairs = [(p, e["answer"]) for p, e in zip(predictions, examples) if e["kind"] == kind]
        scores[kind] = exact_match(*zip(*pairs))
    scores["all"] = exact_match(predictions, [e["answer"] for e in examples])
    return scores
