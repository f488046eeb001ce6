"""The heads trainer's data: image + caption pairs (a folder, or COCO captions with
optional COCO instance masks), encoded with the checkpoint's own VAE and CLIP, and the
noise and sigmas of each sample, drawn from (seed, step, sample index) so that they do
not depend on the batch split or the process count.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import host

host.import_host()
import comfy.sd  # noqa: E402

from comfyui_maskattn.nodes import demo_models, text  # noqa: E402

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
DEMO_MODELS = ("tiny", "shapes")


class DataError(ValueError):
    """Pairs that cannot be trained on; the message names the source."""


@dataclass
class Sample:
    image: Path
    caption: str
    # phrase of the caption -> its instance mask at image size (mask supervision only)
    masks: dict[str, Callable[[], Image.Image]] = field(default_factory=dict)


def pairs_from_folder(folder: Path) -> list[Sample]:
    """``x.png`` + ``x.txt``; optional ``x.masks.json``: {"phrase": "mask.png", ...}."""
    samples = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = image.with_suffix(".txt")
        if not caption.is_file():
            continue
        masks_json = image.with_suffix(".masks.json")
        masks = {}
        if masks_json.is_file():
            masks = {phrase: (lambda f=folder / name: Image.open(f).convert("L"))
                     for phrase, name in json.loads(masks_json.read_text()).items()}
        samples.append(Sample(image, caption.read_text().strip(), masks))
    if not samples:
        raise DataError(f"{folder}: no image with a same-named .txt caption")
    return samples


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


def fit(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, centre crop to size x size (images and masks alike)."""
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: Path, size: int) -> torch.Tensor:
    """(size, size, 3) in [0, 1], as IMAGE."""
    return torch.from_numpy(np.asarray(fit(Image.open(path).convert("RGB"), size), dtype=np.float32) / 255.0)


def epoch_order(n: int, epoch: int, seed: int, rank: int, world: int, batch: int) -> list[list[int]]:
    """This process's batches for one epoch, as DistributedSampler(shuffle, drop_last)
    orders them: rank r takes every world-th index, so the union of the ranks' b-th
    batches is the b-th block of world * batch indices of the shared permutation."""
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = perm[rank::world][: n // world]
    return [per_rank[i: i + batch] for i in range(0, len(per_rank) - batch + 1, batch)]


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


class Encoder:
    """Images and captions -> what the UNet takes, with the checkpoint's own VAE and CLIP."""

    def __init__(self, model, clip, vae, resolution: int, cache_latents: bool = False):
        self.model, self.clip, self.vae, self.resolution = model, clip, vae, resolution
        # image path -> latent (CPU): on a CPU the VAE encode costs as much as the step
        self.cache = {} if cache_latents else None

    def latents(self, samples: list[Sample]) -> torch.Tensor:
        todo = [s for s in samples if self.cache is None or s.image not in self.cache]
        fresh = {}
        if todo:
            images = torch.stack([load_image(s.image, self.resolution) for s in todo])
            encoded = self.model.model.process_latent_in(self.vae.encode(images)).cpu()
            fresh = {s.image: z for s, z in zip(todo, encoded)}
            if self.cache is not None:
                self.cache.update(fresh)
        return torch.stack([fresh[s.image] if s.image in fresh else self.cache[s.image] for s in samples])

    @torch.no_grad()
    def __call__(self, samples: list[Sample], device):
        """-> latent, context, y, targets (per sample: [(phrase positions, mask (H, W))])."""
        latent = self.latents(samples).to(device)
        contexts, pooled, targets = [], [], []
        for s in samples:
            tokens = text.tokenize(self.clip, s.caption)   # one tokenization: encoding and positions
            cond, pool = self.clip.encode_from_tokens(tokens, return_pooled=True)
            contexts.append(cond)
            pooled.append(pool)
            targets.append([(text.positions(self.clip, tokens, phrase),
                             torch.from_numpy(np.asarray(fit(mask(), self.resolution), dtype=np.float32) / 255.0))
                            for phrase, mask in s.masks.items()])
        r = self.resolution
        y = self.model.model.encode_adm(pooled_output=torch.cat(pooled), width=r, height=r, target_width=r, target_height=r)
        return latent, torch.cat(contexts).to(device), y.to(device), targets


def noise_and_sigma(model_sampling, latent: torch.Tensor, seed: int, step: int, indices: list[int]):
    """Per sample, from (seed, step, dataset index): independent of batch split and rank."""
    noise, sigma = [], []
    for i, index in enumerate(indices):
        g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_000_003 + index) % 2**63)
        noise.append(torch.randn(latent.shape[1:], generator=g))
        t = torch.randint(0, len(model_sampling.sigmas), (1,), generator=g)
        sigma.append(model_sampling.sigmas[t].cpu())
    return torch.stack(noise).to(latent), torch.cat(sigma).to(latent)


EVAL_STEP = -1   # the noise "step" of the fixed evaluation batch, never a training step


@torch.no_grad()
def fixed_batch_loss(step_module, encode, pairs, sampling, seed: int, device, count: int) -> float:
    """The loss on the first ``count`` pairs with fixed noise and sigmas: comparable
    before and after training, unlike the noisy per-step loss."""
    indices = list(range(min(count, len(pairs))))
    latent, context, y, targets = encode([pairs[i] for i in indices], device)
    noise, sigma = noise_and_sigma(sampling, latent, seed, EVAL_STEP, indices)
    return step_module(latent, noise, sigma, context, y, targets).item()
