"""The scenario tasks: generators deterministic per seed, held-out splits disjoint, metrics exact on worked examples."""
import re

import pytest
import torch
import torch.nn.functional as F

from ftlab.tasks import boxes, domain, qa, translation

# ---------------------------------------------------------------- question answering

QA_SIZES = {"train": 60, "validation": 10, "test": 30}


@pytest.fixture(scope="module")
def qa_data():
    return qa.make_qa(seed=0, sizes=QA_SIZES)


def test_qa_same_seed_gives_the_same_examples_and_another_seed_does_not(qa_data):
    assert qa.make_qa(seed=0, sizes=QA_SIZES) == qa_data
    assert qa.make_qa(seed=1, sizes=QA_SIZES)["train"] != qa_data["train"]


def test_qa_answers_are_the_spans_at_answer_start_and_kinds_take_turns(qa_data):
    for split, examples in qa_data.items():
        assert len(examples) == QA_SIZES[split]
        for e in examples:
            assert e["context"][e["answer_start"]:e["answer_start"] + len(e["answer"])] == e["answer"]
        assert [e["kind"] for e in examples[:5]] == list(qa.KINDS)
    year = next(e for e in qa_data["train"] if e["kind"] == "year")
    assert re.fullmatch(r"(19[5-9]\d|20[0-2]\d)", year["answer"])


def test_qa_names_and_towns_are_held_out_per_split(qa_data):
    names = {split: set(qa.NAME_SPLITS[split]) for split in qa.SPLITS}
    towns = {split: set(qa.TOWN_SPLITS[split]) for split in qa.SPLITS}
    assert not names["train"] & names["test"] and not names["validation"] & names["test"]
    assert not towns["train"] & towns["test"] and not towns["train"] & towns["validation"]
    for e in qa_data["test"]:
        words = set(re.findall(r"[A-Z][a-z]+", e["context"])) - {"In", "At"}
        assert words <= names["test"] | towns["test"], words - names["test"] - towns["test"]


def test_held_out_split_deals_every_word_once():
    words = [f"w{i}" for i in range(50)]
    split = qa.held_out_split(words)
    assert split["test"] == words[0::5] and len(split["validation"]) == 4 and len(split["train"]) == 36
    assert sorted([w for part in split.values() for w in part], key=words.index) == words


@pytest.mark.parametrize("bad", [{"train": 0}, {"train": 2.5}, {"dev": 3}])
def test_qa_bad_sizes_raise_a_clear_error(bad):
    with pytest.raises(ValueError, match="split"):
        qa.make_qa(sizes=bad)


def test_squad_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert qa.normalize_answer("The  Cat, sat!") == "cat sat"
    assert qa.normalize_answer("an Apple a day") == "apple day"
    assert qa.normalize_answer("Theatre") == "theatre"  # "the" only as a whole word


def test_exact_match_and_f1_on_worked_examples():
    assert qa.exact_match_score("the Mapleton.", "Mapleton") == 1.0
    assert qa.exact_match_score("Mapleton town", "Mapleton") == 0.0
    # prediction [mara, lives, in, oakton] vs truth [mara]: 1 shared, P = 1/4, R = 1, F1 = 2 * 0.25 / 1.25 = 0.4
    assert qa.f1_score("Mara lives in Oakton", "Mara") == pytest.approx(0.4)
    # "a" is an article and goes: [b, b] vs [b, b, c]: 2 shared, P = 1, R = 2/3, F1 = 0.8
    assert qa.f1_score("a b b", "b b c") == pytest.approx(0.8)
    # shared tokens count as a multiset: [b, b] vs [b]: 1 shared, P = 1/2, R = 1, F1 = 2/3
    assert qa.f1_score("b b", "b") == pytest.approx(2 / 3)
    assert qa.f1_score("cat", "dog") == 0.0
    assert qa.f1_score("the", "") == 1.0 and qa.f1_score("cat", "a") == 0.0  # nothing left after normalising


def test_squad_scores_average_and_take_the_best_of_several_answers():
    scores = qa.squad_scores(["Mara", "54 years", "Oakton"], ["Mara", "54", ["Pineford", "Oakton"]])
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 answers"):
        qa.squad_scores(["a", "b"], ["a"])


@pytest.fixture(scope="module")
def minilm_qa():
    return qa.load_span_qa(seed=0)


def test_qa_loader_positions_cover_exactly_the_answer_tokens(qa_data, minilm_qa):
    _, tokenizer = minilm_qa
    examples = qa_data["train"][:12]
    batch = next(iter(qa.qa_loader(examples, tokenizer, batch_size=12)))
    assert batch["input_ids"].shape == batch["token_type_ids"].shape and batch["start_positions"].shape == (12,)
    for row, e in enumerate(examples):
        span = batch["input_ids"][row, batch["start_positions"][row]:batch["end_positions"][row] + 1]
        assert tokenizer.decode(span).replace(" ", "") == e["answer"].lower()
        assert (batch["token_type_ids"][row, batch["start_positions"][row]] == 1).item()  # inside the passage


def test_qa_loader_refuses_an_answer_cut_off_by_max_length(qa_data, minilm_qa):
    _, tokenizer = minilm_qa
    late = max(qa_data["train"], key=lambda e: e["answer_start"])
    with pytest.raises(ValueError, match="not inside the tokenised context.*larger max_length"):
        qa.qa_loader([late], tokenizer, max_length=24)


def test_best_span_respects_order_length_and_the_passage():
    start = torch.tensor([[0.0, 5.0, 0.0, 0.0, 9.0]])
    end = torch.tensor([[0.0, 0.0, 4.0, 8.0, 0.0]])
    allowed = torch.tensor([[False, True, True, True, True]])
    # best pair with start <= end: start 1 (5) + end 3 (8) = 13; start 4 has no end after it but itself (9 + 0)
    assert [t.item() for t in qa.best_spans(start, end, allowed)] == [1, 3]
    # at most 2 tokens long: start 1 + end 2 = 9 = start 4 + end 4; argmax takes the first: (1, 2)
    assert [t.item() for t in qa.best_spans(start, end, allowed, max_answer_tokens=2)] == [1, 2]
    only_start = torch.tensor([[False, False, False, False, True]])
    assert [t.item() for t in qa.best_spans(start, end, only_start)] == [4, 4]


def test_span_qa_loss_is_the_mean_of_start_and_end_cross_entropy(qa_data, minilm_qa):
    model, tokenizer = minilm_qa
    batch = next(iter(qa.qa_loader(qa_data["train"][:4], tokenizer, batch_size=4)))
    out = model(**batch)
    T = batch["input_ids"].shape[1]
    assert out.start_logits.shape == out.end_logits.shape == (4, T)
    expected = (F.cross_entropy(out.start_logits, batch["start_positions"])
                + F.cross_entropy(out.end_logits, batch["end_positions"])) / 2
    assert torch.allclose(out.loss, expected)


def test_lora_on_span_qa_trains_only_its_matrices_and_the_head(minilm_qa):
    import copy

    from ftlab import apply
    from ftlab.measure import count_parameters

    model = apply(copy.deepcopy(minilm_qa[0]), "lora", r=8, modules_to_save=["qa_outputs"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "qa_outputs" in n for n in names)
    assert count_parameters(model)["percent"] < 2


def test_random_init_has_minilm_architecture_but_other_weights(minilm_qa):
    scratch, _ = qa.load_span_qa(pretrained=False, seed=0)
    pretrained = minilm_qa[0]
    assert [n for n, _ in scratch.named_parameters()] == [n for n, _ in pretrained.named_parameters()]
    word = "encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(dict(scratch.named_parameters())[word], dict(pretrained.named_parameters())[word])


def test_predicted_answers_are_spans_of_the_context(qa_data, minilm_qa):
    model, tokenizer = minilm_qa
    examples = qa_data["test"][:6]
    predictions = qa.predict_answers(model, tokenizer, examples, batch_size=4)
    assert len(predictions) == 6
    for p, e in zip(predictions, examples):
        assert p and p in e["context"] and len(tokenizer.tokenize(p)) <= 8
    scores = qa.evaluate_qa(model, tokenizer, examples)
    assert 0 <= scores["exact_match"] <= scores["f1"] <= 1 and "em town" in scores


# ---------------------------------------------------------------- domain corpus and questions

def test_domain_corpus_is_deterministic_and_splits_share_no_document():
    sizes = {"train": 50, "validation": 10, "test": 10}
    corpus = domain.make_domain_corpus(seed=0, sizes=sizes)
    assert corpus == domain.make_domain_corpus(seed=0, sizes=sizes)
    assert corpus["train"] != domain.make_domain_corpus(seed=1, sizes=sizes)["train"]
    assert not set(corpus["train"]) & set(corpus["test"]) and not set(corpus["validation"]) & set(corpus["test"])
    assert {len(docs) for docs in corpus.values()} == {50, 10}


def test_domain_documents_state_the_same_drug_condition_facts():
    corpus = domain.make_domain_corpus(seed=0, sizes={"train": 200, "validation": 1, "test": 1})
    for doc in corpus["train"]:
        drugs = [d for d in domain.DRUG_CONDITION if re.search(rf"\b{d}\b", doc)]
        conditions = {domain.DRUG_CONDITION[d] for d in drugs}
        assert len(conditions) == 1, doc  # every drug named in a document treats its one condition
        condition = conditions.pop()
        assert condition in doc and domain.CONDITIONS[condition][0] in doc.lower()


def test_domain_questions_about_drugs_and_conditions_are_held_out():
    questions = domain.make_domain_instructions(seed=0, sizes={"train": 200, "validation": 20, "test": 100})
    prompts = {split: {q["prompt"] for q in qs} for split, qs in questions.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["validation"] & prompts["test"]
    asked = {split: {re.search(r"what is (\w+) used for", q["prompt"]).group(1) for q in qs if q["kind"] == "use"}
             for split, qs in questions.items()}
    assert asked["test"] <= set(domain.DRUG_SPLITS["test"]) and not asked["test"] & asked["train"]
    clinics = {split: {q["prompt"] for q in qs if q["kind"] == "clinic"} for split, qs in questions.items()}
    assert all(any(c in p for c in domain.CONDITION_SPLITS["test"]) for p in clinics["test"])
    for q in questions["test"]:
        if q["kind"] == "use":
            assert q["answer"] == domain.DRUG_CONDITION[re.search(r"what is (\w+) used", q["prompt"]).group(1)]
        elif q["kind"] in ("drug", "dose", "diagnosis"):
            assert q["answer"] in q["prompt"].split("\nQuestion")[0]  # the note states the answer


def test_fact_recall_picks_the_condition_with_the_most_likely_tokens(tiny_gpt2_chat):
    model, tokenizer = tiny_gpt2_chat
    drugs = list(domain.DRUG_CONDITION)
    right, picked = 0, {}
    for drug in drugs:  # the same choice, scored another way: the summed loss of the answer tokens
        losses = {}
        for condition in domain.CONDITIONS:
            prompt = tokenizer(tokenizer.bos_token + f"Formulary: {drug}. Used for")["input_ids"]
            answer = tokenizer(" " + condition + tokenizer.eos_token)["input_ids"]
            ids = torch.tensor([prompt + answer])
            labels = torch.tensor([[-100] * len(prompt) + answer])
            with torch.no_grad():
                losses[condition] = model(input_ids=ids, labels=labels).loss.item() * len(answer)
        picked[drug] = min(losses, key=losses.get)
        right += picked[drug] == domain.DRUG_CONDITION[drug]
    assert 0 < right < len(drugs)  # a random model is right about some drugs, so the comparison means something
    assert domain.fact_recall(model, tokenizer) == pytest.approx(right / len(drugs))
    assert domain.fact_choices(model, tokenizer) == picked
    assert domain.fact_choices(model, tokenizer, drugs[:2]) == {d: picked[d] for d in drugs[:2]}


def test_domain_bad_kinds_and_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown instruction kinds.*kinds are"):
        domain.make_domain_instructions(kinds=("drug", "price"))
    with pytest.raises(ValueError, match="positive number of documents"):
        domain.make_domain_corpus(sizes={"train": -1})


# ---------------------------------------------------------------- localisation

def test_box_iou_on_worked_examples():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0],
                      [0.0, 0.0, 0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0],
                      [0.0, 0.0, 0.0, 1.0]])
    # overlap 1 of union 4 + 4 - 1 = 7; a box inside one four times its area: 4/16; identical: 1; apart: 0;
    # no area: 0
    assert torch.allclose(boxes.box_iou(a, b), torch.tensor([1 / 7, 0.25, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="two \\(N, 4\\) tensors"):
        boxes.box_iou(a, b[:2])


def test_box_corners_and_centre_convert_both_ways():
    corners = torch.tensor([[0.1, 0.2, 0.5, 0.8]])
    centre = boxes.corners_to_centre(corners)
    assert torch.allclose(centre, torch.tensor([[0.3, 0.5, 0.4, 0.6]]))
    assert torch.allclose(boxes.centre_to_corners(centre), corners)


@pytest.fixture(scope="module")
def box_data():
    return boxes.make_boxes(labels_per_class=2, seed=0)


def test_box_data_is_deterministic_and_boxes_frame_the_digit(box_data):
    again = boxes.make_boxes(labels_per_class=2, seed=0)
    for split in box_data:
        assert all(torch.equal(a, b) for a, b in zip(box_data[split].tensors, again[split].tensors))
    x, y, b = box_data["train"].tensors
    assert x.shape == (160, 3, 64, 64) and torch.equal(torch.bincount(y), torch.full((10,), 16)) and b.shape == (160, 4)
    # 8 placements of each labelled digit: the same class, boxes elsewhere
    assert len(set(y[:8].tolist())) == 1 and len({tuple(box.tolist()) for box in b[:8]}) == 8
    assert len(box_data["test"]) == 500 and (b[:, :2] < b[:, 2:]).all() and b.min() >= 0 and b.max() <= 1
    ink = boxes.to_unit(x[:, 0])  # (N, 64, 64)
    for image, box in zip(ink, (b * boxes.CANVAS).round().long()):
        inside = image[box[1]:box[3], box[0]:box[2]]
        assert inside.max() > 0.7 and inside.mean() > 2 * image.mean()  # the digit is bright and in its box
    other = boxes.make_boxes(labels_per_class=2, seed=1)["test"].tensors[2]
    assert not torch.equal(other, box_data["test"].tensors[2])  # placements change with the seed


def test_box_model_is_a_resnet_whose_head_sees_the_2x2_map():
    from ftlab import apply
    from ftlab.measure import count_parameters

    model = boxes.box_model("scratch", seed=0)
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 14) and model.fc[1].in_features == 2048
    logits, predicted = boxes.split_outputs(out)
    assert logits.shape == (2, 10) and predicted.shape == (2, 4) and (predicted[:, :2] < predicted[:, 2:]).all()
    lora = apply(model, "lora", r=4, modules_to_save=["fc"])  # LoRA finds the ResNet's convolutions
    assert 0 < count_parameters(lora)["percent"] < 10


class _Oracle(torch.nn.Module):
    """Returns what the first pixel row of each image holds: a stand-in model with known outputs."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, 0, 0, :14]


def test_box_loss_and_scores_of_a_model_with_known_outputs():
    y = torch.tensor([3, 1])
    truth = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]])
    predicted = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.8, 0.8]])  # second: IoU 0.04/0.28 = 1/7
    x = torch.zeros(2, 3, 64, 64)
    x[:, 0, 0, :10] = F.one_hot(torch.tensor([3, 2]), 10) * 10.0  # right class, then a wrong one
    x[:, 0, 0, 10:14] = torch.logit(boxes.corners_to_centre(predicted))  # the model's raw box outputs
    scores = boxes.evaluate_boxes(_Oracle(), torch.utils.data.TensorDataset(x, y, truth))
    assert scores["accuracy"] == 0.5 and scores["mean iou"] == pytest.approx((1 + 1 / 7) / 2)
    assert scores["acc@iou0.5"] == 0.5 and scores["localised"] == 0.5
    centre = boxes.corners_to_centre
    expected = F.cross_entropy(x[:, 0, 0, :10], y) + 5 * (centre(predicted) - centre(truth)).abs().mean()
    assert torch.allclose(boxes.box_loss(_Oracle(), (x, y, truth)), expected)


# ---------------------------------------------------------------- translation

def test_lindish_grammar_on_worked_sentences():
    L = translation.LEXICON
    assert translation.to_lindish("the red fox saw the small cat") == \
        f"{L['fox']} {L['red']} {L['cat']}m {L['small']} ka {L['see']}"
    assert translation.to_lindish("two foxes chase three big cats") == \
        f"du {L['fox']}en tri {L['cat']}enm {L['big']} {L['chase']}"
    assert translation.to_lindish("the mouse sees two mice") == f"{L['mouse']} du {L['mouse']}enm {L['see']}"
    with pytest.raises(ValueError, match="expected a plural noun"):
        translation.to_lindish("two fox sees the cat")
    with pytest.raises(ValueError, match="unexpected words after the object: 'now'"):
        translation.to_lindish("the fox sees the cat now")


def test_lindish_words_are_distinct_invented_words():
    words = list(translation.LEXICON.values())
    assert len(set(words)) == len(words) == len(translation.NOUNS + translation.ADJECTIVES + translation.VERBS)
    assert not set(words) & set(translation.LEXICON)  # no Lindish word is an English word used here
    assert all(re.fullmatch(r"([bdfgklmnprstvz][aeiou]){2}", w) for w in words)


def test_translation_data_is_deterministic_with_new_test_sentences_of_known_words():
    sizes = {"validation": 20, "test": 40}  # the default 3,000 training sentences
    data = translation.make_translation(seed=0, sizes=sizes)
    assert data == translation.make_translation(seed=0, sizes=sizes)
    assert data["test"] != translation.make_translation(seed=1, sizes=sizes)["test"]
    prompts = {split: {e["prompt"] for e in examples} for split, examples in data.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["validation"] & prompts["test"]
    assert [e["kind"] for e in data["test"][:2]] == list(translation.KINDS)
    sentence = re.compile(r"translate to \w+: (.*)\n")
    seen = {w for e in data["train"] for w in (sentence.search(e["prompt"]).group(1) + " " + e["answer"]).split()}
    assert {w for e in data["test"] for w in e["answer"].split()} <= seen


def test_chrf_on_worked_examples():
    assert translation.chrf("the cat", "the cat") == 1.0
    assert translation.chrf("a b c", "abc") == 1.0  # spaces are ignored
    # abc vs abd: 1-grams 2/3 shared, 2-grams 1/2, 3-grams 0 (longer orders absent): P = R = 7/18
    assert translation.chrf("abc", "abd") == pytest.approx(7 / 18)
    # ab vs abcd: P_1 = 1, R_1 = 1/2; P_2 = 1, R_2 = 1/3; P = 1, R = 5/12; F2 = 5 P R / (4 P + R) = 25/53
    assert translation.chrf("ab", "abcd") == pytest.approx(25 / 53)
    assert translation.chrf("abcd", "ab") == pytest.approx(5 * (5 / 12) / (4 * 5 / 12 + 1))  # recall weighs more
    assert translation.chrf("aaa", "bbb") == 0.0
    assert translation.chrf("", "") == 1.0 and translation.chrf("", "x") == 0.0


def test_translation_scores_normalise_then_average():
    scores = translation.translation_scores(["Vipe lomi luve.", "netu"], ["vipe lomi luve", "netum"])
    assert scores["exact_match"] == 0.5
    assert scores["chrf"] == pytest.approx((1 + translation.chrf("netu", "netum")) / 2)
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        translation.translation_scores(["a"], ["a", "b"])


def test_predict_boxes_gives_logits_and_corner_boxes_that_evaluate_boxes_scores():
    from torch.utils.data import TensorDataset

    from ftlab.tasks.boxes import box_iou, box_model, evaluate_boxes, predict_boxes

    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 2, 3, 4, 5])
    truth = torch.tensor([[0.1, 0.2, 0.5, 0.6]] * 6)
    data = TensorDataset(x, y, truth)
    model = box_model("scratch", seed=0)
    logits, boxes = predict_boxes(model, data, batch_size=4)
    assert logits.shape == (6, 10) and boxes.shape == (6, 4)
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    scores = evaluate_boxes(model, data, batch_size=4)
    assert scores["accuracy"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
    assert scores["mean iou"] == pytest.approx(box_iou(boxes, truth).mean().item())
