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
at sigmas of its own schedule (nodes/head_training.py: the loop Train MaskAttn Heads runs
too, with the same data reader). Only the heads train. A resume file
(``--out`` + ".resume.pt": heads, optimizer, step) is written every --checkpoint-every
steps; --resume continues from it exactly (noise and sigmas are drawn per sample from
(seed, step, sample index), so they do not depend on the process count either). The
heads file records a fingerprint of the checkpoint's weights at the gated sites, so that
Apply Masked Cross-Attention can say when it gates another model.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from . import cli, host

host.import_host()
from comfyui_maskattn.maskattn_ops.heads import save_heads  # noqa: E402
from comfyui_maskattn.nodes.head_training import HeadTrainer, ResumeError, TrainingSettings  # noqa: E402
from comfyui_maskattn.nodes.training_data import DataError, pairs_from_folder  # noqa: E402

from .head_data import DEMO_MODELS, load_models, pairs_from_coco  # noqa: E402

log = logging.getLogger(__name__)


def parse_args(argv=None):
    p = cli.parser(__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="SDXL checkpoint (.safetensors) to train heads for")
    src.add_argument("--demo-model", choices=DEMO_MODELS,
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
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (the total, also with --resume)")
    p.add_argument("--batch-size", type=int, default=4, help="per process; the global batch is this x processes")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (no weight decay)")
    p.add_argument("--embed-dim", type=int, default=32, help="width D of each head's feature and token embeddings")
    p.add_argument("--threshold", type=float, default=0.5, help="gate threshold (the paper: 0.5)")
    p.add_argument("--mode", choices=["hard", "soft"], default="hard",
                   help="hard: binary gates with the straight-through estimator (the paper); soft: log-probability bias")
    p.add_argument("--resolution", type=int, default=1024, help="image size the pairs are cropped to (pixels)")
    p.add_argument("--recompute", action="store_true",
                   help="gradient checkpointing: the frozen UNet keeps only its parts' inputs for the backward "
                        "(less memory, about one more forward)")
    p.add_argument("--cache-latents", action="store_true",
                   help="keep each image's latent in memory after its first encode (small datasets, CPU)")
    p.add_argument("--seed", type=int, default=0, help="seeds the heads' init, the data order, noise and sigmas")
    p.add_argument("--log-every", type=int, default=10, help="log the mean loss every this many steps")
    p.add_argument("--checkpoint-every", type=int, default=500, help="write the resume file every this many steps")
    p.add_argument("--resume", action="store_true", help="continue from --out + .resume.pt")
    p.add_argument("--eval-pairs", type=int, default=8, help="pairs in the fixed evaluation batch (0: none)")
    args = p.parse_args(argv)
    if args.coco_captions and not args.images:
        p.error("--coco-captions needs --images")
    return args


def settings_of(args) -> TrainingSettings:
    return TrainingSettings(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, embed_dim=args.embed_dim, threshold=args.threshold,
        mode=args.mode, sites=args.sites, resolution=args.resolution, seed=args.seed, mask_weight=args.mask_weight,
        recompute=args.recompute, cache_latents=args.cache_latents)


def main(argv=None) -> int:
    args = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    cli.setup_logging(quiet=rank != 0)
    if world > 1:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    try:
        pairs = (pairs_from_folder(args.pairs) if args.pairs
                 else pairs_from_coco(args.coco_captions, args.images, args.coco_instances))
    except DataError as e:
        raise SystemExit(f"{'--pairs' if args.pairs else '--coco-captions'} {e}") from None
    model, clip, vae = load_models(args.ckpt, args.demo_model)

    def distributed(module):
        index = torch.cuda.current_device() if use_cuda else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=[index] if use_cuda else None)

    try:
        trainer = HeadTrainer(model, clip, vae, pairs, settings_of(args), rank=rank, world=world,
                              wrap=distributed if world > 1 else (lambda m: m))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    resume_path = Path(str(args.out) + ".resume.pt")
    try:
        resumed = args.resume and trainer.resume_from(resume_path)
    except ResumeError as e:
        raise SystemExit(f"--resume: {e}") from None
    if resumed:
        log.info("resumed from %s at step %d", resume_path, trainer.step)
    elif args.resume:
        log.warning("--resume: no %s yet, starting at step 0", resume_path)

    eval_before = trainer.fixed_batch_loss(args.eval_pairs) if args.eval_pairs else None
    if eval_before is not None:
        log.info("fixed-batch loss at step %d: %.5f", trainer.step, eval_before)
    bar = tqdm(total=args.steps, initial=trainer.step, desc="MaskAttn heads", disable=rank != 0)
    first_step = trainer.step

    def after_step(t: HeadTrainer) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{t.losses[-1]:.4f}")
        if t.step % args.log_every == 0 or t.step == args.steps:
            recent = t.losses[-args.log_every:]
            log.info("step %d/%d  loss %.5f  %.2f s/step", t.step, args.steps, sum(recent) / len(recent),
                     t.seconds / (t.step - first_step))
        if rank == 0 and (t.step % args.checkpoint_every == 0 or t.step == args.steps):
            t.save_resume(resume_path)

    trainer.run(after_step)
    bar.close()
    eval_after = trainer.fixed_batch_loss(args.eval_pairs) if args.eval_pairs else None
    if eval_after is not None:
        log.info("fixed-batch loss at step %d: %.5f", trainer.step, eval_after)
    if rank == 0:
        base = args.ckpt.name if args.ckpt else f"demo:{args.demo_model}"
        heads = trainer.finished_heads(base, (eval_before, eval_after))
        save_heads(heads, args.out)
        log.info("wrote %s (%d parameters)", args.out, sum(p.numel() for p in heads.parameters()))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0
