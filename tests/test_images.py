import string

import numpy as np
import pytest
import torch

from ftlab.tasks import images
from ftlab.tasks.images import CELL_CLASSES, GLYPH_CLASSES, image_loader, make_cells, make_digits, make_glyphs, to_unit

SMALL = {"train": 104, "validation": 52, "test": 52}


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def _assert_disjoint(data: dict) -> None:
    splits = [_rows(ds.tensors[0]) for ds in data.values()]
    for i in range(len(splits)):
        for j in range(i + 1, len(splits)):
            assert not splits[i] & splits[j]


@pytest.fixture(scope="module")
def glyphs():
    return make_glyphs(seed=0, sizes=SMALL)


def test_glyphs_same_seed_gives_the_same_tensors_and_another_seed_does_not(glyphs):
    again = make_glyphs(seed=0, sizes=SMALL)
    other = make_glyphs(seed=1, sizes={"train": 8}, splits=("train",))
    for split in SMALL:
        assert torch.equal(glyphs[split].tensors[0], again[split].tensors[0])
        assert torch.equal(glyphs[split].tensors[1], again[split].tensors[1])
    assert not torch.equal(other["train"].tensors[0], glyphs["train"].tensors[0][:8])


def test_glyph_split_generated_alone_is_the_same_images(glyphs):
    alone = make_glyphs(seed=0, sizes={"validation": 52}, splits=("validation",))
    assert list(alone) == ["validation"]
    assert torch.equal(alone["validation"].tensors[0], glyphs["validation"].tensors[0])


def test_glyphs_are_52_balanced_letter_classes_in_the_normalised_range(glyphs):
    assert list(string.ascii_uppercase + string.ascii_lowercase) == GLYPH_CLASSES
    x, y = glyphs["train"].tensors
    assert x.shape == (104, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(torch.bincount(y, minlength=52), torch.full((52,), 2))
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey, copied to RGB
    ink = to_unit(x).mean(dim=(1, 2, 3))
    assert (ink > 0.03).all()  # every image has a letter drawn on it


def test_glyph_splits_are_disjoint(glyphs):
    _assert_disjoint(glyphs)


def test_every_glyph_font_has_all_52_letters():
    from matplotlib.ft2font import FT2Font

    fonts = images.glyph_fonts()
    assert len(fonts) == len(images.GLYPH_FONTS) == 22
    for path in fonts:
        charmap = FT2Font(str(path)).get_charmap()
        assert all(ord(c) in charmap for c in GLYPH_CLASSES), path.name


def test_the_same_letter_in_two_fonts_draws_differently():
    fonts = images.glyph_fonts()
    a = images.render_glyph("g", fonts[0], np.random.default_rng(0))
    b = images.render_glyph("g", fonts[-1], np.random.default_rng(0))
    assert a.shape == (32, 32) and np.abs(a - b).mean() > 0.01


@pytest.mark.parametrize("bad", [{"train": 0}, {"train": 2.5}, {"holdout": 10}])
def test_bad_sizes_raise_a_clear_error(bad):
    with pytest.raises(ValueError, match="split"):
        make_glyphs(sizes=bad)
    with pytest.raises(ValueError, match="split"):
        make_cells(sizes=bad)


def test_unknown_glyph_split_raises():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_glyphs(splits=("dev",))


@pytest.fixture(scope="module")
def digits():
    return make_digits()


def test_digits_have_fixed_stratified_splits_at_32x32(digits):
    assert {k: len(v) for k, v in digits.items()} == {"train": 997, "validation": 300, "test": 500,
                                                      "test_shifted": 500}
    for split, per_class in (("validation", 30), ("test", 50)):
        assert torch.equal(torch.bincount(digits[split].tensors[1]), torch.full((10,), per_class))
    x = digits["train"].tensors[0]
    assert x.shape[1:] == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    _assert_disjoint({k: v for k, v in digits.items() if k != "test_shifted"})
    again = make_digits(seed=5)  # the seed never moves the splits
    for split in digits:
        assert torch.equal(again[split].tensors[0], digits[split].tensors[0])


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_few_labels_keeps_exactly_k_per_class_from_the_training_split(digits, k):
    few = make_digits(labels_per_class=k, seed=0)
    x, y = few["train"].tensors
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), k))
    assert _rows(x) <= _rows(digits["train"].tensors[0])
    assert torch.equal(few["test"].tensors[0], digits["test"].tensors[0])
    same = make_digits(labels_per_class=k, seed=0)
    other = make_digits(labels_per_class=k, seed=1)
    assert torch.equal(same["train"].tensors[0], x)
    assert not torch.equal(other["train"].tensors[0], x)


@pytest.mark.parametrize("bad", [0, 95, 2.5, "5"])
def test_impossible_labels_per_class_raises_a_clear_error(bad):
    with pytest.raises(ValueError, match="labels_per_class must be a whole number from 1 to 94"):
        make_digits(labels_per_class=bad)


def test_shifted_test_set_holds_the_test_digits_rotated_and_noisier(digits):
    test, shifted = digits["test"].tensors, digits["test_shifted"].tensors
    assert torch.equal(test[1], shifted[1])
    change = (to_unit(test[0]) - to_unit(shifted[0])).abs().mean(dim=(1, 2, 3))  # (500,)
    assert (change > 0.05).all()
    def roughness(x):  # noisier images differ more from one pixel to the next
        return (x[..., 1:] - x[..., :-1]).abs().mean()

    assert roughness(shifted[0]) > 1.5 * roughness(test[0])


def test_cells_are_deterministic_balanced_disjoint_and_learnable():
    sizes = {"train": 40, "validation": 20, "test": 40}
    cells = make_cells(seed=0, sizes=sizes)
    again = make_cells(seed=0, sizes=sizes)
    assert CELL_CLASSES == ["normal", "abnormal"]
    for split, n in sizes.items():
        x, y = cells[split].tensors
        assert x.shape == (n, 3, 32, 32) and torch.equal(x, again[split].tensors[0])
        assert torch.equal(torch.bincount(y), torch.tensor([n // 2, n // 2]))
    _assert_disjoint(cells)
    # fluorescence style: a dark background in the corners, and abnormal cells carry more bright
    # nucleus stain (high blue channel) on average
    x, y = cells["test"].tensors
    assert to_unit(x)[:, :, 0, 0].mean() < 0.2
    nucleus = (to_unit(x)[:, 2] > 0.5).float().mean(dim=(1, 2))  # (N,) fraction of nucleus pixels
    assert nucleus[y == 1].mean() > 1.3 * nucleus[y == 0].mean()


def test_image_loader_gives_xy_batches_in_a_seeded_order(digits):
    loader = image_loader(digits["validation"], batch_size=64, shuffle=True, seed=3)
    x, y = next(iter(loader))
    assert x.shape == (64, 3, 32, 32) and y.shape == (64,)
    x2, _ = next(iter(image_loader(digits["validation"], batch_size=64, shuffle=True, seed=3)))
    assert torch.equal(x, x2)
    assert sum(len(b[1]) for b in loader) == 300
    with pytest.raises(ValueError, match="batch_size must be positive"):
        image_loader(digits["validation"], batch_size=0)
