"""Maps -> labelled heatmap tiles as an IMAGE batch (B, H, W, 3) for Preview/Save Image."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14
# A perceptual dark-to-bright ramp (inferno's anchors): 0 is black, 1 is pale yellow.
RAMP = torch.tensor([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=torch.float32) / 255


def colormap(values: torch.Tensor) -> torch.Tensor:
    """(..., H, W) in [0, 1] -> (..., H, W, 3) RGB."""
    x = values.clamp(0, 1) * (len(RAMP) - 1)
    low = x.floor().long().clamp(max=len(RAMP) - 2)
    frac = (x - low)[..., None]
    return RAMP[low] * (1 - frac) + RAMP[low + 1] * frac


def _resize(maps: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    return torch.nn.functional.interpolate(maps[:, None].float(), size=size, mode=mode)[:, 0]


def outline(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) binary -> its boundary pixels (inside pixels with an outside neighbour)."""
    inside = mask > 0.5
    eroded = -torch.nn.functional.max_pool2d(-inside[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5
    return inside & ~eroded


def tile(maps: torch.Tensor, label: str, size: tuple[int, int], image: torch.Tensor | None = None,
         outlines: list[torch.Tensor] = ()) -> torch.Tensor:
    """(B, h, w) maps in [0, 1] -> (B, LABEL_HEIGHT + H, W, 3): heatmap (over ``image``
    (B, H', W', 3) when given), region outlines in white, the label above."""
    heat = colormap(_resize(maps, size))                                   # (B, H, W, 3)
    if image is not None:
        under = _resize(image.movedim(-1, 1).flatten(0, 1), size, "bilinear").unflatten(0, (image.shape[0], 3)).movedim(1, -1)
        heat = 0.5 * heat + 0.5 * under.expand_as(heat)
    for mask in outlines:
        edge = outline(_resize(mask, size)).expand(heat.shape[0], -1, -1)
        heat[edge] = 1.0
    strip = Image.new("RGB", (size[1], LABEL_HEIGHT), (24, 24, 24))
    ImageDraw.Draw(strip).text((3, 1), label, fill=(235, 235, 235), font=ImageFont.load_default())
    strip = torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255)[None].expand(heat.shape[0], -1, -1, -1)
    return torch.cat([strip, heat], dim=1)


def grid(rows: list[list[torch.Tensor]], gap: int = 2) -> torch.Tensor:
    """Tiles (B, h, w, 3), all the same size, in rows -> one (B, H, W, 3) image."""
    b, h, w, _ = rows[0][0].shape
    cols = max(len(r) for r in rows)
    out = torch.zeros(b, len(rows) * (h + gap) - gap, cols * (w + gap) - gap, 3)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            out[:, i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = t
    return out
