"""The text tasks: corpus, instructions, preferences and topic generators, and their metrics."""
import collections
import random
import re

import pytest

from ftlab.tasks import corpus, instructions, preferences, topic

SMALL = {"train": 300, "validation": 60, "test": 60}
SPLITS = ("train", "validation", "test")


def words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text.lower()))


# ---------------------------------------------------------------- corpus
def test_corpus_is_deterministic_per_seed():
    assert corpus.make_corpus(3, SMALL) == corpus.make_corpus(3, SMALL)
    assert corpus.make_corpus(3, SMALL)["train"] != corpus.make_corpus(4, SMALL)["train"]


def test_corpus_splits_share_no_document():
    data = corpus.make_corpus(0, SMALL)
    train, validation, test = (set(data[s]) for s in SPLITS)
    assert (len(train), len(validation), len(test)) == (300, 60, 60)
    assert not train & validation and not train & test and not validation & test


def test_corpus_has_a_few_thousand_words_in_stories_dialogues_and_lessons():
    assert len(corpus.vocabulary()) >= 2000
    docs = corpus.make_corpus(0, SMALL)["train"]
    lessons = [d for d in docs if "Let us play some word games." in d.split("\n")[0]]
    dialogues = [d for d in docs if re.match(r"^[A-Z][a-z]+: ", d) and d not in lessons]
    assert 0.25 < len(lessons) / len(docs) < 0.45 and 0.15 < len(dialogues) / len(docs) < 0.35
    used = set().union(*(words(d) for d in docs))
    assert len(used & {w.lower() for w in corpus.vocabulary()}) > 1000


def test_lesson_answers_are_right():
    rng = random.Random(0)
    checked = collections.Counter()
    for _ in range(200):
        lines = [line.split(": ", 1)[1] for line in corpus.make_lesson(rng).split("\n")]
        said = None
        for question, answer in zip(lines, lines[1:]):
            if question.startswith("Say these words after me: "):
                said = question.removeprefix("Say these words after me: ").rstrip(".").split()
                assert answer == " ".join(said) + "."
            elif question.startswith("Say these words backwards: "):
                words = question.removeprefix("Say these words backwards: ").rstrip(".").split()
                assert answer == " ".join(words[::-1]) + "."
            elif question == "Now say them backwards.":
                assert answer == " ".join(said[::-1]) + "."
            elif question == "Which word did I say last?":
                assert answer == f"You said {said[-1]} last."
            elif question == "Which word did I say first?":
                assert answer == f"You said {said[0]} first."
            elif question == "How many words was that?":
                assert answer == f"That was {corpus.NUMBERS[len(said) - 1]} words."
            elif question.startswith("I see one "):
                noun = question.split()[3].rstrip(".")
                assert answer == f"Then you see two {corpus.plural(noun)}."
            elif question.startswith("What is the plural of "):
                noun = question.split()[-1].rstrip("?")
                assert answer == f"The plural of {noun} is {corpus.plural(noun)}."
            elif question.startswith("Today I "):
                assert answer == f"Yesterday you {corpus.past(question.split()[2].rstrip('.'))}."
            elif question.startswith("What is the past tense of "):
                verb = question.split()[-1].rstrip("?")
                assert answer == f"The past tense of {verb} is {corpus.past(verb)}."
            elif "Who has the" in question:
                thing = question.split()[-1].rstrip("?")
                owner = re.search(rf"(\w+) has an? \w+ {thing}\b", question).group(1)
                assert answer == f"{owner} has the {thing}."
            else:
                continue
            checked[" ".join(question.split()[:4]) if "Who has" not in question else "Who has"] += 1
    games = {"Say these words after", "Say these words backwards:", "Now say them backwards.", "Which word did I",
             "How many words was", "I see one", "What is the plural", "Today I", "What is the past", "Who has"}
    assert all(any(key.startswith(game) for key in checked) for game in games), sorted(checked)


def test_lesson_probes_are_cut_from_real_lessons_with_the_pupils_right_reply():
    probes = corpus.lesson_probes(12, seed=3)
    assert {game: len(found) for game, found in probes.items()} == {"repeat": 12, "who has": 12}
    assert probes == corpus.lesson_probes(12, seed=3)
    for game, found in probes.items():
        for prompt, reply in found:
            *context, question, pupil = prompt.split("\n")
            assert context[0].endswith("Let us play some word games.") and re.fullmatch(r"[A-Z][a-z]+:", pupil)
            asked = question.split(": ", 1)[1]
            if game == "repeat":
                assert reply == asked.removeprefix("Say these words after me: ")
            else:
                thing = asked.split()[-1].rstrip("?")
                owner = re.search(rf"(\w+) has an? \w+ {thing}\b", asked).group(1)
                assert reply == f"{owner} has the {thing}."
            assert not any(line.endswith(reply) for line in context)  # no earlier answer to copy


def test_dialogue_answers_match_their_questions():
    docs = corpus.make_corpus(0, {"train": 600, "validation": 1, "test": 1})["train"]
    checked = 0
    for doc in docs:
        lines = doc.split("\n")
        for question, answer in zip(lines, lines[1:]):
            asked = re.search(r"What color is your (\w+)\?", question)
            if asked:
                assert re.search(rf"My {asked.group(1)} is (\w+)\.", answer), (question, answer)
                checked += 1
    assert checked > 20


@pytest.mark.parametrize("form, word, expected", [
    (corpus.plural, "fox", "foxes"), (corpus.plural, "berry", "berries"), (corpus.plural, "mouse", "mice"),
    (corpus.plural, "key", "keys"), (corpus.plural, "kite", "kites"), (corpus.third_person, "catch", "catches"),
    (corpus.third_person, "carry", "carries"), (corpus.third_person, "fish", "fishes"),
    (corpus.past, "hop", "hopped"), (corpus.past, "carry", "carried"), (corpus.past, "dance", "danced"),
    (corpus.past, "find", "found"), (corpus.past, "play", "played"), (corpus.present_participle, "dance", "dancing"),
    (corpus.present_participle, "swim", "swimming"), (corpus.present_participle, "tiptoe", "tiptoeing"),
    (corpus.comparative, "big", "bigger"), (corpus.comparative, "happy", "happier"),
    (corpus.comparative, "wise", "wiser"),
])
def test_word_forms_follow_english_spelling(form, word, expected):
    assert form(word) == expected


def test_use_an_goes_before_vowels_only():
    assert corpus.use_an("A orange kite and a red apple. Mara has a umbrella.") == \
        "An orange kite and a red apple. Mara has an umbrella."


@pytest.mark.parametrize("sizes", [{"train": 0}, {"dev": 5}, {"test": 2.5}])
def test_make_corpus_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="split"):
        corpus.make_corpus(0, sizes)


# ---------------------------------------------------------------- instructions
def test_instructions_are_deterministic_and_balanced():
    data = instructions.make_instructions(0)
    assert data == instructions.make_instructions(0)
    assert data["train"] != instructions.make_instructions(1)["train"]
    for split in SPLITS:
        counts = collections.Counter(e["kind"] for e in data[split])
        assert set(counts) == set(instructions.KINDS) and max(counts.values()) - min(counts.values()) <= 1


def test_instruction_test_prompts_never_occur_in_training():
    data = instructions.make_instructions(0)
    train, validation, test = ({e["prompt"] for e in data[s]} for s in SPLITS)
    assert not train & validation and not train & test and not validation & test


def test_plural_and_past_questions_ask_about_held_out_words():
    data = instructions.make_instructions(0)

    def asked(split, kind):
        return {re.search(r"of (\w+)\?", e["prompt"]).group(1) for e in data[split] if e["kind"] == kind}

    for kind, splits in [("plural", instructions.NOUN_SPLITS), ("past", instructions.VERB_SPLITS)]:
        assert asked("test", kind) <= set(splits["test"]) and asked("train", kind) <= set(splits["train"])
        assert not asked("test", kind) & (asked("train", kind) | asked("validation", kind))
        assert len(asked("test", kind)) >= 10


def test_instruction_answers_are_right_and_wrong_answers_differ():
    for e in instructions.make_instructions(0, {"train": 400, "validation": 8, "test": 8})["train"]:
        instruction = e["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
        phrase = instruction.split(": ")[-1].split()
        expected = {
            "copy": lambda phrase, instruction: " ".join(phrase),
            "reverse": lambda phrase, instruction: " ".join(phrase[::-1]),
            "last_word": lambda phrase, instruction: phrase[-1],
            "count": lambda phrase, instruction: corpus.NUMBERS[len(phrase) - 1],
            "plural": lambda phrase, instruction: corpus.plural(instruction.split()[-1].rstrip("?")),
            "past": lambda phrase, instruction: corpus.past(instruction.split()[-1].rstrip("?")),
            "who_has": lambda phrase, instruction: re.search(
                rf"(\w+) has an? \w+ {instruction.split()[-1].rstrip('?')}\.", instruction).group(1),
            "what_color": lambda phrase, instruction: re.search(
                rf"has an? (\w+) {instruction.split()[-1].rstrip('?')}\.", instruction).group(1),
        }[e["kind"]](phrase, instruction)
        assert e["answer"] == expected, e
        assert e["wrong"] != e["answer"], e
        assert e["prompt"].startswith("Question: ") and e["prompt"].endswith("\nAnswer:")


def test_exact_match_normalises_case_spaces_final_stop_and_later_lines():
    predictions = [" Foxes.\nQuestion: what is", "runs  fox red", "fox"]
    assert instructions.exact_match(predictions, ["foxes", "runs fox red", "foxes"]) == pytest.approx(2 / 3)
    examples = [{"kind": "plural", "answer": "foxes"}, {"kind": "reverse", "answer": "runs fox red"},
                {"kind": "plural", "answer": "foxes"}]
    assert instructions.exact_match_by_kind(examples, predictions) == \
        {"plural": 0.5, "reverse": 1.0, "all": pytest.approx(2 / 3)}


def test_exact_match_and_generators_reject_bad_input():
    with pytest.raises(ValueError, match="predictions"):
        instructions.exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="kinds"):
        instructions.make_instructions(0, kinds=["translate"])
    with pytest.raises(ValueError, match="split"):
        instructions.make_instructions(0, {"dev": 3})
    with pytest.raises(ValueError, match="new prompts"):  # validation can only repeat the training prompt
        instructions.deal_splits(lambda rng, split, k: {"prompt": "same"}, {"train": 1, "validation": 1, "test": 1},
                                 random.Random(0))


# ---------------------------------------------------------------- preferences
def test_preference_pairs_always_differ_and_kinds_take_turns():
    data = preferences.make_preferences(0)
    assert data == preferences.make_preferences(0)
    for split in SPLITS:
        assert all(p["chosen"] != p["rejected"] for p in data[split])
        counts = collections.Counter(p["kind"] for p in data[split])
        assert set(counts) == set(preferences.PAIR_KINDS) and max(counts.values()) - min(counts.values()) <= 1


def test_preference_test_prompts_never_occur_in_training():
    data = preferences.make_preferences(0)
    train, validation, test = ({p["prompt"] for p in data[s]} for s in SPLITS)
    assert not train & validation and not train & test and not validation & test


def test_rejected_story_sentence_is_a_shuffle_of_the_chosen_one():
    pairs = [p for p in preferences.make_preferences(0)["train"] if p["kind"] == "grammar"]
    assert all(sorted(p["chosen"].split()) == sorted(p["rejected"].split()) for p in pairs)


def test_story_sentences_split_before_quotes():
    text = '"What a red kite!" said Tolo. "Can I hold it?" "Yes," said Mara. They played.'
    assert preferences.sentences(text) == ['"What a red kite!" said Tolo.', '"Can I hold it?"',
                                           '"Yes," said Mara.', "They played."]


# ---------------------------------------------------------------- topic
def test_topic_is_deterministic_and_balanced():
    data = topic.make_topic(0)
    assert data == topic.make_topic(0) and data["train"] != topic.make_topic(1)["train"]
    for split in SPLITS:
        counts = collections.Counter(label for _, label in data[split])
        assert sorted(counts) == [0, 1, 2, 3] and len(set(counts.values())) == 1


def test_topic_test_words_never_occur_in_training():
    data = topic.make_topic(0)
    seen = {split: set().union(*(words(text) for text, _ in data[split])) for split in SPLITS}
    for name in topic.LABELS:
        held_out = set(topic.WORDS[name]["test"])
        assert not held_out & (seen["train"] | seen["validation"])
        assert not set(topic.WORDS[name]["validation"]) & seen["train"]
    for text, label in data["test"]:  # and each test sentence names a held-out word of its own topic
        assert words(text) & set(topic.WORDS[topic.LABELS[label]]["test"])


def test_make_topic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="split"):
        topic.make_topic(0, {"validation": -1})
