"""Regions that are not object-shaped: the evaluation's second set (issue 25).

The shapes model only ever drew whole circles, squares and triangles; a user's mask is
whatever they painted. Each held-out layout here has one region of a CATEGORY the
generator never draws, bound to words the model knows ("a red circle"):

- ring: an annulus (a circle's region with a hole of half its radius), words "<colour> circle";
- band: a horizontal or vertical band 8 to 14 px thick across the image, "<colour> square";
- tiny: a shape of 16 to 20 px (about 2% of the image), any kind;
- huge: a box of about 60% of the image, "<colour> square", alone in the scene;
- border: a shape whose box runs past the image's edge (cut by it), any kind;
- overlap: two shapes whose boxes overlap by a third to a half; the later one is drawn
  on top, so the earlier one's region to score is what stays visible, while the method
  is given both full masks (what a user who painted both would give).

Every layout but huge also has one ordinary object elsewhere. Deterministic by seed;
seeds from ODD_SEED_BASE, never trained on (the training scenes start at 10,000,000).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import BACKGROUND, COLORS, KINDS, Scene, Shape, draw

CATEGORIES = ("ring", "band", "tiny", "huge", "border", "overlap")
ODD_SEED_BASE = 500_000


@dataclass
class OddLayout:
    category: str
    scene: Scene                       # the caption's objects (colour, kind, box)
    given: dict[str, np.ndarray]       # words -> the region the method is given (bool, size x size)
    scored: dict[str, np.ndarray]      # words -> the region the image is scored against
    hole: np.ndarray | None = None     # ring: the hole, which should NOT take the ring's colour
    odd: str = ""                      # words of the odd region


def _shape_mask(shape: Shape, size: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(mask), shape, 255)
    return np.asarray(mask) > 127


def _free_box(rng: random.Random, size: int, taken: np.ndarray, side_range=(26, 44)) -> tuple:
    """A square box that does not touch ``taken`` (with a 4 px margin), or the last tried."""
    box = None
    for _ in range(200):
        side = rng.randint(*side_range)
        x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        if not taken[max(0, y0 - 4):y0 + side + 4, max(0, x0 - 4):x0 + side + 4].any():
            break
    return box


def layout(seed: int, category: str, size: int = 128) -> OddLayout:
    rng = random.Random(seed)
    colors = rng.sample(sorted(COLORS), 2)
    yy, xx = np.mgrid[:size, :size]
    hole = None
    if category == "ring":
        radius = rng.randint(22, 34)
        cx, cy = rng.randint(radius, size - radius - 1), rng.randint(radius, size - radius - 1)
        distance = np.hypot(xx - cx, yy - cy)
        region = (distance <= radius) & (distance > radius / 2)
        hole = distance <= radius / 2 - 1
        first = Shape(colors[0], "circle", (cx - radius, cy - radius, cx + radius, cy + radius))
    elif category == "band":
        thickness, start = rng.randint(8, 14), rng.randint(10, size - 24)
        region = np.zeros((size, size), bool)
        if rng.random() < 0.5:
            region[start:start + thickness] = True
            box = (0, start, size - 1, start + thickness - 1)
        else:
            region[:, start:start + thickness] = True
            box = (start, 0, start + thickness - 1, size - 1)
        first = Shape(colors[0], "square", box)
    elif category == "tiny":
        side = rng.randint(16, 20)
        x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
        first = Shape(colors[0], rng.choice(KINDS), (x0, y0, x0 + side - 1, y0 + side - 1))
        region = _shape_mask(first, size)
    elif category == "huge":
        w, h = rng.randint(95, 104), rng.randint(95, 104)           # 0.55 to 0.66 of the image
        x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
        first = Shape(colors[0], "square", (x0, y0, x0 + w - 1, y0 + h - 1))
        region = _shape_mask(first, size)
    elif category == "border":
        side = rng.randint(40, 60)
        x0 = rng.choice([rng.randint(-side // 2, -side // 4), rng.randint(size - 3 * side // 4, size - side // 2)])
        y0 = rng.randint(-side // 3, size - 2 * side // 3)
        first = Shape(colors[0], rng.choice(KINDS), (x0, y0, x0 + side - 1, y0 + side - 1))
        region = _shape_mask(first, size)
    elif category == "overlap":
        side = rng.randint(40, 56)
        x0, y0 = rng.randint(4, size - side - side // 2 - 4), rng.randint(4, size - side - 4)
        first = Shape(colors[0], rng.choice(KINDS), (x0, y0, x0 + side - 1, y0 + side - 1))
        shift = rng.randint(side // 2, 2 * side // 3)                 # overlap of a third to a half of the side
        x1 = min(x0 + shift, size - side)
        y1 = min(max(y0 + rng.randint(-side // 4, side // 4), 0), size - side)
        second = Shape(colors[1], rng.choice(KINDS), (x1, y1, x1 + side - 1, y1 + side - 1))
        given = {first.words: _shape_mask(first, size), second.words: _shape_mask(second, size)}
        scored = {first.words: given[first.words] & ~given[second.words], second.words: given[second.words]}
        return OddLayout(category, Scene(size, [first, second]), given, scored, odd=first.words)
    else:
        raise ValueError(f"no layout category {category!r}; categories are {CATEGORIES}")
    shapes, given = [first], {first.words: region}
    if category != "huge":
        x0, y0, x1, y1 = _free_box(rng, size, region)
        second = Shape(colors[1], rng.choice(KINDS), (x0, y0, x1, y1))
        shapes.append(second)
        given[second.words] = _shape_mask(second, size)
    return OddLayout(category, Scene(size, shapes), given, dict(given), hole, odd=first.words)


def held_out(count: int, size: int = 128):
    """(seed, layout) of the first ``count`` layouts, the categories in turn."""
    for index in range(count):
        seed = ODD_SEED_BASE + index
        yield seed, layout(seed, CATEGORIES[index % len(CATEGORIES)], size)


def render(odd: OddLayout) -> Image.Image:
    """What a perfect image would be: each scored region in its colour (for the grid)."""
    image = np.full((odd.scene.size, odd.scene.size, 3), BACKGROUND, np.uint8)
    for shape in odd.scene.shapes:
        image[odd.scored[shape.words]] = COLORS[shape.color]
    return Image.fromarray(image)
