"""Preference pairs for a reward model and DPO: one prompt, a chosen and a rejected answer.

Each pair is a dict ``{"kind", "prompt", "chosen", "rejected"}``; the texts scored are
``prompt + " " + chosen`` and ``prompt + " " + rejected`` (prompts use the format of
``ftlab.tasks.instructions``: ``"Question: ...\\nAnswer:"``). Kinds, in equal shares:

* **correct**: an instruction prompt; chosen is the right answer, rejected the typical mistake
  of that instruction kind (``"foxes"`` vs ``"foxs"``, ``"Tolo"`` vs the other name);
* **grammar**: ``"continue the story: <a sentence of a story>"``; chosen is the story's next
  sentence, rejected the same words in a shuffled order;
* **polite**: a friend's request or remark (``"Tolo asks: can I borrow your kite?"``); chosen is a
  kind reply (a yes, or a friendly no), rejected a rude one (``"No. Go away."``).

Chosen and rejected always differ. Splits are dealt as in ``instructions.deal_splits``: no prompt
of validation or test occurs in an earlier split, and correct-answer pairs use the held-out nouns
and verbs of ``instructions`` in validation and test.
"""
from __future__ import annotations

import random
import re

from ftlab.tasks.corpus import BAD_FEELINGS, FOODS, NAMES, OBJECTS, make_story, plural
from ftlab.tasks.instructions import KINDS, PROMPT, deal_splits

SPLIT_SIZES = {"train": 1800, "validation": 180, "test": 360}
PAIR_KINDS = ("correct", "grammar", "polite")

# (request, polite replies, rude replies); {B} is the friend, {thing} an object, {foods} a food
REQUESTS = [
    ("{B} asks: can I borrow your {thing}?",
     ["Yes, of course you can borrow my {thing}.", "Sorry, I need my {thing} today. Maybe tomorrow?"],
     ["No. Go away.", "Stop asking me about my {thing}!"]),
    ("{B} asks: can you help me find my {thing}?",
     ["Yes, I will help you look for your {thing}.", "Of course! Let us look in the garden first."],
     ["No. Find it yourself.", "Your {thing} is not my problem."]),
    ("{B} says: thank you for the {foods}!",
     ["You are welcome, {B}!", "I am glad you liked the {foods}."],
     ["Whatever. Just go.", "I did not make them for you."]),
    ("{B} says: I am {bad} today.",
     ["I am sorry, {B}. Can I help you?", "Oh no! Do you want to play with my {thing}?"],
     ["That is not my problem.", "Stop talking to me."]),
    ("{B} asks: do you want to play with me?",
     ["Yes, I would love to play with you!", "Not now, thank you. Maybe after lunch?"],
     ["No. You are boring.", "Leave me alone."]),
]


def sentences(story: str) -> list[str]:
    """Split a story before each new sentence or quote: ``'"Look!" said Mara. "It is red."'`` -> 2 parts."""
    return re.split(r'(?:(?<=[.!?])|(?<=[.!?]"))\s+(?=[A-Z"])', story)


def _correct(rng, split):
    return KINDS[rng.choice(list(KINDS))](rng, split)


def _grammar(rng, split):
    parts = sentences(make_story(rng))
    k = rng.randrange(len(parts) - 1)
    chosen = parts[k + 1]
    words = chosen.split()
    rejected = chosen
    while rejected == chosen:  # every sentence of the grammar has two or more different words, so this ends
        rejected = " ".join(rng.sample(words, len(words)))
    return f"continue the story: {parts[k]}", chosen, rejected


def _polite(rng, split):
    request, polite, rude = rng.choice(REQUESTS)
    fields = {"B": rng.choice(NAMES)[0], "thing": rng.choice(OBJECTS), "foods": plural(rng.choice(FOODS)),
              "bad": rng.choice(BAD_FEELINGS)}
    return request.format(**fields), rng.choice(polite).format(**fields), rng.choice(rude).format(**fields)


_DRAW = {"correct": _correct, "grammar": _grammar, "polite": _polite}


def make_preferences(seed: int = 0, sizes: dict | None = None) -> dict[str, list[dict]]:
    """Generate ``{"train", "validation", "test"}`` lists of ``{"kind", "prompt", "chosen", "rejected"}``.

    The three kinds take turns; the same arguments always give the same pairs.
    """
    def draw(rng, split, index):
        kind = PAIR_KINDS[index % len(PAIR_KINDS)]
        instruction, chosen, rejected = _DRAW[kind](rng, split)
        return {"kind": kind, "prompt": PROMPT.format(instruction=instruction), "chosen": chosen,
                "rejected": rejected}

    return deal_splits(draw, {**SPLIT_SIZES, **(sizes or {})}, random.Random(seed))
