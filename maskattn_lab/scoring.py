"""Scores generated images against the regions they were asked for, by segmenting with
the palette of maskattn_lab/shapes.py (exact on rendered shapes, nearest-colour on
generated ones).

- mIoU (Endo Table 1's measure): per bound phrase, IoU between its region and the pixels
  of its colour; averaged over phrases.
- object precision / recall (MaskAttn-SDXL's measure): objects found against the objects
  the caption names; attribute binding: the named colour has the named kind. An object is
  a colour's largest blob once fringes are opened away (see ``blob``), its kind read from
  the blob's shape (see ``kind_of``).

Generated images are blurred by the VAE (8x downsampling), which the reading of objects
must survive: where two colours meet, the blend is another palette colour (red + yellow
reads as orange, red + blue as purple), and corners round off. Counting those fringes
as objects and reading kinds from how full the bounding box is scored even the rendered
scenes, passed through the shapes model's VAE, at precision 0.84 and binding 0.58; the
evaluation's "rendered scene through the VAE" row measures that ceiling.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shapes import COLORS

PALETTE = np.array(list(COLORS.values()), dtype=np.float32)       # (C, 3)
NAMES = list(COLORS)
MAX_DISTANCE = 60.0        # farther than this from every palette colour: background
FRINGE = 2                 # opening radius (px): thinner bands are colour blends, not objects
CORNER = 0.25              # share of the box's side each corner cell spans (kind_of)
# kind_of's cut points: halfway between the ideal shapes' values (exact, large renders):
# top-half / bottom-half area is 1/3 for an apex-up triangle, 1 for circle and square;
# the corner cells are filled 1.0 by a square, 0.31 by a circle
TRIANGLE_BELOW = (1 / 3 + 1.0) / 2
SQUARE_ABOVE = (0.314 + 1.0) / 2


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


def colour_of(labels: np.ndarray, phrase: str) -> np.ndarray:
    """The pixels (from ``segment``) of a phrase's colour, its first word ("red circle")."""
    return labels == NAMES.index(phrase.split()[0])


def region_ious(image: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
    """Per phrase ("red circle" -> region mask): IoU(region, pixels of its colour)."""
    labels = segment(image)
    return {phrase: iou(mask, colour_of(labels, phrase)) for phrase, mask in regions.items()}


def region_miou(image: np.ndarray, regions: dict[str, np.ndarray]) -> float:
    """Mean over phrases of IoU(region, pixels of its colour)."""
    return float(np.mean(list(region_ious(image, regions).values())))


def kind_of(mask: np.ndarray) -> str:
    """circle / square / triangle of one blob, from two readings of its bounding box that
    blur leaves in place: an apex-up triangle has a third of its area in the top half,
    and only a square fills the box's corners."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = box.shape
    top, bottom = box[: h // 2].sum(), box[h - h // 2:].sum()
    if top < TRIANGLE_BELOW * bottom:
        return "triangle"
    ch, cw = max(1, round(h * CORNER)), max(1, round(w * CORNER))
    corners = np.mean([box[:ch, :cw].mean(), box[:ch, -cw:].mean(), box[-ch:, :cw].mean(), box[-ch:, -cw:].mean()])
    return "square" if corners > SQUARE_ABOVE else "circle"


def blob(mask: np.ndarray) -> np.ndarray:
    """A colour's object: its largest connected blob after an opening of radius FRINGE,
    which removes blends along other objects' edges and specks."""
    opened = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool), iterations=FRINGE)
    labels, count = ndimage.label(opened)
    if not count:
        return opened
    sizes = ndimage.sum(opened, labels, range(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def objects(image: np.ndarray, min_area: int = 30) -> dict[str, str]:
    """Colours with an object (its blob over min_area pixels) -> its kind."""
    labels = segment(image)
    found = {}
    for i, name in enumerate(NAMES):
        shape = blob(labels == i)
        if shape.sum() >= min_area:
            found[name] = kind_of(shape)
    return found


def precision_recall_binding(image: np.ndarray, named: list[tuple[str, str]]) -> tuple[float, float, float]:
    """Against the (colour, kind) objects a caption names: precision and recall of the
    colours found, and the share of named objects found with the right kind."""
    found = objects(image)
    hits = [c for c, _ in named if c in found]
    precision = len(hits) / len(found) if found else 0.0
    recall = len(hits) / len(named) if named else 1.0
    binding = sum(found.get(c) == k for c, k in named) / len(named) if named else 1.0
    return precision, recall, binding


KIND_ERRORS = ("right", "another named object's kind", "a kind not named", "missing")


def kind_errors(found: dict[str, str], named: list[tuple[str, str]]) -> list[str]:
    """For each named (colour, kind): is its colour drawn in its kind, in the kind the
    caption gives another object (an attribute leaking across objects, MaskAttn-SDXL's
    failure case), in a kind nobody named, or not at all (one of KIND_ERRORS)."""
    out = []
    for i, (colour, kind) in enumerate(named):
        others = {k for j, (_, k) in enumerate(named) if j != i}
        drawn = found.get(colour)
        out.append(KIND_ERRORS[3] if drawn is None else KIND_ERRORS[0] if drawn == kind
                   else KIND_ERRORS[1] if drawn in others else KIND_ERRORS[2])
    return out
