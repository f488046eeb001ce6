"""What trained gate heads do, measured on pairs with instance masks they did not train on.

    python scripts/inspect_heads.py --demo-model shapes --pairs data/shapes_pairs \\
        --heads diffusion-loss=weights/shapes_sdxl_heads.safetensors --heads ...

For fresh heads ("keep everything", the frozen model) and each heads file, at a few
noise levels of the model's own schedule (fixed noise): the diffusion loss, and how
often the gates keep each named phrase's tokens inside the phrase's mask and outside it,
and the other tokens. Heads that gate by where objects are keep "inside" near 1 and
"outside" low; heads that keep a random share everywhere show in = out. Prints a
markdown table (and writes it with --out).
"""
from __future__ import annotations

import logging

from pathlib import Path

import torch

from . import cli, host

host.import_host()
import comfy.model_management  # noqa: E402

from comfyui_maskattn.maskattn_ops.gate_head import start_tokens  # noqa: E402
from comfyui_maskattn.maskattn_ops.heads import HeadSet, load_heads  # noqa: E402
from comfyui_maskattn.maskattn_ops.regions import mask_to_grid  # noqa: E402
from comfyui_maskattn.maskattn_ops.sites import select_sites  # noqa: E402
from comfyui_maskattn.nodes import patching  # noqa: E402
from comfyui_maskattn.nodes.head_training import HeadTrainingStep  # noqa: E402
from comfyui_maskattn.nodes.training_data import Encoder, pairs_from_folder  # noqa: E402

from .head_data import DEMO_MODELS, load_models  # noqa: E402

log = logging.getLogger(__name__)
NOISE_SEED = 5


def keep_rates(site_logits: list[torch.Tensor], targets, threshold: float) -> tuple[float, float, float]:
    """(phrase tokens inside their masks, phrase tokens outside, other tokens): the mean
    share of locations where the gate is on, over sites, samples and phrases."""
    inside, outside, other = [], [], []
    for logits in site_logits:                                        # (B, T, h, w)
        keep = (torch.sigmoid(logits.float()) >= threshold).float()
        free = ~start_tokens(keep.shape[1])
        for b, sample_targets in enumerate(targets):
            named = torch.zeros(keep.shape[1], dtype=torch.bool)
            for positions, mask in sample_targets:
                covered = (mask_to_grid(mask[None], keep.shape[-2:]) > 0.5).view(keep.shape[-2:])   # (h, w)
                if covered.any():
                    inside.append(keep[b, positions][:, covered].mean())
                if (~covered).any():
                    outside.append(keep[b, positions][:, ~covered].mean())
                named[positions] = True
            other.append(keep[b, free & ~named].mean())
    mean = lambda xs: float(torch.stack(xs).mean()) if xs else float("nan")  # noqa: E731
    return mean(inside), mean(outside), mean(other)


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--demo-model", choices=DEMO_MODELS, default="shapes", help="the model the heads gate")
    p.add_argument("--pairs", type=Path, required=True, help="folder of image + caption + .masks.json")
    p.add_argument("--heads", action="append", default=[], metavar="NAME=PATH", help="heads files to inspect (repeat)")
    p.add_argument("--count", type=int, default=64,
                   help="pairs, the last of the folder (data/shapes_pairs ends with 1000 the heads trained on "
                        "data/shapes_pairs_1k never saw)")
    p.add_argument("--resolution", type=int, default=128, help="image size the pairs are cropped to (pixels)")
    p.add_argument("--levels", default="0,250,500,750,999", help="indices into the model's sigma schedule")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    cli.setup_logging()

    model, clip, vae = load_models(demo_model=args.demo_model)
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    device = comfy.model_management.get_torch_device()
    pairs = [s for s in pairs_from_folder(args.pairs) if s.masks][-args.count:]
    latent, context, y, targets = Encoder(model, clip, vae, args.resolution)(pairs, device)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(NOISE_SEED)).to(latent)
    sampling = model.model.model_sampling
    levels = [int(i) for i in args.levels.split(",")]
    sites = select_sites(patching.discover_sites(model), "mid-resolution")

    candidates = {"fresh (frozen model)": None, **dict(h.split("=", 1) for h in args.heads)}
    lines = [f"{len(pairs)} pairs from {args.pairs}, fixed noise; keep = share of locations where the gate is on",
             "", "| heads | sigma | diffusion loss | phrase inside mask | phrase outside mask | other tokens |",
             "|---|---|---|---|---|---|"]
    for name, path in candidates.items():
        heads = load_heads(path) if path else HeadSet.for_sites(sites)
        step = HeadTrainingStep(model, heads.to(device), threshold=heads.threshold)
        for level in levels:
            sigma = sampling.sigmas[level].repeat(len(pairs)).to(latent)
            with torch.no_grad():
                loss, site_logits = step.diffusion_loss(latent, noise, sigma, context, y, capture=True)
            inside, outside, other = keep_rates([s.cpu() for s in site_logits], targets, heads.threshold)
            lines.append(f"| {name} | {float(sigma[0]):.3f} | {loss.item():.4f} | {inside:.2f} | {outside:.2f} | {other:.2f} |")
            log.info(lines[-1])
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0

