"""Object localisation, detection's simplest form: one handwritten digit on a cluttered canvas, find it and name it.

Each image is a ``(3, 64, 64)`` canvas (normalised like ``ftlab.tasks.images``) with one digit of
scikit-learn's digits (``make_digits``: the same fixed train/validation/test digits, and its
few-labels option), scaled to 18-34 px and placed at random, among clutter: 4-8 random strokes
and 3-6 dots of weaker ink, and pixel noise. The target is the class and the box of the digit's
ink, ``(x0, y0, x1, y1)`` in [0, 1] (fractions of the canvas width and height).

Few labels, many placements: the training split places each of its labelled digits
``placements`` times (default 8), each time somewhere else among new clutter. This is the
translation augmentation of detection training (the box moves with the object); the labels, a
class and a box per digit, still come from ``labels_per_class`` digits per class.

The model (``box_model``) is the ResNet-18 with one change at the top: the average pooling is
dropped, so its head ``fc`` sees the whole ``(512, 2, 2)`` map of a 64x64 image (where things
are, which pooling would throw away), normalises it (LayerNorm) and outputs ``num_classes``
logits and 4 box numbers: the
box's centre, width and height, each through a sigmoid into [0, 1], as DETR predicts boxes
(Carion et al. 2020). The loss (``box_loss``) is cross-entropy plus ``5 * L1`` of
``(cx, cy, w, h)``, DETR's L1 weight. Scores (``evaluate_boxes``): class
accuracy, mean IoU, and accuracy at IoU 0.5: the fraction with the right class and a box
overlapping the truth by IoU >= 0.5 (PASCAL VOC's criterion for a correct detection,
Everingham et al. 2010).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ftlab.tasks.images import MEAN, STD, make_digits, to_unit
from ftlab.validate import check_positive_int, eval_mode

CANVAS = 64
DIGIT_SIZES = (18, 34)  # the digit's 32x32 image is scaled to this many pixels, then its ink is boxed
BOX_WEIGHT = 5.0  # L1 box loss weight (DETR)
INK = 0.25  # a pixel of the scaled digit with more than this ink belongs to its box


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``a`` and ``b`` ``(N, 4)`` as ``(x0, y0, x1, y1)``; returns ``(N,)``.

    ``IoU = area(a & b) / (area(a) + area(b) - area(a & b))``; boxes with no area give 0.
    """
    if a.shape != b.shape or a.shape[-1] != 4:
        raise ValueError(f"box_iou needs two (N, 4) tensors of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    x0, y0 = torch.maximum(a[:, 0], b[:, 0]), torch.maximum(a[:, 1], b[:, 1])
    x1, y1 = torch.minimum(a[:, 2], b[:, 2]), torch.minimum(a[:, 3], b[:, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)  # (N,)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def _clutter(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Draw weak strokes and dots onto ``canvas`` ``(64, 64)`` in place."""
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] + 0.5
    for _ in range(int(rng.integers(4, 9))):  # strokes: segments 6-20 px long, about 1.5 px wide
        p = rng.uniform(0, CANVAS, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(6, 20)
        q = p + length * np.array([np.cos(angle), np.sin(angle)])
        d = q - p
        t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / (d @ d), 0, 1)
        dist = np.hypot(xx - p[0] - t * d[0], yy - p[1] - t * d[1])
        canvas[:] = np.maximum(canvas, np.clip(1.25 - dist, 0, 1) * rng.uniform(0.2, 0.5))
    for _ in range(int(rng.integers(3, 7))):  # dots of radius 1-2.5 px
        c, r = rng.uniform(0, CANVAS, 2), rng.uniform(1, 2.5)
        canvas[:] = np.maximum(canvas, np.clip(r - np.hypot(xx - c[0], yy - c[1]) + 0.5, 0, 1) * rng.uniform(0.2, 0.5))


def place_digit(digit: torch.Tensor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``(64, 64)`` canvas in [0, 1] with ``digit`` ``(32, 32)`` (values in [0, 1]) scaled and placed at random
    among clutter, and the box of its ink ``(x0, y0, x1, y1)`` in [0, 1]."""
    size = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
    scaled = F.interpolate(digit[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    rows, cols = np.flatnonzero((scaled > INK).any(1)), np.flatnonzero((scaled > INK).any(0))
    top, left = int(rng.integers(0, CANVAS - size + 1)), int(rng.integers(0, CANVAS - size + 1))
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    _clutter(canvas, rng)
    window = canvas[top:top + size, left:left + size]
    window[:] = np.maximum(window, scaled * rng.uniform(0.8, 1.0))
    canvas = np.clip(canvas + rng.normal(0, 0.05, canvas.shape), 0, 1)
    box = np.array([left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1], dtype=np.float32) / CANVAS
    return canvas.astype(np.float32), box


def make_boxes(labels_per_class: int | None = None, seed: int = 0, placements: int = 8) -> dict[str, TensorDataset]:
    """``{"train", "validation", "test"}`` of ``TensorDataset(x (N, 3, 64, 64), y (N,), boxes (N, 4))``.

    The digits are ``make_digits(labels_per_class, seed)``'s (train: ``labels_per_class`` per class,
    or all ~997; validation 300; test 500, never in train). Each training digit is placed
    ``placements`` times (module docstring), each validation and test digit once; placements
    are drawn from ``(seed, split)``. The same arguments give the same tensors.
    """
    check_positive_int("placements", placements)
    digits = make_digits(labels_per_class, seed=seed)
    data = {}
    for index, split in enumerate(("train", "validation", "test")):
        x, y = digits[split].tensors
        if split == "train":
            x, y = x.repeat_interleave(placements, 0), y.repeat_interleave(placements, 0)
        rng = np.random.default_rng([seed, index, 7])
        placed = [place_digit(to_unit(image[0]), rng) for image in x]
        canvases = torch.from_numpy(np.stack([c for c, _ in placed]))  # (N, 64, 64)
        boxes = torch.from_numpy(np.stack([b for _, b in placed]))  # (N, 4)
        x = ((canvases - MEAN) / STD).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()  # (N, 3, 64, 64)
        data[split] = TensorDataset(x, y, boxes)
    return data


def box_loader(dataset: TensorDataset, *, batch_size: int = 32, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """Batches ``(x, y, boxes)`` of a split: ``(B, 3, 64, 64)``, ``(B,)``, ``(B, 4)``; a seeded order when shuffled."""
    check_positive_int("batch_size", batch_size)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def box_model(name: str = "glyphs", num_classes: int = 10, seed: int = 0) -> nn.Module:
    """``ftlab.zoo.load_resnet(name)`` with no average pooling and a head
    ``fc = Sequential(LayerNorm(2048), Linear(2048, num_classes + 4))`` on the flattened ``(512, 2, 2)`` map.

    Still a torchvision ResNet (so ``ftlab.apply`` finds its convolutions and its head ``fc``);
    on a 64x64 image it returns ``(B, num_classes + 4)``: class logits, then 4 box numbers before
    the sigmoid (``split_outputs``). Why the LayerNorm: the features after the last ReLU are all
    positive, so every weight of a box output gets a gradient of the same sign, Adam moves them
    all by about ``lr`` at once, and the output jumps by ``lr`` times the sum of 2048 features,
    into the flat tail of the sigmoid, where it stays (measured: a head-only run at lr 1e-2
    ended with every box of zero IoU). Centred features do not add up that way.
    """
    from ftlab.zoo import load_resnet

    model = load_resnet(name, num_classes=num_classes, seed=seed)
    model.avgpool = nn.Identity()  # (B, 512, 2, 2) is flattened to (B, 2048) by ResNet.forward
    features = 512 * (CANVAS // 32) ** 2  # the ResNet downsamples by 32
    torch.manual_seed(seed)
    model.fc = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, num_classes + 4))
    return model


def corners_to_centre(boxes: torch.Tensor) -> torch.Tensor:
    """``(x0, y0, x1, y1)`` -> ``(cx, cy, w, h)``, both ``(N, 4)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def centre_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)``, both ``(N, 4)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def split_outputs(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, C), boxes (B, 4) as (x0, y0, x1, y1))`` from the model's ``(B, C + 4)`` output, whose last 4
    numbers are the box's centre, width and height before a sigmoid."""
    return out[:, :-4], centre_to_corners(torch.sigmoid(out[:, -4:]))


def box_loss(model: nn.Module, batch) -> torch.Tensor:
    """``CE(logits, y) + 5 * mean |(cx, cy, w, h) - true (cx, cy, w, h)|``: the ``loss_fn`` for ``ftlab.train.fit``."""
    x, y, boxes = batch
    out = model(x)
    logits, predicted = out[:, :-4], torch.sigmoid(out[:, -4:])  # (B, C), (B, 4) as (cx, cy, w, h)
    return F.cross_entropy(logits, y) + BOX_WEIGHT * F.l1_loss(predicted, corners_to_centre(boxes))


@torch.no_grad()
def predict_boxes(model: nn.Module, dataset: TensorDataset, *,
                  batch_size: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), boxes (N, 4) as (x0, y0, x1, y1))`` of ``model`` on every image of ``dataset``, on the CPU."""
    device = next(model.parameters()).device
    logits, boxes = [], []
    with eval_mode(model):
        for x, _, _ in box_loader(dataset, batch_size=batch_size):
            batch_logits, batch_boxes = split_outputs(model(x.to(device)))
            logits.append(batch_logits.cpu())
            boxes.append(batch_boxes.cpu())
    return torch.cat(logits), torch.cat(boxes)


def evaluate_boxes(model: nn.Module, dataset: TensorDataset, *, batch_size: int = 100) -> dict[str, float]:
    """``{"accuracy", "mean iou", "acc@iou0.5", "localised"}``: class accuracy, mean IoU, the fraction with
    the right class and IoU >= 0.5, and the fraction with IoU >= 0.5 whatever the class."""
    logits, predicted = predict_boxes(model, dataset, batch_size=batch_size)
    _, y, boxes = next(iter(box_loader(dataset, batch_size=len(dataset))))  # every label and box, in one batch
    correct, ious = logits.argmax(-1) == y, box_iou(predicted, boxes)
    localised = ious >= 0.5
    return {"accuracy": correct.float().mean().item(), "mean iou": ious.mean().item(),
            "acc@iou0.5": (correct & localised).float().mean().item(), "localised": localised.float().mean().item()}
