"""Rendered shapes: the toy data set the demo model learns from and the methods are
measured on . Every image is 1 to 4 flat-coloured shapes on a
plain background, with a caption naming each object and its instance mask, so the
evaluator's segmenter is exact: segmentation by colour.

Deterministic by seed: ``scene(seed)`` always draws the same scene.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = (245, 245, 240)
COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 60, 180), "orange": (240, 130, 30)}
KINDS = ("circle", "square", "triangle")
TRAIN_SEED_BASE = 10_000_000   # training scenes' seeds start here; evaluation uses small seeds
EVAL_SEED_BASE = 0             # held-out scenes' seeds start here
VOCABULARY = ("a", "and", ",", *COLORS, *KINDS)    # every word a caption can have


@dataclass(frozen=True)
class Shape:
    color: str
    kind: str
    box: tuple[int, int, int, int]     # x0, y0, x1, y1 in pixels

    @property
    def words(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def xywh(self) -> tuple[int, int, int, int]:
        """The box as Bind Region to Words takes it: left, top, width, height."""
        x0, y0, x1, y1 = self.box
        return x0, y0, x1 - x0 + 1, y1 - y0 + 1


@dataclass
class Scene:
    size: int
    shapes: list[Shape] = field(default_factory=list)

    @property
    def caption(self) -> str:
        names = [f"a {s.words}" for s in self.shapes]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def draw(draw_ctx: ImageDraw.ImageDraw, shape: Shape, fill) -> None:
    x0, y0, x1, y1 = shape.box
    if shape.kind == "circle":
        draw_ctx.ellipse(shape.box, fill=fill)
    elif shape.kind == "square":
        draw_ctx.rectangle(shape.box, fill=fill)
    else:
        draw_ctx.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def scene(seed: int, size: int = 128, max_objects: int = 4) -> Scene:
    """1..max_objects shapes of distinct colours, non-overlapping boxes where possible."""
    rng = random.Random(seed)
    count = rng.randint(1, max_objects)
    colors = rng.sample(sorted(COLORS), count)
    out = Scene(size)
    for color in colors:
        for _ in range(50):                                    # look for a free spot
            side = rng.randint(size // 5, size // 2)
            x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            if all(box[2] < s.box[0] or s.box[2] < box[0] or box[3] < s.box[1] or s.box[3] < box[1] for s in out.shapes):
                break
        out.shapes.append(Shape(color, rng.choice(KINDS), box))
    return out


def held_out(count: int, objects: tuple[int, int], size: int = 128):
    """(seed, scene) of the first ``count`` held-out scenes with objects[0]..objects[1]
    objects: the evaluation's sets, the same in every row and every run."""
    seed = EVAL_SEED_BASE
    while count:
        s = scene(seed, size=size)
        if objects[0] <= len(s.shapes) <= objects[1]:
            yield seed, s
            count -= 1
        seed += 1


def render(s: Scene) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """The image, and each object's instance mask (bool, size x size) by its words."""
    image = Image.new("RGB", (s.size, s.size), BACKGROUND)
    ctx = ImageDraw.Draw(image)
    masks = {}
    for shape in s.shapes:
        draw(ctx, shape, COLORS[shape.color])
        mask = Image.new("L", (s.size, s.size), 0)
        draw(ImageDraw.Draw(mask), shape, 255)
        masks[shape.words] = np.asarray(mask) > 127
    return image, masks


def write_pairs(folder, seeds) -> int:
    """Scenes as training pairs for scripts/train_heads.py --pairs: ``<seed>.png``, the
    caption in ``<seed>.txt``, and per object phrase its mask PNG, listed in
    ``<seed>.masks.json`` (mask supervision)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds:
        s = scene(seed)
        image, masks = render(s)
        image.save(folder / f"{seed}.png")
        (folder / f"{seed}.txt").write_text(s.caption)
        names = {}
        for i, (phrase, mask) in enumerate(masks.items()):
            names[phrase] = f"{seed}.mask{i}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / names[phrase])
        (folder / f"{seed}.masks.json").write_text(json.dumps(names))
        count += 1
    return count
