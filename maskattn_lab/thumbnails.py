"""A template's thumbnail (<name>.jpg beside its JSON, which ComfyUI's template browser
shows on the template's card) from the images the template saved when it ran."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 256        # the browser's template card is 256 px wide
CAPTION_HEIGHT = 22


def thumbnail(images: list[Path], caption: str | None = None) -> Image.Image:
    """The images in a near-square grid of CELL-sized cells (each fitted, aspect kept),
    with an optional caption band below."""
    if not images:
        raise ValueError("a thumbnail needs at least one image")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    band = CAPTION_HEIGHT if caption else 0
    sheet = Image.new("RGB", (cols * CELL, rows * CELL + band), (24, 24, 24))
    for i, path in enumerate(images):
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = CELL / max(im.size)
            fitted = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        x, y = (i % cols) * CELL, (i // cols) * CELL
        sheet.paste(fitted, (x + (CELL - fitted.width) // 2, y + (CELL - fitted.height) // 2))
    if caption:
        ImageDraw.Draw(sheet).text((6, rows * CELL + 5), caption, fill=(230, 230, 230))
    return sheet


def write_thumbnail(images: list[Path], target: Path, caption: str | None = None) -> Path:
    thumbnail(images, caption).save(target, "JPEG", quality=88)
    return target
