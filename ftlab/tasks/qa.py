"""Extractive question answering: short passages about people, questions whose answers are spans.

Each example is a dict ``{"kind", "context", "question", "answer", "answer_start"}`` where
``context[answer_start:answer_start + len(answer)] == answer``, for example::

    context:  Kalo lives in Oakbrook. Mara, who is 54 years old, has lived in Pineford since 1987.
              Mara keeps 3 otters. Kalo is 31 years old and has lived there since 2004. ...
    question: Where does Mara live?
    answer:   Pineford

A passage describes three people, each with a town, an age, the year they moved there and a
number of animals; the question asks for one fact of one person, so the model must find the
person first and then the right kind of fact next to them. Kinds: ``town`` (a place),
``person`` (a name), ``age``, ``year``, ``count`` (numbers).

Held out: the names and towns are split three ways (``NAME_SPLITS``, ``TOWN_SPLITS``), so every
test passage is about people and towns that no training passage mentions. A model cannot
memorise who lives where; it has to read.

The model (``SpanQA``) is an encoder with a span head, as in BERT (Devlin et al. 2019, section
4.2): a linear layer maps every token's hidden state to a start and an end logit; the loss is
the mean of the cross-entropies of the true start and the true end position. Scores as SQuAD
defines them (Rajpurkar et al. 2016; the official evaluation script): ``exact_match`` and
token ``f1`` after ``normalize_answer``.
"""
from __future__ import annotations

import collections
import random
import re
import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from ftlab.tasks import split_sizes
from ftlab.tasks.corpus import ANIMALS, NAMES, TOWNS, plural
from ftlab.validate import check_positive_int, eval_mode

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 400}
KINDS = ("town", "person", "age", "year", "count")
PEOPLE_PER_PASSAGE = 3


def held_out_split(words: Sequence[str]) -> dict[str, list[str]]:
    """Split a word list three ways: every 5th word for test, every 10th of the rest for validation, the rest train."""
    words = list(words)
    test = words[0::5]
    rest = [w for i, w in enumerate(words) if i % 5]
    return {"train": [w for i, w in enumerate(rest) if i % 10], "validation": rest[0::10], "test": test}


NAME_SPLITS = held_out_split([name for name, _ in NAMES])
TOWN_SPLITS = held_out_split(TOWNS)

# Each person's facts, in one of several phrasings (the same facts, other words): {P} person, {T} town,
# {a} age, {y} year, {n} count, {k} animals. Every fact appears exactly once per person.
PERSON_TEMPLATES = [
    ["{P} lives in {T}.", "{P} is {a} years old and moved there in {y}.", "{P} keeps {n} {k}."],
    ["{P}, who is {a} years old, has lived in {T} since {y}.", "{P} keeps {n} {k}."],
    ["At {a}, {P} has {n} {k}.", "{P} moved to {T} in {y}."],
    ["{P} has lived in {T} since {y}.", "{P} is {a} and has {n} {k}."],
    ["In {y}, {P} moved to {T}.", "{P} is {a} years old.", "{P} looks after {n} {k}."],
]
QUESTIONS = {
    "town": ["Where does {P} live?", "In which town does {P} live?", "Where did {P} move to?"],
    "person": ["Who lives in {T}?", "Who moved to {T}?", "Which person lives in {T}?"],
    "age": ["How old is {P}?", "What is the age of {P}?"],
    "year": ["When did {P} move to {T}?", "In which year did {P} move to {T}?"],
    "count": ["How many {k} does {P} have?", "How many {k} does {P} keep?"],
}
FIELD = {"town": "T", "person": "P", "age": "a", "year": "y", "count": "n"}


def _person(rng: random.Random, name: str, town: str, used: dict) -> dict:
    """The facts of one person; numbers differ from those of the other people in the passage."""
    facts = {"P": name, "T": town}
    for key, low, high in (("a", 18, 90), ("y", 1950, 2023), ("n", 2, 12)):
        value = rng.randint(low, high)
        while value in used[key]:
            value = rng.randint(low, high)
        used[key].add(value)
        facts[key] = str(value)
    facts["k"] = plural(rng.choice(ANIMALS))
    return facts


def make_example(rng: random.Random, split: str = "train", kind: str | None = None) -> dict:
    """One passage and question with its answer span; names and towns come from ``split``'s share."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {list(SPLITS)}")
    kind = kind or rng.choice(KINDS)
    if kind not in KINDS:
        raise ValueError(f"unknown question kind {kind!r}; kinds are {list(KINDS)}")
    names = rng.sample(NAME_SPLITS[split], PEOPLE_PER_PASSAGE)
    towns = rng.sample(TOWN_SPLITS[split], PEOPLE_PER_PASSAGE)
    used = {"a": set(), "y": set(), "n": set()}
    people = [_person(rng, name, town, used) for name, town in zip(names, towns)]
    queues = [[s.format(**person) for s in rng.choice(PERSON_TEMPLATES)] for person in people]
    ordered = []  # the people's sentences interleaved at random, each person's own in order
    while any(queues):
        ordered.append(rng.choice([q for q in queues if q]).pop(0))
    context = " ".join(ordered)

    target = rng.randrange(PEOPLE_PER_PASSAGE)
    facts = people[target]
    question = rng.choice(QUESTIONS[kind]).format(**facts)
    answer = facts[FIELD[kind]]
    if kind == "person":  # the name occurs several times: the answer span is the mention just before the town
        answer_start = max(m.start() for m in _word(answer).finditer(context, 0, context.index(facts["T"])))
    else:
        answer_start = _find_word(context, answer)
    return {"kind": kind, "context": context, "question": question, "answer": answer, "answer_start": answer_start}


def _word(word: str) -> re.Pattern:
    """``word`` as a whole word ("Mari" does not match inside "Maria")."""
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")


def _find_word(text: str, word: str) -> int:
    """Start of the only whole-word occurrence of ``word`` in ``text``."""
    found = [m.start() for m in _word(word).finditer(text)]
    if len(found) != 1:
        raise AssertionError(f"{word!r} occurs {len(found)} times in {text!r}; the generator must make it unique")
    return found[0]


def make_qa(seed: int = 0, sizes: dict | None = None) -> dict[str, list[dict]]:
    """``{"train", "validation", "test"}`` lists of examples; kinds take turns, so each split is balanced.

    Defaults: 2,000 train, 200 validation, 400 test (``SPLIT_SIZES``). Names and towns are held
    out per split (module docstring), so no passage occurs in two splits. The same seed and
    sizes give the same data.
    """
    sizes = split_sizes(sizes, SPLIT_SIZES)
    rng = random.Random(seed)
    return {split: [make_example(rng, split, KINDS[i % len(KINDS)]) for i in range(sizes[split])] for split in SPLITS}


# ---------------------------------------------------------------- SQuAD scores


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation, drop the articles a/an/the, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, truth: str) -> float:
    """1.0 if the normalised prediction equals the normalised true answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """SQuAD's token F1: ``2 P R / (P + R)`` over the shared normalised tokens (a multiset).

    ``P = shared / len(prediction tokens)``, ``R = shared / len(truth tokens)``; when either
    side has no tokens, 1.0 if both are empty, else 0.0 (as SQuAD 2.0's script does).
    """
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    shared = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(pred), shared / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` in [0, 1]; an answer may be a list of accepted answers (the best counts)."""
    if len(predictions) != len(answers):
        raise ValueError(f"got {len(predictions)} predictions for {len(answers)} answers; give one per answer")
    if not answers:
        raise ValueError("squad_scores got no answers")
    em = f1 = 0.0
    for prediction, truth in zip(predictions, answers):
        truths = [truth] if isinstance(truth, str) else list(truth)
        em += max(exact_match_score(prediction, t) for t in truths)
        f1 += max(f1_score(prediction, t) for t in truths)
    return {"exact_match": em / len(answers), "f1": f1 / len(answers)}


# ---------------------------------------------------------------- model, batches, predictions


class SpanQA(nn.Module):
    """An encoder with a span head: ``start_logits, end_logits = Linear(hidden, 2)(encoder(x))``.

    ``encoder`` is a transformers BERT-family model returning ``last_hidden_state`` ``(B, T, d)``.
    With ``start_positions`` and ``end_positions`` ``(B,)`` the output has
    ``loss = (CE(start_logits, start) + CE(end_logits, end)) / 2``. ``config`` is the encoder's,
    so ``ftlab.apply`` finds BERT's default targets; the head is called ``qa_outputs`` (as in
    transformers' ``BertForQuestionAnswering``), to pass as ``modules_to_save``.
    """

    def __init__(self, encoder: nn.Module, seed: int = 0):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        generator = torch.Generator().manual_seed(seed)
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)
        with torch.no_grad():  # BERT's initialisation: N(0, 0.02) weights, zero bias
            self.qa_outputs.weight.copy_(torch.randn(self.qa_outputs.weight.shape, generator=generator) * 0.02)
            self.qa_outputs.bias.zero_()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None, end_positions=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state  # (B, T, d)
        start_logits, end_logits = self.qa_outputs(hidden).unbind(-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


def load_span_qa(pretrained: bool = True, seed: int = 0) -> tuple[SpanQA, object]:
    """``(SpanQA, tokenizer)`` on the offline MiniLM encoder, or the same architecture from random weights.

    ``pretrained=False`` builds MiniLM's architecture with weights initialised from ``seed``: what
    the pretrained encoder contributes is the difference. The span head is new in both cases.
    """
    from transformers import BertModel

    from ftlab.zoo import load_bert

    classifier, tokenizer = load_bert("minilm", seed=seed)
    encoder = classifier.bert
    encoder.pooler = None  # the [CLS] pooler serves sentence classification; a span head reads every token
    if not pretrained:
        torch.manual_seed(seed)
        encoder = BertModel(encoder.config, add_pooling_layer=False)
    return SpanQA(encoder, seed=seed).eval(), tokenizer


def _encode(tokenizer, examples: Sequence[dict], max_length: int):
    return tokenizer([e["question"] for e in examples], [e["context"] for e in examples], padding=True,
                     truncation="only_second", max_length=max_length, return_offsets_mapping=True,
                     return_tensors="pt")


def answer_positions(encoding, examples: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions ``(start, end)``, each ``(B,)``, of each answer span (inclusive), from the offsets.

    Raises ValueError when an answer is cut off by truncation (give a larger ``max_length``).
    """
    starts, ends = [], []
    for row, example in enumerate(examples):
        first = example["answer_start"]
        last = first + len(example["answer"])  # one past the answer's last character
        sequence = encoding.sequence_ids(row)
        offsets = encoding["offset_mapping"][row].tolist()
        in_context = [t for t, s in enumerate(sequence) if s == 1]
        start = next((t for t in in_context if offsets[t][0] <= first < offsets[t][1]), None)
        end = next((t for t in in_context if offsets[t][0] < last <= offsets[t][1]), None)
        if start is None or end is None:
            raise ValueError(f"the answer {example['answer']!r} of example {row} is not inside the tokenised context "
                             f"(cut by max_length?); give a larger max_length")
        starts.append(start)
        ends.append(end)
    return torch.tensor(starts), torch.tensor(ends)


def qa_loader(examples: Sequence[dict], tokenizer, *, batch_size: int = 16, shuffle: bool = False, seed: int = 0,
              max_length: int = 128) -> DataLoader:
    """Batches for ``SpanQA``: ``input_ids``, ``token_type_ids``, ``attention_mask`` ``(B, T)`` and
    ``start_positions``, ``end_positions`` ``(B,)`` (question first, then the passage, as BERT does).

    Every example is checked up front (its answer must survive truncation), so a bad one fails
    before training.
    """
    if len(examples) == 0:
        raise ValueError("qa_loader got no examples")
    check_positive_int("batch_size", batch_size)
    for start in range(0, len(examples), 256):
        answer_positions(_encode(tokenizer, examples[start:start + 256], max_length), examples[start:start + 256])

    def collate(batch):
        enc = _encode(tokenizer, batch, max_length)
        start_positions, end_positions = answer_positions(enc, batch)
        out = {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        return {**out, "start_positions": start_positions, "end_positions": end_positions}

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(examples), batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor,
               max_answer_tokens: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The span ``(i, j)`` maximising ``start_logits[i] + end_logits[j]`` with ``i <= j < i + max_answer_tokens``,
    both tokens ``allowed`` (the passage's tokens). Inputs ``(B, T)``; returns two ``(B,)`` index tensors."""
    T = start_logits.shape[1]
    score = start_logits[:, :, None] + end_logits[:, None, :]  # (B, T, T): row i start, column j end
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    valid = (j >= i) & (j < i + max_answer_tokens)  # (T, T)
    valid = valid[None] & allowed[:, :, None] & allowed[:, None, :]  # (B, T, T)
    best = score.masked_fill(~valid.to(score.device), float("-inf")).flatten(1).argmax(-1)  # (B,)
    return best // T, best % T


@torch.no_grad()
def predict_answers(model: nn.Module, tokenizer, examples: Sequence[dict], *, batch_size: int = 64,
                    max_length: int = 128, max_answer_tokens: int = 8) -> list[str]:
    """The answer text ``model`` extracts from each example's context (``best_spans``, cut out by character offsets)."""
    device = next(model.parameters()).device
    answers = []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            enc = _encode(tokenizer, batch, max_length)
            out = model(**{k: enc[k].to(device) for k in ("input_ids", "token_type_ids", "attention_mask")})
            allowed = torch.tensor([[s == 1 for s in enc.sequence_ids(r)] for r in range(len(batch))])  # (B, T)
            first, last = best_spans(out.start_logits.cpu(), out.end_logits.cpu(), allowed, max_answer_tokens)
            offsets = enc["offset_mapping"]  # (B, T, 2)
            for r, example in enumerate(batch):
                answers.append(example["context"][offsets[r, first[r], 0]:offsets[r, last[r], 1]])
    return answers


def evaluate_qa(model: nn.Module, tokenizer, examples: Sequence[dict], **options) -> dict[str, float]:
    """``{"exact_match", "f1"}`` over ``examples`` and ``exact_match`` per kind (``"em town"``, ...); options as
    ``predict_answers``."""
    predictions = predict_answers(model, tokenizer, examples, **options)
    scores = squad_scores(predictions, [e["answer"] for e in examples])
    for kind in dict.fromkeys(e["kind"] for e in examples):
        rows = [(p, e["answer"]) for p, e in zip(predictions, examples) if e["kind"] == kind]
        scores[f"em {kind}"] = squad_scores(*zip(*rows))["exact_match"]
    return scores
