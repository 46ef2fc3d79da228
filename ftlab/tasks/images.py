"""Image tasks, all generated or loaded offline: glyphs to pretrain on, digits and cells to fine-tune on.

Every image is ``(3, 32, 32)`` float32, grey or colour values ``v`` in [0, 1] normalised as
``x = (v - 0.5) / 0.5`` (so in [-1, 1]); labels are class indices. Each ``make_*`` returns
``{split: TensorDataset(x, y)}`` with ``x`` of shape ``(N, 3, 32, 32)`` and ``y`` of shape ``(N,)``;
``image_loader`` turns a split into ``(x, y)`` batches, ftlab's batch convention for
cross-entropy (see ``ftlab.train``).

* ``make_glyphs``: the 52 letters A-Z and a-z (no digits) drawn from the TrueType fonts that
  matplotlib ships, with random font, size, position, rotation, stroke width, blur and noise.
  It teaches strokes and curves, the pretraining task of ``tools/pretrain_resnet.py``.
* ``make_digits``: scikit-learn's 1797 handwritten digits (8x8, shipped with scikit-learn),
  upsampled to 32x32, with a few-labels option and a shifted test set (rotated, noisier digits).
* ``make_cells``: a synthetic fluorescence-microscopy task, one stained cell per image, normal or
  abnormal (enlarged nucleus, irregular nucleus, or several nuclei).

Why 32x32 and not upsampled to 64x64: the standard ResNet stem (7x7 stride-2 conv, then
max-pool) leaves 8x8 feature maps from 32x32 inputs, and that is enough here. Measured: the
glyph-pretrained ResNet-18 reaches 90.2% validation accuracy on the 52 letters (model card
data/resnet18_glyphs.md), and fine-tuned on digits it beats the same network from scratch by
11 to 24 points at 1 to 5 labels per class (``ftlab.transfer.compare_pretrained``); 64x64
inputs would cost four times the compute.

Cells are drawn as fluorescence microscopy (bright nuclei on a dark background, close up), not
as pale H&E-stained slides as before: on the pale look, letter features did not transfer and
every method stayed near chance with 5 labels per class. Test accuracy on 400 cells after 40
steps (batch 16, ``ftlab.compare.compare(..., "cells", measure=False)``), mean +- standard
deviation (min-max) over seeds 0, 1, 2:

==================  =================================  =================================
labels per class    pale H&E look (before)             fluorescence look (now)
==================  =================================  =================================
5, head only        0.475 +- 0.025 (0.452-0.502)       0.729 +- 0.048 (0.680-0.775)
5, LoRA             0.503 +- 0.028 (0.480-0.535)       0.732 +- 0.042 (0.688-0.770)
5, full             0.525 +- 0.007 (0.518-0.530)       0.729 +- 0.034 (0.692-0.760)
20, head only       0.542 +- 0.004 (0.540-0.548)       0.854 +- 0.010 (0.842-0.862)
20, LoRA            0.615 +- 0.028 (0.598-0.648)       0.852 +- 0.029 (0.822-0.880)
20, full            0.625 +- 0.030 (0.598-0.658)       0.862 +- 0.027 (0.840-0.892)
==================  =================================  =================================

The same ResNet-18 from random weights (``load_resnet("scratch")``) on the fluorescence cells:
head only 0.545 +- 0.055 (5 labels) and 0.593 +- 0.066 (20); full 0.650 +- 0.065 and
0.831 +- 0.010. So the letter features carry over: a head on them alone beats random features
by 18-26 points.
"""
from __future__ import annotations

import functools
import string
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ftlab.tasks import split_sizes

IMAGE_SIZE = 32
MEAN, STD = 0.5, 0.5  # x = (v - MEAN) / STD maps [0, 1] to [-1, 1], for every task here
SPLITS = ("train", "validation", "test")

GLYPH_CLASSES = list(string.ascii_uppercase + string.ascii_lowercase)  # 52 classes, label = index
GLYPH_SIZES = {"train": 15000, "validation": 1000, "test": 1000}
# Fonts from matplotlib's mpl-data/fonts/ttf that have real glyphs for all 52 letters. Left out:
# cmex10 and cmsy10 (symbols at the letters' code points), the Display and STIX size/non-Unicode
# fonts (no letters) and LastResort (one placeholder box for every character).
GLYPH_FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf",
]

DIGIT_CLASSES = [str(d) for d in range(10)]
DIGIT_SPLIT = {"validation": 30, "test": 50}  # per class; the rest (~100 per class) is train
DIGIT_SPLIT_SEED = 1234  # the splits and the shifted test set never change with ``seed``

CELL_CLASSES = ["normal", "abnormal"]
CELL_SIZES = {"train": 300, "validation": 200, "test": 400}


def _split_rng(seed: int, split: str) -> np.random.Generator:
    """One generator per (seed, split), so each split is reproducible on its own and differs from the others."""
    return np.random.default_rng([seed, SPLITS.index(split)])


def _to_tensor(values: np.ndarray) -> torch.Tensor:
    """``(N, H, W)`` grey or ``(N, H, W, 3)`` colour values in [0, 1] -> normalised ``(N, 3, H, W)`` float32."""
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, 3, H, W)
    return ((x - MEAN) / STD).contiguous()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: values in [0, 1], e.g. for ``plt.imshow(to_unit(x).permute(1, 2, 0))``."""
    return (x * STD + MEAN).clamp(0, 1)


def image_loader(dataset: TensorDataset, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """Batches ``(x, y)`` of a split: ``x`` is ``(B, 3, 32, 32)``, ``y`` is ``(B,)`` class indices.

    With ``shuffle=True`` the order is drawn from ``seed``, so a run is repeatable.
    """
    if len(dataset) == 0:
        raise ValueError("image_loader got an empty dataset")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


# ---------------------------------------------------------------- glyphs


def glyph_fonts() -> list[Path]:
    """Paths of the letter fonts in ``GLYPH_FONTS`` found in this matplotlib installation."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in GLYPH_FONTS if (folder / name).is_file()]
    if not paths:
        raise FileNotFoundError(f"none of the fonts {GLYPH_FONTS} is in {folder}; is matplotlib installed completely?")
    return paths


@functools.cache
def _font(path: Path):
    """The font at 64 px, and the height of its capital H (to scale every font to the same cap height)."""
    from PIL import ImageFont

    font = ImageFont.truetype(str(path), 64)
    left, top, right, bottom = font.getbbox("H")
    return font, bottom - top


def render_glyph(char: str, font_path: Path, rng: np.random.Generator) -> np.ndarray:
    """Draw one character as a ``(32, 32)`` grey image, ink values in [0, 1] on a black background.

    Drawn at 64 px on a 160x160 canvas and then: stroke width 0-3 px (thicker letters), rotation
    within +-20 degrees, capital height 40-85% of the image (lower case keeps its smaller size),
    a random position that keeps the letter inside, box-downsampling to 32x32, for half the
    images a blur (down to 8-16 px and back, like the 8x8 digits), ink brightness 0.7-1 and
    Gaussian noise with standard deviation 0-0.1.
    """
    from PIL import Image, ImageDraw

    font, cap_height = _font(font_path)
    canvas = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(canvas).text((80, 80), char, fill=255, font=font, anchor="mm",
                                stroke_width=int(rng.integers(0, 4)), stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    glyph = canvas.crop(canvas.getbbox())  # tight box around the ink
    size = 2 * IMAGE_SIZE  # work at twice the final resolution, then box-downsample (anti-aliasing)
    scale = rng.uniform(0.40, 0.85) * size / cap_height
    scale = min(scale, 0.95 * size / max(glyph.size))  # long letters (g, j, Q) still fit
    w, h = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
    glyph = glyph.resize((w, h), Image.BILINEAR)
    image = Image.new("L", (size, size), 0)
    image.paste(glyph, (int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))))
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    if rng.random() < 0.5:
        low = int(rng.integers(8, 17))
        image = image.resize((low, low), Image.BOX).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    v = np.asarray(image, dtype=np.float32) / 255.0 * rng.uniform(0.7, 1.0)
    v = v + rng.normal(0.0, rng.uniform(0.0, 0.1), v.shape)
    return np.clip(v, 0.0, 1.0)


def make_glyphs(seed: int = 0, sizes: dict | None = None, splits=SPLITS) -> dict[str, TensorDataset]:
    """Rendered letters A-Z, a-z: ``{split: TensorDataset(x (N, 3, 32, 32), y (N,))}``, 52 classes.

    Defaults: 15,000 train, 1,000 validation, 1,000 test images (``GLYPH_SIZES``; ``sizes``
    overrides some), classes balanced and in random order. Each split has its own random
    stream drawn from ``(seed, split)``: the same seed gives the same tensors, and a split can
    be generated alone (``splits=("validation",)``) with the same images. Font, size, position,
    rotation, stroke, blur and noise are drawn per image (``render_glyph``). About 1 s per
    1,000 images.
    """
    sizes = split_sizes(sizes, GLYPH_SIZES)
    fonts = glyph_fonts()
    data = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; splits are {list(SPLITS)}")
        rng = _split_rng(seed, split)
        n = sizes[split]
        labels = rng.permutation(np.arange(n) % len(GLYPH_CLASSES))
        images = np.stack([render_glyph(GLYPH_CLASSES[k], fonts[rng.integers(len(fonts))], rng) for k in labels])
        data[split] = TensorDataset(_to_tensor(images), torch.from_numpy(labels).long())
    return data


# ---------------------------------------------------------------- digits


def _rotate(v: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate ``(N, 1, H, W)`` images about their centre by ``degrees`` ``(N,)``, black outside."""
    a = torch.deg2rad(degrees)
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(v.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@functools.lru_cache(maxsize=1)
def _digit_splits() -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor]:
    """The digits at 32x32 in [0, 1] ``(1797, 1, 32, 32)``, labels, split indices and the shifted test images.

    Cached: every ``make_digits`` call shares this fixed part and only picks its few labels.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    v = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    v = F.interpolate(v, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(digits.target, dtype=torch.long)

    rng = np.random.default_rng(DIGIT_SPLIT_SEED)
    index = {split: [] for split in SPLITS}
    for c in range(len(DIGIT_CLASSES)):
        members = rng.permutation(np.flatnonzero(digits.target == c))
        n_val, n_test = DIGIT_SPLIT["validation"], DIGIT_SPLIT["test"]
        index["validation"] += list(members[:n_val])
        index["test"] += list(members[n_val:n_val + n_test])
        index["train"] += list(members[n_val + n_test:])
    index = {split: rng.permutation(np.array(ids)) for split, ids in index.items()}

    test = v[index["test"]]
    angle = torch.from_numpy(rng.uniform(15, 30, len(test)) * rng.choice([-1.0, 1.0], len(test))).float()
    noise = torch.from_numpy(rng.normal(0.0, 0.15, tuple(test.shape))).float()
    shifted = (_rotate(test, angle) + noise).clamp(0, 1)
    return v, y, index, shifted


def make_digits(labels_per_class: int | None = None, seed: int = 0) -> dict[str, TensorDataset]:
    """scikit-learn's handwritten digits at 32x32: ``{"train", "validation", "test", "test_shifted"}``.

    The 1797 digits (8x8, values 0-16) are scaled to [0, 1] and upsampled bilinearly to
    32x32 (grey, copied to 3 channels), then normalised like the glyphs. Fixed stratified
    splits: 30 per class validation (300), 50 per class test (500), the rest train (997).
    ``test_shifted`` is the test split rotated by 15-30 degrees (either way) with Gaussian
    noise (standard deviation 0.15) added: the same digits, a shifted distribution.

    ``labels_per_class=k`` keeps exactly ``k`` training images per class (``seed`` picks
    which; at most 94, the smallest class); ``None`` keeps all. The splits and
    ``test_shifted`` do not depend on ``seed``.
    """
    v, y, index, shifted = _digit_splits()
    index = dict(index)
    if labels_per_class is not None:
        train = index["train"]
        available = min(int((y[train] == c).sum()) for c in range(len(DIGIT_CLASSES)))
        if not isinstance(labels_per_class, int) or not 1 <= labels_per_class <= available:
            raise ValueError(f"labels_per_class must be a whole number from 1 to {available} (or None for all), "
                             f"got {labels_per_class!r}")
        pick = np.random.default_rng([seed, labels_per_class])
        index["train"] = np.concatenate([pick.permutation(train[y[train].numpy() == c])[:labels_per_class]
                                         for c in range(len(DIGIT_CLASSES))])

    data = {split: TensorDataset(_to_tensor(v[ids, 0].numpy()), y[ids]) for split, ids in index.items()}
    data["test_shifted"] = TensorDataset(_to_tensor(shifted[:, 0].numpy()), y[index["test"]])
    return data


# ---------------------------------------------------------------- cells


def _blob(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float, wobble: float,
          rng: np.random.Generator) -> np.ndarray:
    """Soft mask of a blob ``r(phi) = radius * (1 + sum_k a_k cos(k phi + p_k))``, k = 2..5, |a_k| <= wobble."""
    a = rng.uniform(0, wobble, 4)
    p = rng.uniform(0, 2 * np.pi, 4)
    phi = np.arctan2(yy - cy, xx - cx)
    edge = radius * (1 + sum(a[i] * np.cos((i + 2) * phi + p[i]) for i in range(4)))
    return np.clip(edge - np.hypot(xx - cx, yy - cy) + 0.5, 0.0, 1.0)  # 1 inside, 0 outside, 1 px soft edge


def render_cell(abnormal: bool, rng: np.random.Generator) -> np.ndarray:
    """One cell as a ``(32, 32, 3)`` colour image in [0, 1], fluorescence-microscopy style.

    A dark background, the cytoplasm in a dim green stain and the nucleus in a bright blue DNA
    stain (like DAPI). Drawn at 64x64 and box-downsampled. Normal: a roundish cell (radius 20-30 px
    at 64) with one round nucleus of 25-40% of the cell radius. Abnormal: one or two of: an
    enlarged nucleus (50-70% of the radius), an irregular, lobed nucleus outline (``_blob``'s
    wobble 0.45, a normal nucleus has 0.05), or 2-3 nuclei. Every image also has stain brightness
    jitter, up to three normal neighbour cells cut by the border, and pixel noise.

    Why this look (changed from pale H&E-like colours): the glyph ResNet was pretrained on bright
    letters on black, and the abnormal signs here are shapes (outline, size, count) of a bright
    object on a dark background, which the letter features encode; the close-up view (cells
    1.25 times larger than before) makes a nucleus a few pixels wider at 32x32. The figures before
    and after the change are in the module docstring.
    """
    size = 2 * IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    background = np.array([0.02, 0.02, 0.03]) + rng.normal(0, 0.01, 3)
    cytoplasm = np.array([0.15, 0.35, 0.15]) + rng.normal(0, 0.03, 3)
    nucleus = np.array([0.55, 0.70, 1.00]) + rng.normal(0, 0.04, 3)
    image = np.broadcast_to(background, (size, size, 3)).copy()

    def paint(mask, colour):
        image[:] = image * (1 - mask[..., None]) + mask[..., None] * colour

    for _ in range(int(rng.integers(0, 4))):  # neighbours, centred outside the image
        side = rng.uniform(0, 2 * np.pi)
        cx, cy = size / 2 + 60 * np.cos(side), size / 2 + 60 * np.sin(side)
        r = rng.uniform(20, 30)
        paint(_blob(xx, yy, cx, cy, r, 0.08, rng), cytoplasm)
        paint(_blob(xx, yy, cx, cy, r * rng.uniform(0.25, 0.4), 0.05, rng), nucleus)

    cx, cy = size / 2 + rng.uniform(-6, 6, 2)
    radius = rng.uniform(20, 30)
    paint(_blob(xx, yy, cx, cy, radius, 0.08, rng), cytoplasm)
    features = set()
    if abnormal:
        kinds = ["enlarged", "irregular", "multiple"]
        features = set(rng.choice(kinds, size=int(rng.integers(1, 3)), replace=False))
    ratio = rng.uniform(0.5, 0.7) if "enlarged" in features else rng.uniform(0.25, 0.4)
    wobble = 0.45 if "irregular" in features else 0.05
    count = int(rng.integers(2, 4)) if "multiple" in features else 1
    r_nucleus = radius * ratio / (np.sqrt(count) if count > 1 else 1.0)
    for k in range(count):
        offset = 0.0 if count == 1 else radius * 0.4
        angle = 2 * np.pi * k / count + rng.uniform(0, 2 * np.pi)
        nx, ny = cx + offset * np.cos(angle), cy + offset * np.sin(angle)
        paint(_blob(xx, yy, nx, ny, r_nucleus, wobble, rng), nucleus * rng.uniform(0.85, 1.1))

    image = image.reshape(IMAGE_SIZE, 2, IMAGE_SIZE, 2, 3).mean(axis=(1, 3))  # (32, 32, 3)
    return np.clip(image + rng.normal(0, 0.03, image.shape), 0.0, 1.0)


def make_cells(seed: int = 0, sizes: dict | None = None) -> dict[str, TensorDataset]:
    """Synthetic fluorescence microscopy: ``{"train", "validation", "test"}``, one cell per image, 0 normal, 1 abnormal.

    Defaults: 300 train, 200 validation, 400 test (``CELL_SIZES``), classes balanced and
    shuffled; each split has its own random stream from ``(seed, split)`` (``render_cell``).
    """
    sizes = split_sizes(sizes, CELL_SIZES)
    data = {}
    for split in SPLITS:
        rng = _split_rng(seed, split)
        labels = rng.permutation(np.arange(sizes[split]) % 2)
        images = np.stack([render_cell(bool(k), rng) for k in labels])
        data[split] = TensorDataset(_to_tensor(images), torch.from_numpy(labels).long())
    return data
