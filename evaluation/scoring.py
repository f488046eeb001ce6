"""Scores generated images against the regions they were asked for, by segmenting with
the palette of evaluation/shapes.py (exact on rendered shapes, nearest-colour on
generated ones).

- mIoU (Endo Table 1's measure): per bound phrase, IoU between its region and the pixels
  of its colour; averaged over phrases.
- object precision / recall (MaskAttn-SDXL's measure): objects found (a colour present
  over min_area pixels, its kind read from the blob's fill of its bounding box) against
  the objects the caption names; attribute binding: the named colour has the named kind.
"""
from __future__ import annotations

import numpy as np

from .shapes import COLORS, KINDS

PALETTE = np.array(list(COLORS.values()), dtype=np.float32)       # (C, 3)
NAMES = list(COLORS)
MAX_DISTANCE = 60.0        # farther than this from every palette colour: background


def segment(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int: index into the palette's colours, or -1."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    distance = np.linalg.norm(pixels[:, None, :] - PALETTE[None], axis=-1)    # (HW, C)
    label = distance.argmin(1)
    label[distance.min(1) > MAX_DISTANCE] = -1
    return label.reshape(image.shape[:2])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def region_miou(image: np.ndarray, regions: dict[str, np.ndarray]) -> float:
    """Mean over phrases ("red circle" -> region mask) of IoU(region, pixels of its colour)."""
    labels = segment(image)
    scores = [iou(mask, labels == NAMES.index(phrase.split()[0])) for phrase, mask in regions.items()]
    return float(np.mean(scores))


def kind_of(mask: np.ndarray) -> str:
    """circle / square / triangle from how much of its bounding box a blob fills
    (pi/4 = 0.79, 1.0, 0.5)."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return min(zip((abs(fill - 0.785), abs(fill - 1.0), abs(fill - 0.5)), KINDS))[1]


def objects(image: np.ndarray, min_area: int = 30) -> dict[str, str]:
    """Colours present (over min_area pixels) -> their kind."""
    labels = segment(image)
    return {name: kind_of(labels == i) for i, name in enumerate(NAMES) if (labels == i).sum() >= min_area}


def precision_recall_binding(image: np.ndarray, named: list[tuple[str, str]]) -> tuple[float, float, float]:
    """Against the (colour, kind) objects a caption names: precision and recall of the
    colours found, and the share of named objects found with the right kind."""
    found = objects(image)
    hits = [c for c, _ in named if c in found]
    precision = len(hits) / len(found) if found else 0.0
    recall = len(hits) / len(named) if named else 1.0
    binding = sum(found.get(c) == k for c, k in named) / len(named) if named else 1.0
    return precision, recall, binding
