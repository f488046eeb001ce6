"""Train MaskAttn-SDXL gate heads on a frozen checkpoint (arXiv 2509.15357, Sec. 2.3).

    python scripts/train_heads.py --ckpt sdxl.safetensors --pairs data/ --out heads.safetensors
    python scripts/train_heads.py --ckpt sdxl.safetensors --coco-captions captions_train2014.json \\
        --images train2014/ --out heads.safetensors --steps 100000 --batch-size 4
    torchrun --nproc_per_node 8 scripts/train_heads.py ...      # DDP, one GPU per process

Data: a folder of image + caption pairs (``x.png`` + ``x.txt``), or a COCO captions JSON
with its image folder. Optional mask supervision (beyond the paper): instance masks per
phrase of the caption (``x.masks.json`` in the folder, or --coco-instances) add a BCE
term on the gates of the phrase's tokens, weighted by --mask-weight. Images are VAE-encoded and captions CLIP-encoded with the
checkpoint's own models; the loss is the diffusion loss in the model's own output space
at sigmas of its own schedule (nodes/training.py). Only the heads train. A resume file
(``--out`` + ".resume.pt": heads, optimizer, step) is written every --checkpoint-every
steps; --resume continues from it exactly (noise and sigmas are drawn per sample from
(seed, step, sample index), so they do not depend on the process count either).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_env  # noqa: E402

log = logging.getLogger("maskattn.train")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


# data ------------------------------------------------------------------------------
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
        raise SystemExit(f"--pairs {folder}: no image with a same-named .txt caption")
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
        raise SystemExit(f"--coco-captions {captions_json}: no captions for images in {images}")
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


# model ------------------------------------------------------------------------------
def load_models(args):
    import comfy.sd
    from comfyui_maskattn.nodes import tiny_sdxl
    from comfyui_maskattn.nodes import shapes_model
    if args.demo_model == "tiny":
        return tiny_sdxl.build_all(seed=0)
    if args.demo_model == "shapes":
        return shapes_model.load(shapes_model.SHIPPED)
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(args.ckpt), output_vae=True, output_clip=True, embedding_directory=None)
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
        from comfyui_maskattn.nodes import text
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


# loop -------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="SDXL checkpoint (.safetensors) to train heads for")
    src.add_argument("--demo-model", choices=["tiny", "shapes"],
                     help="tiny: the random tiny SDXL (tests); shapes: the shipped shapes model (use --resolution 128)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--pairs", type=Path, help="folder of image + same-named .txt caption")
    data.add_argument("--coco-captions", type=Path, help="COCO captions JSON (with --images)")
    p.add_argument("--images", type=Path, help="image folder of --coco-captions")
    p.add_argument("--coco-instances", type=Path, help="COCO instances JSON: masks for mask supervision")
    p.add_argument("--mask-weight", type=float, default=1.0,
                   help="weight of the mask supervision term where masks are given (beyond the paper; 0: off)")
    p.add_argument("--out", type=Path, required=True, help="heads file to write (.safetensors)")
    p.add_argument("--sites", default="mid-resolution", help='"mid-resolution", "all" or site names, comma-separated')
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4, help="per process; the global batch is this x processes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--mode", choices=["hard", "soft"], default="hard",
                   help="hard: binary gates with the straight-through estimator (the paper); soft: log-probability bias")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--cache-latents", action="store_true",
                   help="keep each image's latent in memory after its first encode (small datasets, CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from --out + .resume.pt")
    p.add_argument("--eval-pairs", type=int, default=8, help="pairs in the fixed evaluation batch (0: none)")
    args = p.parse_args(argv)
    if args.coco_captions and not args.images:
        p.error("--coco-captions needs --images")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    host_env.import_host(cpu=not use_cuda)
    host_env.load_package()
    import comfy.model_management
    from tqdm import tqdm
    from comfyui_maskattn.maskattn_ops.heads import HeadSet, save_heads
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import patching
    from comfyui_maskattn.nodes.training import HeadTrainingStep

    if world > 1:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    torch.manual_seed(args.seed)
    device = comfy.model_management.get_torch_device()
    model, clip, vae = load_models(args)
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    sites = select_sites(patching.discover_sites(model), args.sites.split(",") if "," in args.sites else args.sites)
    heads = HeadSet.for_sites(sites, embed_dim=args.embed_dim, threshold=args.threshold).to(device)
    step_module = HeadTrainingStep(model, heads, threshold=args.threshold, mode=args.mode,
                                   mask_weight=args.mask_weight)
    trainer = step_module
    if world > 1:
        trainer = torch.nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if use_cuda else None)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=args.lr, weight_decay=0.0)

    resume_path = Path(str(args.out) + ".resume.pt")
    step = 0
    if args.resume and resume_path.is_file():
        state = torch.load(resume_path, map_location=device, weights_only=True)
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        log.info(f"resumed from {resume_path} at step {step}")
    elif args.resume:
        log.warning(f"--resume: no {resume_path} yet, starting at step 0")

    pairs = pairs_from_folder(args.pairs) if args.pairs else pairs_from_coco(args.coco_captions, args.images, args.coco_instances)
    encode = Encoder(model, clip, vae, args.resolution, cache_latents=args.cache_latents)
    batches_per_epoch = len(pairs) // world // args.batch_size
    if batches_per_epoch == 0:
        raise SystemExit(f"{len(pairs)} pairs are fewer than one global batch ({world} x {args.batch_size})")
    sampling = model.model.model_sampling
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda)
    eval_before = fixed_batch_loss(step_module, encode, pairs, sampling, args.seed, device, args.eval_pairs) if args.eval_pairs else None
    if eval_before is not None:
        log.info(f"fixed-batch loss at step {step}: {eval_before:.5f}")
    losses, started = [], time.monotonic()
    bar = tqdm(total=args.steps, initial=step, desc="MaskAttn heads", disable=rank != 0)
    while step < args.steps:
        epoch, b = divmod(step, batches_per_epoch)
        indices = epoch_order(len(pairs), epoch, args.seed, rank, world, args.batch_size)[b]
        latent, context, y, targets = encode([pairs[i] for i in indices], device)
        noise, sigma = noise_and_sigma(sampling, latent, args.seed, step, indices)
        with autocast:
            loss = trainer(latent, noise, sigma, context, y, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % args.log_every == 0 or step == args.steps:
            recent = losses[-args.log_every:]
            log.info(f"step {step}/{args.steps}  loss {sum(recent) / len(recent):.5f}  "
                     f"{(time.monotonic() - started) / len(losses):.2f} s/step")
        if rank == 0 and (step % args.checkpoint_every == 0 or step == args.steps):
            torch.save({"heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, resume_path)
    bar.close()
    eval_after = fixed_batch_loss(step_module, encode, pairs, sampling, args.seed, device, args.eval_pairs) if args.eval_pairs else None
    if eval_after is not None:
        log.info(f"fixed-batch loss at step {step}: {eval_after:.5f}")
    if rank == 0:
        heads.training_summary = {
            "steps": step, "global_batch": args.batch_size * world, "lr": args.lr, "seed": args.seed,
            "resolution": args.resolution, "pairs": len(pairs), "sites": args.sites, "mode": args.mode,
            "mask_supervision": args.mask_weight if any(s.masks for s in pairs) else 0.0,
            "base": args.ckpt.name if args.ckpt else f"demo:{args.demo_model}",
            "final_loss": losses[-1] if losses else None, "fixed_batch_loss": [eval_before, eval_after], "method": "diffusion loss, frozen backbone (arXiv 2509.15357)",
        }
        save_heads(heads, args.out)
        log.info(f"wrote {args.out} ({sum(p.numel() for p in heads.parameters())} parameters)")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
