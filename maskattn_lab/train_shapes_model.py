"""Train the shapes demo model from scratch on rendered shapes (saved by
maskattn_lab/shapes_model.py, loaded by nodes/demo_models.py).

    python scripts/train_shapes_model.py --out weights/shapes_sdxl.safetensors
    python scripts/train_shapes_model.py --out ... --resume        # continue a stopped run
    python scripts/train_shapes_model.py --out ... --steps 2000,3000,5000  # the shipped model's schedule
    python scripts/train_shapes_model.py --family sd2 --vae-from weights/shapes_sdxl.safetensors --out ...

Two stages, one command: (1) the VAE (the host's TAESD: no normalisation layers, which
at small widths wash the colours out) learns to reconstruct crops of the shapes images,
then its own scale and shift are set so that, after the family's latent scale factor,
the UNet sees zero mean and unit variance (``--vae-from``: another shapes model's VAE,
normalised again); (2) the UNet and the text encoders (SDXL's two, or SD2.x's one)
learn together with the diffusion loss (v-prediction, timesteps from the host's own
discrete schedule), captions dropped 10% of the time so that CFG works,
with an EMA of the weights that is what gets saved. Scenes come from
maskattn_lab/shapes.py by seed: training seeds start at shapes.TRAIN_SEED_BASE, far from the
evaluation's. A resume file (``--out`` + ".resume.pt") is written every few minutes.
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import cli, host, scoring, shapes

host.import_host()
from comfy.taesd.taesd import Block  # noqa: E402

from comfyui_maskattn.nodes import demo_models  # noqa: E402
from comfyui_maskattn.nodes.head_training import output_scale  # noqa: E402

from . import shapes_model  # noqa: E402

log = logging.getLogger(__name__)
CAPTION_DROP = 0.1                 # empty caption rate (classifier-free guidance)
FOREGROUND_WEIGHT = 9.0            # VAE loss weight of shape pixels over background ones
POOL_CHUNK = 64                    # scenes encoded together


def scene_batch(first_seed: int, count: int, size: int):
    """Images in [-1, 1] (B, 3, H, W) and captions of scenes first_seed..first_seed+count-1."""
    images, captions = [], []
    for seed in range(first_seed, first_seed + count):
        s = shapes.scene(seed, size=size)
        image, _ = shapes.render(s)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        captions.append(s.caption)
    return torch.stack(images), captions


def taesd(vae):
    return vae.first_stage_model


def residual_init(ae) -> None:
    """He init with each residual block's last conv zeroed (blocks start as identity).
    TAESD has no norms: at torch's default init its 30-odd convs learned colours so
    slowly that purple and blue were still one colour after 600 steps; with this init
    they separate within 150."""
    for m in ae.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    for m in ae.modules():
        if isinstance(m, Block):
            torch.nn.init.zeros_(m.conv[-1].weight)


def train_vae(vae, args, state) -> None:
    """TAESD's encoder and decoder on image crops (it is convolutional), L1 in [0, 1]."""
    ae = taesd(vae)
    if "vae" not in state:
        residual_init(ae)
    parts = torch.nn.ModuleList([ae.taesd_encoder, ae.taesd_decoder]).train().requires_grad_(True)
    opt = torch.optim.AdamW(parts.parameters(), lr=args.vae_lr)
    if "vae_opt" in state:
        opt.load_state_dict(state["vae_opt"])
    step = state.get("vae_step", 0)
    crop = args.vae_crop
    bar = tqdm(total=args.vae_steps, initial=step, desc="vae", dynamic_ncols=True)
    last_save = time.monotonic()
    while step < args.vae_steps:
        images, _ = scene_batch(shapes.TRAIN_SEED_BASE + 7_000_000 + step * args.vae_batch, args.vae_batch, args.size)
        g = torch.Generator().manual_seed(step)
        y, x = (int(v) for v in torch.randint(0, args.size - crop + 1, (2,), generator=g))
        images = images[:, :, y:y + crop, x:x + crop] * 0.5 + 0.5
        recon = ae.taesd_decoder(ae.taesd_encoder(images))
        # Shapes cover a small part of an image: weight their pixels up, or the colours
        # (which the evaluation segments by) come last.
        background = torch.tensor(shapes.BACKGROUND, dtype=images.dtype).view(1, 3, 1, 1) / 255.0
        weight = 1.0 + FOREGROUND_WEIGHT * (images - background).abs().amax(1, keepdim=True).gt(0.05)
        loss = ((recon - images).abs() * weight).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{loss.item():.4f}")
        if time.monotonic() - last_save > args.save_minutes * 60:
            state.update(vae_step=step, vae_opt=opt.state_dict(), vae=ae.state_dict())
            save_resume(args, state)
            last_save = time.monotonic()
    bar.close()
    parts.eval().requires_grad_(False)
    state.update(vae_step=step, vae_opt=opt.state_dict(), vae=ae.state_dict())


def vae_ceiling(vae, args) -> dict[str, float]:
    """How the evaluator reads held-out 2-4 object scenes after a VAE round trip: a
    perfect diffusion model scores no better than this (precision, binding)."""
    scores = []
    for _, s in shapes.held_out(args.ceiling_scenes, (2, 4), size=args.size):
        named = [(x.color, x.kind) for x in s.shapes]
        precision, _, binding = scoring.precision_recall_binding(shapes_model.through_vae(vae, s), named)
        scores.append((precision, binding))
    precision, binding = np.mean(scores, axis=0)
    return {"precision": round(float(precision), 3), "binding": round(float(binding), 3)}


@torch.no_grad()
def normalize_latent(vae, latent_scale: float, args) -> tuple[float, float]:
    """TAESD's own vae_scale / vae_shift set so that the encoded latent x SDXL's scale
    factor has zero mean and unit std (what the UNet should see); returns the raw
    latent's mean and std."""
    ae = taesd(vae)
    images, _ = scene_batch(shapes.TRAIN_SEED_BASE + 9_000_000, args.norm_scenes, args.size)
    raw = ae.taesd_encoder(images * 0.5 + 0.5)
    mean, std = float(raw.mean()), float(raw.std())
    ae.vae_scale.fill_(std * latent_scale)           # encode: raw / scale + shift
    ae.vae_shift.fill_(-mean / (std * latent_scale))
    return mean, std


class LatentPool:
    """The training scenes, VAE-encoded once each: encoding costs as much as a UNet step
    on this CPU, so the diffusion stage cycles over a fixed pool of ``--pool`` scenes
    (encoded on first use, kept in the resume file) instead of fresh ones every step."""

    def __init__(self, vae, latent_format, args, state):
        self._vae = taesd(vae)
        self._latent_format, self._args = latent_format, args
        self.latents = state.setdefault("pool_latents", {})     # chunk index -> (latents, captions)

    def _chunk(self, index: int):
        if index not in self.latents:
            images, captions = scene_batch(shapes.TRAIN_SEED_BASE + index * POOL_CHUNK, POOL_CHUNK, self._args.size)
            with torch.no_grad():
                self.latents[index] = (self._latent_format.process_in(self._vae.encode(images)), captions)
        return self.latents[index]

    def batch(self, step: int):
        """Scenes step*B .. step*B+B-1 of the pool, cyclically."""
        size = self._args.pool // POOL_CHUNK * POOL_CHUNK
        ids = [(step * self._args.batch_size + i) % size for i in range(self._args.batch_size)]
        parts = [self._chunk(i // POOL_CHUNK) for i in ids]
        latents = torch.stack([part[0][i % POOL_CHUNK] for part, i in zip(parts, ids)])
        return latents, [part[1][i % POOL_CHUNK] for part, i in zip(parts, ids)]


def save_resume(args, state) -> None:
    tmp = Path(str(args.resume_path) + ".tmp")
    torch.save(state, tmp)
    tmp.replace(args.resume_path)


def lr_at(step: int, args) -> float:
    warm = min(1.0, (step + 1) / args.warmup)
    progress = step / max(1, args.steps)
    return args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_diffusion(model, clip, vae, args, state) -> tuple[torch.nn.Module, torch.nn.Module]:

    base = model.model
    unet, encoders = base.diffusion_model, clip.cond_stage_model
    params = list(unet.parameters()) + list(encoders.parameters())
    for p in params:
        p.requires_grad_(True)
    unet.train()
    encoders.train()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema = {"unet": copy.deepcopy(unet).eval().requires_grad_(False),
           "clip": copy.deepcopy(encoders).eval().requires_grad_(False)}
    if "unet" in state:
        unet.load_state_dict(state["unet"])
        encoders.load_state_dict(state["clip"])
        ema["unet"].load_state_dict(state["ema_unet"])
        ema["clip"].load_state_dict(state["ema_clip"])
        opt.load_state_dict(state["opt"])
    step = state.get("step", 0)
    # Each --steps the run was continued to restarts the cosine warm (lr_at is keyed to it), so
    # the weights depend on every target, not only the last: keep them all for the model file.
    if step < args.steps and state.get("step_targets", [])[-1:] != [args.steps]:
        state["step_targets"] = [*state.get("step_targets", []), args.steps]
    sampling = base.model_sampling
    pool = LatentPool(vae, base.latent_format, args, state)
    bar = tqdm(total=args.steps, initial=step, desc="unet+clip", dynamic_ncols=True)
    last_save, running = time.monotonic(), None
    while step < args.steps:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        latent, captions = pool.batch(step)
        drop = torch.rand(len(captions), generator=g) < CAPTION_DROP
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        timestep = torch.randint(0, len(sampling.sigmas), (len(captions),), generator=g)
        sigma = sampling.sigmas[timestep].float()
        noise = torch.randn(latent.shape, generator=g)
        context, pooled = shapes_model.encode_captions(clip, captions)
        # SDXL: the size the host passes at sampling, the latent's size x 8
        # (samplers.encode_model_conds); SD2.x has no adm input (None)
        y = base.encode_adm(pooled_output=pooled, width=args.size, height=args.size)
        x = sampling.noise_scaling(sigma, noise, latent)
        denoised = base.apply_model(x, sigma, c_crossattn=context, y=y)
        # MSE in the model's own output space (v for the shapes model, as its config says)
        loss = ((denoised - latent) / output_scale(sampling, sigma, latent)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for live, avg in ((unet, ema["unet"]), (encoders, ema["clip"])):
                for p, q in zip(live.parameters(), avg.parameters()):
                    q.lerp_(p.detach(), 1 - decay)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if time.monotonic() - last_save > args.save_minutes * 60 or step == args.steps:
            state.update(step=step, unet=unet.state_dict(), clip=encoders.state_dict(), opt=opt.state_dict(),
                         ema_unet=ema["unet"].state_dict(), ema_clip=ema["clip"].state_dict())
            save_resume(args, state)
            last_save = time.monotonic()
    bar.close()
    return ema["unet"], ema["clip"]


def step_targets(text: str) -> list[int]:
    """'5000' or '2000,3000,5000': rising step counts to train to, one after another."""
    try:
        targets = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: step counts separated by commas, e.g. 2000,3000,5000") from None
    if any(t <= 0 for t in targets) or targets != sorted(set(targets)):
        raise argparse.ArgumentTypeError(f"{text!r}: step counts must be positive and rising")
    return targets


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="the model file to write (.safetensors)")
    p.add_argument("--family", choices=["sdxl", "sd2"], default="sdxl",
                   help="UNet and text-encoder family: SDXL's (the shipped model) or SD2.x's (Endo's setting)")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="take the trained VAE of this shapes model file (its latent normalised again for this "
                        "family's scale factor) instead of training one: models side by side share their VAE")
    p.add_argument("--resume", action="store_true", help="continue from --out + '.resume.pt'")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (latent is size/8)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights' init, captions dropped, noise and timesteps")
    p.add_argument("--vae-steps", type=int, default=500, help="VAE stage steps")
    p.add_argument("--vae-batch", type=int, default=32, help="VAE stage batch (crops)")
    p.add_argument("--vae-crop", type=int, default=32, help="the VAE is convolutional: train on crops")
    p.add_argument("--vae-lr", type=float, default=1e-3, help="VAE stage AdamW learning rate")
    p.add_argument("--norm-scenes", type=int, default=256, help="scenes the VAE's latent mean and std are measured on")
    p.add_argument("--steps", type=step_targets, default=[2000],
                   help="diffusion steps; several (2000,3000,5000: the shipped model) continue the run to each in "
                        "turn, each a warm restart of the cosine learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="diffusion stage batch")
    p.add_argument("--pool", type=int, default=4_000, help="training scenes (VAE-encoded once)")
    p.add_argument("--lr", type=float, default=5e-4, help="diffusion stage peak learning rate (cosine to 10%%)")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps of each cosine")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    p.add_argument("--save-minutes", type=float, default=5.0, help="write the resume file this often")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--ceiling-scenes", type=int, default=100,
                   help="held-out scenes the VAE's round trip is scored on after its stage")
    p.add_argument("--export", action="store_true",
                   help="write --out from the resume file's EMA weights now, without training")
    args = p.parse_args(argv)
    targets, args.steps = args.steps, args.steps[-1]        # the settings record the last; the file all of them
    args.resume_path = Path(str(args.out) + ".resume.pt")
    cli.setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)



    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k not in ("out", "resume", "resume_path", "threads", "export", "ceiling_scenes", "family")}
    config = demo_models.ShapesModelConfig.for_family(
        args.family, image_size=args.size,
        train={**settings, "train_seed_base": shapes.TRAIN_SEED_BASE, "caption_drop": CAPTION_DROP})
    state = torch.load(args.resume_path, weights_only=False) if args.resume and args.resume_path.exists() else {}
    if state:
        log.info("resuming: vae step %s, diffusion step %s", state.get("vae_step", 0), state.get("step", 0))
    model, clip, vae = demo_models.build_shapes_model(config, seed=args.seed)
    if "vae" in state:
        vae.first_stage_model.load_state_dict(state["vae"])
    if "vae_std" not in state:
        if args.vae_from:
            _, _, trained_vae = demo_models.load_shapes_model(args.vae_from)
            vae.first_stage_model.load_state_dict(trained_vae.first_stage_model.state_dict())
        else:
            train_vae(vae, args, state)
        state["vae_mean"], state["vae_std"] = normalize_latent(vae, model.model.latent_format.scale_factor, args)
        state["vae"] = vae.first_stage_model.state_dict()
        save_resume(args, state)
    vae.first_stage_model.eval().requires_grad_(False)
    log.info("vae raw latent mean %.3f, std %.3f", state["vae_mean"], state["vae_std"])
    if "vae_ceiling" not in state:
        state["vae_ceiling"] = vae_ceiling(vae, args)
        save_resume(args, state)
    log.info("vae round trip of held-out scenes, as the evaluator reads them: %s", state["vae_ceiling"])
    if args.export:
        model.model.diffusion_model.load_state_dict(state["ema_unet"])
        clip.cond_stage_model.load_state_dict(state["ema_clip"])
        unet, encoders = model.model.diffusion_model, clip.cond_stage_model
        config.train["exported_at_step"] = state["step"]
    else:
        for target in targets:                              # each continuation as --resume --steps N runs it
            args.steps = target
            unet, encoders = train_diffusion(model, clip, vae, args, state)
    model.model.diffusion_model.load_state_dict(unet.state_dict())
    clip.cond_stage_model.load_state_dict(encoders.state_dict())
    config.train.update(vae_raw_mean=state["vae_mean"], vae_raw_std=state["vae_std"], vae_ceiling=state["vae_ceiling"],
                        step_targets=state.get("step_targets", [args.steps]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shapes_model.save(args.out, config, model, clip, vae)
    log.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)

