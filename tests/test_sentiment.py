import pytest

from ftlab.tasks import text_loader
from ftlab.tasks.sentiment import NEGATIVE, POSITIVE, make_sentiment


def words(examples):
    return {w.strip(".,!") for text, _ in examples for w in text.split()}


def test_same_seed_gives_the_same_data_and_another_seed_differs():
    assert make_sentiment(seed=1) == make_sentiment(seed=1)
    assert make_sentiment(seed=1)["train"] != make_sentiment(seed=2)["train"]


def test_test_adjectives_never_occur_in_train_or_validation():
    data = make_sentiment(seed=0)
    held_out = set(POSITIVE["test"] + NEGATIVE["test"])
    assert not held_out & words(data["train"])
    assert not held_out & words(data["validation"])
    assert held_out <= words(data["test"])  # and every one of them is really used


def test_splits_are_balanced_and_sized_as_asked():
    data = make_sentiment(seed=0, sizes={"train": 50, "test": 20})
    assert len(data["train"]) == 50 and len(data["test"]) == 20
    for split in data.values():
        labels = [y for _, y in split]
        assert abs(labels.count(0) - labels.count(1)) <= 1


def test_bad_sizes_and_splits_are_rejected():
    with pytest.raises(ValueError, match="positive number"):
        make_sentiment(sizes={"train": 0})
    with pytest.raises(ValueError, match="unknown split"):
        make_sentiment(sizes={"dev": 10})


def test_text_loader_gives_padded_dict_batches(minilm):
    _, tokenizer = minilm
    batch = next(iter(text_loader(make_sentiment()["train"], tokenizer, batch_size=4)))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 4
    assert batch["labels"].shape == (4,)
    with pytest.raises(ValueError, match="no examples"):
        text_loader([], tokenizer)
