"""The lab's sources of training pairs beyond a folder (COCO captions with optional COCO
instance masks) and its models (a checkpoint file or a demo model). The folder reader,
the encoder and the noise draws are the product's (nodes/training_data.py), shared with
Train MaskAttn Heads.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image, ImageDraw

from . import host

host.import_host()
import comfy.sd  # noqa: E402

from comfyui_maskattn.nodes import demo_models  # noqa: E402
from comfyui_maskattn.nodes.training_data import DataError, Sample  # noqa: E402

DEMO_MODELS = ("tiny", "shapes")


def polygon_mask(size: tuple[int, int], polygons: list[list[float]]) -> Image.Image:
    mask = Image.new("L", size, 0)
    for poly in polygons:
        ImageDraw.Draw(mask).polygon(list(zip(poly[0::2], poly[1::2])), fill=255)
    return mask


def pairs_from_coco(captions_json: Path, images: Path, instances_json: Path | None = None) -> list[Sample]:
    """COCO captions (one sample per caption); with COCO instances, each category whose
    name is in the caption gets the union of its polygon masks (crowd RLEs are skipped)."""
    data = json.loads(captions_json.read_text())
    info = {img["id"]: img for img in data["images"]}
    masks_by_image: dict[int, dict[str, list]] = {}
    if instances_json:
        inst = json.loads(instances_json.read_text())
        names = {c["id"]: c["name"] for c in inst["categories"]}
        for ann in inst["annotations"]:
            if isinstance(ann.get("segmentation"), list):
                masks_by_image.setdefault(ann["image_id"], {}).setdefault(names[ann["category_id"]], []).extend(ann["segmentation"])
    samples = []
    for a in data["annotations"]:
        img = info.get(a["image_id"])
        if img is None:
            continue
        caption = a["caption"].strip()
        size = (img.get("width", 0), img.get("height", 0))
        masks = {name: (lambda s=size, p=polys: polygon_mask(s, p))
                 for name, polys in masks_by_image.get(a["image_id"], {}).items()
                 if re.search(rf"\b{re.escape(name)}\b", caption, re.IGNORECASE)}
        samples.append(Sample(images / img["file_name"], caption, masks))
    if not samples:
        raise DataError(f"{captions_json}: no captions for images in {images}")
    return samples


def load_models(ckpt: Path | None = None, demo_model: str | None = None):
    """MODEL, CLIP, VAE of a checkpoint file (the host's own loader) or a demo model."""
    if demo_model == "tiny":
        return demo_models.build_all(seed=0)
    if demo_model == "shapes":
        return demo_models.load_shapes_model(demo_models.SHIPPED)
    if demo_model is not None:
        raise ValueError(f"unknown demo model {demo_model!r}; one of {DEMO_MODELS}")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(ckpt), output_vae=True, output_clip=True, embedding_directory=None)
    return model, clip, vae
