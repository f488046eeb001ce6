"""Speed and peak memory of one heads training step (Train MaskAttn Heads and
scripts/train_heads.py run the same step), with and without gradient checkpointing,
beside a plain sampling forward of the same model, batch and size, in one run.

    .venv/bin/python benchmarks/bench_training.py [--model sdxl] [--size 512] [--batch 1] [--repeats 2]

The model is SDXL's full UNet with random weights (timing does not depend on the
weights), or the tiny one; its conditioning random at SDXL's widths. A training step is
HeadTrainingStep's forward (the frozen UNet with gated mid-resolution sites), its
backward into the heads and an AdamW step; the first step of each variant is a warm-up.
Memory is the peak above what was held before the step (weights, heads, optimizer).
"""
from __future__ import annotations

import statistics
import time

import torch

from . import cli, host

host.import_host()
from comfyui_maskattn.maskattn_ops.heads import HeadSet  # noqa: E402
from comfyui_maskattn.maskattn_ops.sites import select_sites  # noqa: E402
from comfyui_maskattn.nodes import patching  # noqa: E402
from comfyui_maskattn.nodes.head_training import HeadTrainingStep  # noqa: E402

from .bench_steps import build_model, cpu_name, gib  # noqa: E402
from .peak_memory import PeakMemory  # noqa: E402


def batch_for(model, batch: int, size: int, device):
    """A random latent, noise, mid-schedule sigma, context and SDXL's y."""
    config = model.model.model_config.unet_config
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(batch, 4, size // 8, size // 8, generator=g)
    noise = torch.randn(latent.shape, generator=g)
    sigma = model.model.model_sampling.sigmas[500].repeat(batch)
    context = torch.randn(batch, 77, config["context_dim"], generator=g)
    y = torch.randn(batch, config["adm_in_channels"], generator=g)
    return [t.to(device) for t in (latent, noise, sigma, context, y)]


def timed(fn, repeats: int, sync) -> list[float]:
    fn()                                    # warm-up
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--model", choices=["sdxl", "tiny"], default="sdxl")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (latent side / 8)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_model(args.model, device)
    latent, noise, sigma, context, y = batch_for(model, args.batch, args.size, device)
    sites = select_sites(patching.discover_sites(model), "mid-resolution")
    print(f"{cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.model} UNet, {args.size} px, batch {args.batch}, "
          f"{len(sites)} gated sites, {args.repeats} repeats after a warm-up")

    def plain_forward():
        with torch.inference_mode():
            x = model.model.model_sampling.noise_scaling(sigma, noise, latent)
            model.model.apply_model(x, sigma, c_crossattn=context, y=y)

    rows = [("plain forward (sampling, no gates)", timed(plain_forward, args.repeats, sync), None)]
    PeakMemory.track_cpu()
    for recompute in (False, True):
        torch.manual_seed(0)
        heads = HeadSet.for_sites(sites).to(device)
        step = HeadTrainingStep(model, heads, recompute=recompute)
        step.load()
        optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-3, weight_decay=0.0)

        def train_step():
            loss = step(latent, noise, sigma, context, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        times = timed(train_step, args.repeats, sync)
        with PeakMemory(device) as memory:
            train_step()
        label = "training step, gradient checkpointing" if recompute else "training step, activations kept"
        rows.append((label, times, memory.peak - memory.held))
    plain = statistics.median(rows[0][1])
    print(f"{'':<40} {'s (min/median/max)':>22} {'x plain forward':>16} {'peak above held':>16}")
    for label, times, above in rows:
        spread = f"{min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f}"
        print(f"{label:<40} {spread:>22} {statistics.median(times) / plain:>15.2f}x "
              f"{gib(above) if above is not None else '':>16}")
    return 0
