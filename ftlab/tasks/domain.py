"""A domain the tiny GPT-2 has never read: clinic notes, with their own words, abbreviations and facts.

The "industry-specific language model" case in miniature. The shipped GPT-2 learned the
children's-story English of ``ftlab.tasks.corpus``; medical text is new to it in three ways:

* **vocabulary**: drug and condition names (``amlodipine``, ``atrial fibrillation``) that its
  byte-level tokenizer splits into many small pieces;
* **phrasing**: abbreviations and note style (``c/o headache for 3 weeks. Obs: BP 162/98, HR 84.
  Imp: hypertension. Plan: start amlodipine 5 mg od. F/u 4 weeks.``);
* **facts**: which drug treats which condition and which clinic sees it (``CONDITIONS``), the
  same in every document, as domain knowledge is.

``make_domain_corpus`` writes four kinds of document (clinic notes, discharge summaries,
referral letters, formulary entries) for continued pretraining; ``make_domain_instructions``
asks questions about them for instruction tuning afterwards:

==========  ===============================================================  ==================
kind        prompt                                                           answer
==========  ===============================================================  ==================
drug        Note: Mara, 54, c/o wheeze ... Plan: start salbutamol 100 mg     salbutamol
            prn.\\nQuestion: which drug was started?\\nAnswer:
dose        (the same note) Question: what dose was started?                 100 mg
diagnosis   (the same note) Question: what is the diagnosis?                  asthma
use         Question: what is montelukast used for?\\nAnswer:                 asthma
clinic      Question: which clinic treats gout?\\nAnswer:                     rheumatology
==========  ===============================================================  ==================

Held out: one drug of every condition (``DRUG_SPLITS``) and every fifth condition
(``CONDITION_SPLITS``) are never asked about in training questions, and patient names are split
as in ``ftlab.tasks.qa``. The answers to the test ``clinic`` questions are therefore written only in the
domain corpus. Those of the test ``use`` questions are not asked in training either, but the training
questions' notes may start any drug of a diagnosis, held-out drugs too ("Imp: hypertension. Plan: start
losartan"), so instruction tuning itself shows which condition a held-out drug goes with.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ftlab.tasks import distinct_documents, split_sizes
from ftlab.tasks.corpus import DAYS, NAMES
from ftlab.tasks.instructions import PROMPT, deal_splits
from ftlab.tasks.qa import NAME_SPLITS, held_out_split

SPLITS = ("train", "validation", "test")
CORPUS_SIZES = {"train": 4000, "validation": 200, "test": 200}
INSTRUCTION_SIZES = {"train": 2000, "validation": 100, "test": 250}

# condition -> (clinic, three drugs, three symptoms); the facts every document agrees on
CONDITIONS: dict[str, tuple[str, list[str], list[str]]] = {
    "hypertension": ("cardiology", ["amlodipine", "ramipril", "losartan"], ["headache", "dizziness", "nosebleeds"]),
    "angina": ("cardiology", ["bisoprolol", "nicorandil", "ranolazine"],
               ["chest pain", "tight chest", "breathlessness"]),
    "heart failure": ("cardiology", ["furosemide", "spironolactone", "bumetanide"],
                      ["ankle swelling", "breathlessness", "fatigue"]),
    "atrial fibrillation": ("cardiology", ["apixaban", "warfarin", "digoxin"],
                            ["palpitations", "dizziness", "fatigue"]),
    "asthma": ("respiratory", ["salbutamol", "beclometasone", "montelukast"], ["wheeze", "cough", "tight chest"]),
    "pneumonia": ("respiratory", ["amoxicillin", "clarithromycin", "doxycycline"], ["fever", "cough", "chest pain"]),
    "type 2 diabetes": ("endocrinology", ["metformin", "gliclazide", "sitagliptin"],
                        ["thirst", "weight loss", "fatigue"]),
    "hypothyroidism": ("endocrinology", ["levothyroxine", "liothyronine", "thyroxine"],
                       ["weight gain", "fatigue", "dry skin"]),
    "reflux": ("gastroenterology", ["omeprazole", "lansoprazole", "famotidine"], ["heartburn", "nausea", "cough"]),
    "depression": ("psychiatry", ["sertraline", "citalopram", "mirtazapine"], ["low mood", "poor sleep", "fatigue"]),
    "epilepsy": ("neurology", ["levetiracetam", "lamotrigine", "carbamazepine"],
                 ["seizures", "blackouts", "confusion"]),
    "migraine": ("neurology", ["sumatriptan", "rizatriptan", "topiramate"], ["headache", "nausea", "flashing lights"]),
    "gout": ("rheumatology", ["allopurinol", "colchicine", "febuxostat"], ["joint pain", "swollen toe", "redness"]),
    "osteoarthritis": ("rheumatology", ["naproxen", "diclofenac", "celecoxib"],
                       ["joint pain", "stiffness", "swollen knee"]),
    "eczema": ("dermatology", ["hydrocortisone", "betamethasone", "tacrolimus"], ["itch", "dry skin", "redness"]),
    "urinary infection": ("urology", ["nitrofurantoin", "trimethoprim", "fosfomycin"],
                          ["burning", "fever", "frequency"]),
}
DRUG_CONDITION = {drug: condition for condition, (_, drugs, _) in CONDITIONS.items() for drug in drugs}
# the first drug of every condition is for training questions, the second for validation, the third for test
DRUG_SPLITS = {split: [drugs[i] for _, drugs, _ in CONDITIONS.values()] for i, split in enumerate(SPLITS)}
CONDITION_SPLITS = held_out_split(list(CONDITIONS))
DOSES = ["2.5", "5", "10", "20", "25", "40", "50", "100", "200", "250", "500"]
FREQUENCIES = {"od": "once daily", "bd": "twice daily", "tds": "three times daily", "qds": "four times daily",
               "nocte": "at night", "prn": "as needed"}
DURATION_UNITS = ["days", "weeks", "months"]
PRONOUNS = dict(NAMES)  # name -> "she" or "he"


def _facts(rng: random.Random, names: list[str]) -> dict:
    """One patient episode: who, what condition, which of its drugs, symptoms, observations."""
    condition = rng.choice(list(CONDITIONS))
    clinic, drugs, symptoms = CONDITIONS[condition]
    s1, s2 = rng.sample(symptoms, 2)
    name = rng.choice(names)
    return {"name": name, "He": PRONOUNS[name].capitalize(), "age": rng.randint(18, 92), "condition": condition,
            "clinic": clinic, "drug": rng.choice(drugs), "dose": rng.choice(DOSES),
            "freq": rng.choice(list(FREQUENCIES)),
            "s1": s1, "s2": s2, "n": rng.randint(2, 12), "unit": rng.choice(DURATION_UNITS), "day": rng.choice(DAYS),
            "sys": rng.randint(105, 185), "dia": rng.randint(60, 110), "hr": rng.randint(52, 120),
            "spo2": rng.randint(88, 100), "weeks": rng.randint(1, 12), "doctor": rng.choice(names)}


def clinic_note(f: dict) -> str:
    """A short outpatient note in abbreviations (the ``Note:`` of the instruction questions)."""
    return (f"{f['name']}, {f['age']}, c/o {f['s1']} and {f['s2']} for {f['n']} {f['unit']}. "
            f"Obs: BP {f['sys']}/{f['dia']}, HR {f['hr']}, SpO2 {f['spo2']}%. Imp: {f['condition']}. "
            f"Plan: start {f['drug']} {f['dose']} mg {f['freq']}. F/u {f['weeks']} weeks.")


def _note(f: dict) -> str:
    return f"{f['clinic'].capitalize()} clinic, {f['day']}. " + clinic_note(f)


def _discharge(f: dict) -> str:
    return (f"Discharge summary. Pt: {f['name']}, {f['age']}. Admitted with {f['s1']} and {f['s2']}. "
            f"Dx: {f['condition']}. Rx on discharge: {f['drug']} {f['dose']} mg {f['freq']} "
            f"({FREQUENCIES[f['freq']]}). GP to review in {f['weeks']} weeks. Seen by the {f['clinic']} team.")


def _referral(f: dict) -> str:
    return (f"Dear colleague, I would be grateful if you could see {f['name']} ({f['age']}) in the {f['clinic']} "
            f"clinic. {f['He']} has a {f['n']} {f['unit'][:-1]} history of {f['s1']} and {f['s2']}. I suspect "
            f"{f['condition']} and have started {f['drug']} {f['dose']} mg {f['freq']}. Yours sincerely, "
            f"Dr {f['doctor']}.")


def _formulary(f: dict) -> str:
    others = [d for d in CONDITIONS[f["condition"]][1] if d != f["drug"]]
    return (f"Formulary: {f['drug']}. Used for {f['condition']}. Usual dose {f['dose']} mg {f['freq']} "
            f"({FREQUENCIES[f['freq']]}). Prescribed in {f['clinic']} clinics. Alternatives: {' or '.join(others)}.")


DOCUMENT_KINDS = {"note": _note, "discharge": _discharge, "referral": _referral, "formulary": _formulary}
# Only formulary entries name a drug before its condition (the others give the diagnosis first), and a language model
# learns a fact in the order it reads it; so they are frequent, like a drug reference in a hospital's text.
DOCUMENT_WEIGHTS = [3, 2, 2, 3]


def make_document(rng: random.Random, names: list[str] | None = None) -> str:
    """One domain document of a random kind (``DOCUMENT_KINDS``, weighted ``DOCUMENT_WEIGHTS``)."""
    kind = rng.choices(list(DOCUMENT_KINDS), DOCUMENT_WEIGHTS)[0]
    return DOCUMENT_KINDS[kind](_facts(rng, names or list(PRONOUNS)))


def make_domain_corpus(seed: int = 0, sizes: dict | None = None) -> dict[str, list[str]]:
    """``{"train", "validation", "test"}`` lists of domain documents, no document in two splits.

    Defaults: 4,000 train, 200 validation, 200 test (``CORPUS_SIZES``). Patient names follow
    ``NAME_SPLITS``; every drug and condition occurs in every split (the corpus is where the
    facts are learnt). The same seed and sizes give the same documents.
    """
    sizes = split_sizes(sizes, CORPUS_SIZES, unit="documents")
    return distinct_documents(lambda rng, split: make_document(rng, NAME_SPLITS[split]), sizes, seed)


@torch.no_grad()
def fact_choices(model, tokenizer, drugs: Sequence[str] | None = None) -> dict[str, str]:
    """``{drug: condition}``: for each of ``drugs`` (default: all 48) the condition, of all 16, that the model scores
    highest after ``Formulary: {drug}. Used for``, by the summed log-probability of its tokens,
    ``log p(" " + condition + eos | bos + "Formulary: {drug}. Used for")``
    (``ftlab.align.common.response_logprobs``). A sum favours short conditions: a model that knows nothing picks
    the same one for every drug."""
    from ftlab.align.common import response_logprobs
    from ftlab.align.sft import collate, encode, max_positions
    from ftlab.validate import eval_mode

    drugs = list(drugs or DRUG_CONDITION)
    conditions = list(CONDITIONS)
    device = next(model.parameters()).device
    choices = {}
    with eval_mode(model):
        for drug in drugs:
            pairs = [encode(tokenizer, f"Formulary: {drug}. Used for", c, max_length=max_positions(model))
                     for c in conditions]
            batch = {k: v.to(device) for k, v in collate(pairs, tokenizer.pad_token_id).items()}
            scores = response_logprobs(model, batch)  # (16,)
            choices[drug] = conditions[int(scores.argmax())]
    return choices


def fact_recall(model, tokenizer, drugs: Sequence[str] | None = None) -> float:
    """The fraction of ``drugs`` (default: all 48) whose condition the model finds among all 16 (``fact_choices``):
    a multiple choice; chance is 1/16. It measures what continued pretraining taught, with no instruction tuning
    and no generation."""
    choices = fact_choices(model, tokenizer, drugs)
    return sum(DRUG_CONDITION[drug] == condition for drug, condition in choices.items()) / len(choices)


INSTRUCTION_KINDS = ("drug", "dose", "diagnosis", "use", "clinic")
NOTE_QUESTIONS = {"drug": ("which drug was started?", "drug"), "dose": ("what dose was started?", "dose"),
                  "diagnosis": ("what is the diagnosis?", "condition")}


def make_domain_instructions(seed: int = 0, sizes: dict | None = None,
                             kinds: tuple[str, ...] = INSTRUCTION_KINDS) -> dict[str, list[dict]]:
    """``{"train", "validation", "test"}`` lists of ``{"kind", "prompt", "answer"}`` (kinds in the module docstring).

    Defaults: 2,000 train, 100 validation, 250 test (``INSTRUCTION_SIZES``); kinds take turns.
    ``use`` asks about each split's own drugs (``DRUG_SPLITS``), ``clinic`` about its own
    conditions (``CONDITION_SPLITS``), note questions about its own patients; no prompt occurs in
    two splits. Prompts follow ``ftlab.tasks.instructions.PROMPT``, so ``ftlab.align.sft`` trains
    and scores them unchanged.
    """
    unknown = [k for k in kinds if k not in INSTRUCTION_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown instruction kinds {unknown or kinds!r}; kinds are {list(INSTRUCTION_KINDS)}")

    def draw(rng: random.Random, split: str, index: int) -> dict:
        kind = kinds[index % len(kinds)]
        if kind == "use":
            drug = rng.choice(DRUG_SPLITS[split])
            return {"kind": kind, "prompt": PROMPT.format(instruction=f"what is {drug} used for?"),
                    "answer": DRUG_CONDITION[drug]}
        if kind == "clinic":
            condition = rng.choice(CONDITION_SPLITS[split])
            return {"kind": kind, "prompt": PROMPT.format(instruction=f"which clinic treats {condition}?"),
                    "answer": CONDITIONS[condition][0]}
        f = _facts(rng, NAME_SPLITS[split])
        question, field = NOTE_QUESTIONS[kind]
        answer = f"{f['dose']} mg" if kind == "dose" else f[field]
        return {"kind": kind, "prompt": f"Note: {clinic_note(f)}\n" + PROMPT.format(instruction=question),
                "answer": answer}

    return deal_splits(draw, {**INSTRUCTION_SIZES, **(sizes or {})}, random.Random(seed))
