"""Topic sentences (sports, food, travel, tech) whose test split uses topic words never seen in training.

A second BERT classification task, for the multi-task and continual-learning notebooks. Each
sentence is a neutral template around one or two topic nouns, e.g. "everyone was talking about
the stadium yesterday." The nouns of each topic are split three ways:

* train: 8 common words per topic ("coach", "pizza", "passport", "laptop", ...);
* validation: 3 other words per topic;
* test: 6 words per topic ("marathon", "sushi", "hostel", "browser", ...) that never occur in
  train or validation.

The templates never name a topic, so a model that starts from random weights can only memorise
the training nouns; a pretrained model already knows that a "marathon" belongs with a "coach".
"""
from __future__ import annotations

import random

from ftlab.tasks import balanced_examples, split_sizes

LABELS = ["sports", "food", "travel", "tech"]
WORDS = {
    "sports": {
        "train": ["match", "coach", "team", "stadium", "referee", "goalkeeper", "tournament", "trophy"],
        "validation": ["athlete", "scoreboard", "racket"],
        "test": ["marathon", "sprinter", "quarterback", "umpire", "league", "championship"],
    },
    "food": {
        "train": ["pizza", "pasta", "soup", "salad", "recipe", "chef", "restaurant", "dessert"],
        "validation": ["burger", "omelette", "menu"],
        "test": ["sushi", "croissant", "lasagna", "risotto", "barbecue", "pastry"],
    },
    "travel": {
        "train": ["flight", "airport", "hotel", "vacation", "passport", "luggage", "tourist", "suitcase"],
        "validation": ["cruise", "resort", "itinerary"],
        "test": ["voyage", "hostel", "safari", "airline", "sightseeing", "backpacker"],
    },
    "tech": {
        "train": ["computer", "software", "laptop", "internet", "smartphone", "app", "robot", "website"],
        "validation": ["keyboard", "algorithm", "database"],
        "test": ["processor", "browser", "chatbot", "microchip", "tablet", "server"],
    },
}
TEMPLATES = [
    "i read an article about the {w} this morning.",
    "everyone was talking about the {w} yesterday.",
    "my sister told me a long story about the {w}.",
    "there was a discussion about the {w} on the radio.",
    "the news today was mostly about the {w}.",
    "have you heard what happened with the {w}?",
    "our teacher asked us to write about the {w}.",
    "the {w} was in the newspaper again.",
    "we talked about the {w} and the {w2} all evening.",
    "my friend cannot stop thinking about the {w} and the {w2}.",
]

SPLIT_SIZES = {"train": 400, "validation": 120, "test": 240}


def make_topic(seed: int = 0, sizes: dict | None = None) -> dict[str, list[tuple[str, int]]]:
    """Generate ``{"train", "validation", "test"}`` lists of ``(text, label)``, label an index into ``LABELS``.

    Classes take turns, so every split is balanced; the same ``seed`` always gives the same data.
    """

    def sentence(rng: random.Random, split: str, label: int) -> str:
        w, w2 = rng.sample(WORDS[LABELS[label]][split], 2)
        return rng.choice(TEMPLATES).format(w=w, w2=w2)

    return balanced_examples(sentence, len(LABELS), split_sizes(sizes, SPLIT_SIZES), seed)
