"""Translation between English and Lindish, a small rule-based language made up for this lab.

Lindish has its own words (``LEXICON``: every English noun, adjective and verb used here has one
invented two-syllable word) and its own grammar:

* no articles; an adjective follows its noun (``the red fox`` -> ``vipe lomi``);
* the object takes the suffix ``-m`` (``the cat`` as an object -> ``netum``);
* a plural noun takes the suffix ``-en`` (``two foxes`` -> ``du vipeen``; ``du`` = two);
* the verb comes last (subject, object, verb); the past tense puts ``ka`` before it.

For example ``the red fox saw the small cat`` -> ``vipe lomi netum zulu ka luve`` (``to_lindish``). Each example
is a dict ``{"kind", "prompt", "answer"}`` with a prompt in ``ftlab.tasks.instructions``' format,
either way round::

    Question: translate to Lindish: the red fox saw the small cat
    Answer: vipe lomi netum zulu ka luve

Every word is in the training split; the test sentences are new combinations of them (no prompt
occurs in two splits). Scores: exact match (``ftlab.tasks.instructions.exact_match``) and chrF
(``chrf``, Popovic 2015), which gives partial credit for partly right words.
"""
from __future__ import annotations

import collections
import random
from collections.abc import Sequence

from ftlab.tasks.corpus import ANIMALS, past, plural, third_person
from ftlab.tasks.instructions import PROMPT, deal_splits

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 3000, "validation": 100, "test": 300}
LANGUAGE = "Lindish"
KINDS = ("to_lindish", "to_english")

# 24 words: small enough for the tiny GPT-2 to learn in a classroom run. Its tokenizer splits every invented word
# into pieces it never saw in pretraining (``lomi`` -> ``l``, ``om``, ``i``), whose embeddings start untrained.
NOUNS = ANIMALS[:12]
ADJECTIVES = ["red", "blue", "green", "big", "small", "old"]
VERBS = ["see", "like", "chase", "help", "find", "follow"]
NUMBERS = {"two": "du", "three": "tri", "four": "kat"}
OBJECT_SUFFIX, PLURAL_SUFFIX, PAST_PARTICLE = "m", "en", "ka"
LEXICON_SEED = 2024  # the invented words never change


def _invent_words(n: int, seed: int) -> list[str]:
    """``n`` distinct two-syllable words (consonant + vowel, twice) ending in a vowel, in a fixed random order."""
    rng = random.Random(seed)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    reserved = set(NUMBERS.values()) | {PAST_PARTICLE}
    words: list[str] = []
    while len(words) < n:
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(2))
        if word not in words and word not in reserved:
            words.append(word)
    return words


LEXICON: dict[str, str] = dict(zip(NOUNS + ADJECTIVES + VERBS, _invent_words(len(NOUNS + ADJECTIVES + VERBS),
                                                                            LEXICON_SEED)))


PLURALS = {plural(n): n for n in NOUNS}  # "foxes" -> "fox" (and "sheep" -> "sheep")
VERB_FORMS = {**{v: (v, False) for v in VERBS}, **{third_person(v): (v, False) for v in VERBS},
              **{past(v): (v, True) for v in VERBS}}  # form -> (verb, past?)


def _parse_phrase(words: list[str], sentence: str) -> str:
    """Translate the noun phrase at the front of ``words`` (consumed): ``the|two|three|four [adjective] noun``."""
    if len(words) < 2 or not (words[0] == "the" or words[0] in NUMBERS):
        raise ValueError(f"cannot translate {sentence!r}: a noun phrase starts with 'the' or a number "
                         f"({', '.join(NUMBERS)})")
    number = words.pop(0)
    adjective = words.pop(0) if words and words[0] in ADJECTIVES else None
    forms = PLURALS if number in NUMBERS else {n: n for n in NOUNS}  # a number takes the plural, "the" the singular
    if not words or words[0] not in forms:
        raise ValueError(f"cannot translate {sentence!r}: expected a {'plural' if number in NUMBERS else 'singular'} "
                         f"noun ({', '.join(list(forms)[:4])}, ...) after {number!r}"
                         + (f" {adjective!r}" if adjective else ""))
    noun = forms[words.pop(0)]
    if number in NUMBERS:
        return " ".join([NUMBERS[number], LEXICON[noun] + PLURAL_SUFFIX] + ([LEXICON[adjective]] if adjective else []))
    return " ".join([LEXICON[noun]] + ([LEXICON[adjective]] if adjective else []))


def to_lindish(english: str) -> str:
    """Translate an English sentence ``subject verb object`` of this grammar by Lindish's rules (module docstring).

    ``to_lindish("the red fox saw the small cat")`` -> subject (noun, adjective), object (noun +
    ``m``, adjective), ``ka`` + verb. Raises ValueError for a sentence outside the grammar.
    """
    words = english.split()
    subject = _parse_phrase(words, english)
    if not words or words[0] not in VERB_FORMS:
        raise ValueError(f"cannot translate {english!r}: expected a verb ({', '.join(VERBS[:4])}, ...) after the "
                         f"subject")
    verb, is_past = VERB_FORMS[words.pop(0)]
    obj = _parse_phrase(words, english).split()
    if words:
        raise ValueError(f"cannot translate {english!r}: unexpected words after the object: {' '.join(words)!r}")
    noun_at = 1 if obj[0] in NUMBERS.values() else 0
    obj[noun_at] += OBJECT_SUFFIX
    return " ".join([subject, *obj] + ([PAST_PARTICLE] if is_past else []) + [LEXICON[verb]])


def _english_phrase(rng: random.Random) -> str:
    """A noun phrase: ``the`` or a number (then the plural), maybe an adjective."""
    number = rng.choice(list(NUMBERS)) if rng.random() < 0.3 else None
    noun = rng.choice(NOUNS)
    adjective = [rng.choice(ADJECTIVES)] if rng.random() < 0.7 else []
    return " ".join([number or "the", *adjective, plural(noun) if number else noun])


def make_sentence(rng: random.Random) -> tuple[str, str]:
    """One sentence ``(english, lindish)``: subject, verb (present or past), object."""
    subject, obj = _english_phrase(rng), _english_phrase(rng)
    verb = rng.choice(VERBS)
    if rng.random() < 0.5:
        verb = past(verb)
    elif subject.split()[0] == "the":  # a singular subject: sees; a plural one (a number first): see
        verb = third_person(verb)
    english = f"{subject} {verb} {obj}"
    return english, to_lindish(english)


def make_translation(seed: int = 0, sizes: dict | None = None,
                     kinds: Sequence[str] = KINDS) -> dict[str, list[dict]]:
    """``{"train", "validation", "test"}`` lists of ``{"kind", "prompt", "answer"}``, directions taking turns.

    Defaults: 3,000 train, 100 validation, 300 test (``SPLIT_SIZES``). No prompt occurs in two
    splits. The same arguments give the same data.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown translation kinds {unknown or list(kinds)}; kinds are {list(KINDS)}")

    def draw(rng: random.Random, split: str, index: int) -> dict:
        kind = kinds[index % len(kinds)]
        english, lindish = make_sentence(rng)
        if kind == "to_lindish":
            return {"kind": kind, "prompt": PROMPT.format(instruction=f"translate to {LANGUAGE}: {english}"),
                    "answer": lindish}
        return {"kind": kind, "prompt": PROMPT.format(instruction=f"translate to English: {lindish}"),
                "answer": english}

    return deal_splits(draw, {**SPLIT_SIZES, **(sizes or {})}, random.Random(seed))


def _char_ngrams(text: str, n: int) -> collections.Counter:
    return collections.Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(prediction: str, reference: str, *, order: int = 6, beta: float = 2.0) -> float:
    """Character n-gram F-score, chrF (Popovic 2015), of one sentence, in [0, 1].

    Spaces are removed. For each n = 1..``order``, precision ``P_n`` is the fraction of the
    prediction's character n-grams found in the reference (counts clipped, as a multiset) and
    recall ``R_n`` the fraction of the reference's found in the prediction. ``P`` and ``R`` are
    their means over the orders that both texts are long enough to have, and
    ``chrF = (1 + beta^2) P R / (beta^2 P + R)`` (beta = 2: recall counts twice as much).
    Two texts too short for any order score 1.0 if equal, else 0.0.
    """
    hyp, ref = "".join(prediction.split()), "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, order + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        if not h or not r:
            continue
        shared = sum((h & r).values())
        precisions.append(shared / sum(h.values()))
        recalls.append(shared / sum(r.values()))
    if not precisions:
        return float(hyp == ref)
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    return (1 + beta ** 2) * p * r / (beta ** 2 * p + r)


def translation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"exact_match", "chrf"}``: exact match after ``ftlab.tasks.instructions.normalize`` and mean sentence chrF."""
    from ftlab.tasks.instructions import exact_match, normalize

    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references; give one per reference")
    em = exact_match(predictions, references)  # raises for no references
    return {"exact_match": em,
            "chrf": sum(chrf(normalize(p), normalize(r)) for p, r in zip(predictions, references)) / len(references)}
