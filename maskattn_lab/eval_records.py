"""The evaluation's records on disk: per row a JSON-lines file of scores per set, and
every generated image kept as a PNG, read back without sampling (no host needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from . import shapes
from .host import REPO

RESULTS = REPO / "benchmarks" / "results" / "shapes_eval"      # default of --results
IMAGES = REPO / "data" / "shapes_eval_images"                  # default of --images (git-ignored)


def slug(name: str) -> str:
    """A row name as a file name."""
    return "".join(c if c.isalnum() or c in ".=-" else "_" for c in name)


def kept(row_name: str, results: Path, images: Path):
    """(record, scene, image) of each set of a finished row, the image read back from the
    kept PNGs: what --rescore and scripts/kind_errors.py read instead of sampling again."""
    records = [json.loads(line) for line in (results / f"{slug(row_name)}.jsonl").read_text().splitlines()]
    scenes = dict(shapes.held_out(len(records), (2, 4)))
    for record in records:
        image_path = images / slug(row_name) / f"{record['seed']}.png"
        if not image_path.exists():
            raise SystemExit(f"{image_path} is missing; rerun the row {row_name!r} "
                             "with scripts/evaluate_shapes.py, not --rescore")
        yield record, scenes[record["seed"]], np.asarray(Image.open(image_path).convert("RGB"))
