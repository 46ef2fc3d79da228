"""Sentiment sentences whose test split uses sentiment words never seen in training.

Each sentence is built from a template, a subject and one sentiment adjective, e.g.
"honestly, the soundtrack was really superb." The adjectives are split three ways:

* train: 8 positive and 8 negative common words ("great", "awful", ...);
* validation: 3 + 3 other words;
* test: 6 + 6 rarer synonyms ("superb", "dreadful", ...) that never occur in train or validation.

A model that starts from random weights can only memorise the training adjectives, so it
stays near chance on the test split; a pretrained model already places "superb" near
"great" and generalises. That gap is what pretraining buys.
"""
from __future__ import annotations

import random
import re

from ftlab.tasks import balanced_examples, split_sizes

POSITIVE = {
    "train": ["good", "great", "excellent", "wonderful", "fantastic", "amazing", "lovely", "brilliant"],
    "validation": ["terrific", "enjoyable", "fabulous"],
    "test": ["superb", "delightful", "marvelous", "outstanding", "splendid", "magnificent"],
}
NEGATIVE = {
    "train": ["bad", "terrible", "awful", "horrible", "boring", "poor", "dull", "disappointing"],
    "validation": ["mediocre", "unpleasant", "pathetic"],
    "test": ["dreadful", "atrocious", "abysmal", "dismal", "lousy", "appalling"],
}
SUBJECTS = ["movie", "film", "book", "meal", "concert", "show", "hotel", "game", "album", "play",
            "soundtrack", "acting", "story", "service", "ending"]
TEMPLATES = [
    "the {s} was {i}{a}.",
    "i thought the {s} was {i}{a}.",
    "what a {i}{a} {s}!",
    "honestly, the {s} was {i}{a}.",
    "my friends said the {s} is {i}{a}.",
    "overall it was a {i}{a} {s}.",
    "this {s} is {i}{a}, in my opinion.",
    "we found the {s} {i}{a}.",
]
INTENSIFIERS = ["", "", "really ", "truly ", "quite ", "very "]
LABELS = ["negative", "positive"]

SPLIT_SIZES = {"train": 400, "validation": 120, "test": 240}


def make_sentiment(seed: int = 0, sizes: dict | None = None) -> dict[str, list[tuple[str, int]]]:
    """Generate ``{"train", "validation", "test"}`` lists of ``(text, label)``, label 1 = positive.

    Classes are balanced in every split; the same ``seed`` always gives the same data.
    """

    def review(rng: random.Random, split: str, label: int) -> str:
        adjective = rng.choice((POSITIVE if label else NEGATIVE)[split])
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), i=rng.choice(INTENSIFIERS), a=adjective)
        return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "a outstanding" -> "an outstanding"

    return balanced_examples(review, len(LABELS), split_sizes(sizes, SPLIT_SIZES), seed)
