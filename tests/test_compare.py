"""compare's rank sweep: one LoRA run per rank, trainable parameters exactly r * (in + out) per adapted layer."""
import pytest

from ftlab.compare import rank_sweep

TINY = {"num_steps": 1, "batch_size": 4, "sizes": {"train": 8, "validation": 4, "test": 8}}


def test_rank_sweep_counts_r_times_in_plus_out_per_layer_and_adds_r_and_alpha_columns():
    df = rank_sweep([1, 2], targets=["query"], **TINY)
    assert list(df["r"]) == [1, 2] and list(df["alpha"]) == [2, 4]
    assert list(df["method"]) == ["r=1 alpha=2", "r=2 alpha=4"]
    # MiniLM: 6 query layers of 384 x 384; the classifier (384 * 2 + 2) trains in full in both runs
    assert df["trainable"].diff().iloc[1] == 6 * (384 + 384)
    assert df["test accuracy"].between(0, 1).all()


@pytest.mark.parametrize("ranks, alphas, message", [
    (4, None, "non-empty list"),
    ([], None, "non-empty list"),
    ([1, 4], [2], "one alpha per rank"),
    ([4, 4], None, "once"),
])
def test_rank_sweep_rejects_bad_ranks_before_training(ranks, alphas, message):
    with pytest.raises(ValueError, match=message):
        rank_sweep(ranks, alphas, num_steps=1)


def test_rank_sweep_reports_a_rank_that_does_not_fit_the_layer():
    with pytest.raises(ValueError, match="does not fit"):
        rank_sweep([1000], **TINY)
