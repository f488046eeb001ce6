"""The heads trainer's data, shared by Train MaskAttn Heads and scripts/train_heads.py:
image + caption pairs (+ optional per-phrase masks) from a folder, encoded with the
model's own VAE and CLIP, and the noise and sigma of each sample, drawn from (seed, step,
sample index) so that they depend on neither the batch split nor the process count.

A folder holds ``x.png`` + ``x.txt`` (the caption) and optionally ``x.masks.json``:
{"phrase of the caption": "mask.png", ...} for mask supervision. Host-free but for the
CLIP, VAE and model objects it is handed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..maskattn_ops.regions import WordNotInPrompt
from . import text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


class DataError(ValueError):
    """Pairs that cannot be trained on; the message names the source."""


@dataclass
class Sample:
    image: Path
    caption: str
    # phrase of the caption -> its instance mask at image size (mask supervision only)
    masks: dict[str, Callable[[], Image.Image]] = field(default_factory=dict)


def _mask_reader(path: Path) -> Callable[[], Image.Image]:
    return lambda: _open(path, "L")


def _read_masks(masks_json: Path, caption: str) -> dict[str, Callable[[], Image.Image]]:
    """A pair's masks file, checked now (a bad file fails before any training step)."""
    try:
        listed = json.loads(masks_json.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{masks_json}: not a JSON object of phrase -> mask file ({e})") from None
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise DataError(f"{masks_json}: not a JSON object of phrase -> mask file name")
    masks = {}
    for phrase, name in listed.items():
        if phrase.lower() not in caption.lower():
            raise DataError(f"{masks_json}: phrase {phrase!r} is not in the caption {caption!r}")
        path = masks_json.parent / name
        if not path.is_file():
            raise DataError(f"{masks_json}: mask file {name!r} of {phrase!r} does not exist")
        masks[phrase] = _mask_reader(path)
    return masks


def pairs_from_folder(folder: Path) -> list[Sample]:
    """The folder's images that have a same-named .txt caption, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    samples = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        caption_file = image.with_suffix(".txt")
        if not caption_file.is_file():
            continue
        caption = caption_file.read_text(encoding="utf-8").strip()
        masks_json = image.with_suffix(".masks.json")
        masks = _read_masks(masks_json, caption) if masks_json.is_file() else {}
        samples.append(Sample(image, caption, masks))
    if not samples:
        raise DataError(f"{folder}: no image with a same-named .txt caption")
    return samples


def fit(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, centre crop to size x size (images and masks alike)."""
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def _open(path: Path, mode: str) -> Image.Image:
    try:
        return Image.open(path).convert(mode)
    except (OSError, ValueError) as e:     # truncated, not an image, unknown format
        raise DataError(f"{path}: not a readable image ({e})") from None


def load_image(path: Path, size: int) -> torch.Tensor:
    """(size, size, 3) in [0, 1], as IMAGE."""
    return torch.from_numpy(np.asarray(fit(_open(path, "RGB"), size), dtype=np.float32) / 255.0)


def epoch_order(n: int, epoch: int, seed: int, rank: int, world: int, batch: int) -> list[list[int]]:
    """This process's batches for one epoch, as DistributedSampler(shuffle, drop_last)
    orders them: rank r takes every world-th index, so the union of the ranks' b-th
    batches is the b-th block of world * batch indices of the shared permutation."""
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = perm[rank::world][: n // world]
    return [per_rank[i: i + batch] for i in range(0, len(per_rank) - batch + 1, batch)]


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
            # cached: one image at a time, so that a latent does not depend on which batch
            # first held it (a resumed run meets the images in other company)
            groups = [[s] for s in todo] if self.cache is not None else [todo]
            for group in groups:
                images = torch.stack([load_image(s.image, self.resolution) for s in group])
                encoded = self.model.model.process_latent_in(self.vae.encode(images)).cpu()
                fresh.update({s.image: z for s, z in zip(group, encoded)})
            if self.cache is not None:
                self.cache.update(fresh)
        return torch.stack([fresh[s.image] if s.image in fresh else self.cache[s.image] for s in samples])

    def positions(self, sample: Sample, tokens: dict, phrase: str) -> list[int]:
        try:
            return text.positions(self.clip, tokens, phrase)
        except WordNotInPrompt as e:
            raise DataError(f"{sample.image}: mask phrase {phrase!r}: {e} ({sample.caption!r})") from None

    @torch.no_grad()
    def __call__(self, samples: list[Sample], device):
        """-> latent, context, y (None without adm), targets (per sample: [(phrase positions, mask (H, W))])."""
        latent = self.latents(samples).to(device)
        contexts, pooled, targets = [], [], []
        for s in samples:
            tokens = text.tokenize(self.clip, s.caption)   # one tokenization: encoding and positions
            cond, pool = self.clip.encode_from_tokens(tokens, return_pooled=True)
            contexts.append(cond)
            pooled.append(pool)
            targets.append([(self.positions(s, tokens, phrase),
                             torch.from_numpy(np.asarray(fit(mask(), self.resolution), dtype=np.float32) / 255.0))
                            for phrase, mask in s.masks.items()])
        r = self.resolution
        # SDXL's pooled text and size embeddings; None for SD1.x/SD2.x, which have no adm input
        y = self.model.model.encode_adm(pooled_output=torch.cat(pooled), width=r, height=r, target_width=r, target_height=r)
        return latent, torch.cat(contexts).to(device), None if y is None else y.to(device), targets


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
