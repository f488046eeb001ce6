"""Speed and peak memory of every mode, patched / plain side by side in one run.

The model is the full-width SDXL UNet from the host's own SDXL config (2.57 B parameters,
random weights: speed does not depend on weight values; bf16 on a GPU that has it, else
fp32), or with ``--model tiny`` the tests' tiny SDXL (a wiring check, not a speed figure).

Every measurement is one step of the host's own sampler (KSampler, euler, the first step
of a 30-step "normal" schedule, cfg 5: one cond and one uncond evaluation, batch 2), so
hooks, wrappers and guidance's latent shift run exactly as in a graph. Within a repeat
the variants run one after another on the same model, inputs and seed, so drift hits
all alike. Per image size it prints, over the repeats (min / median / max):
- time per step, patched / plain;
- peak memory, patched / plain, weights included (CUDA: max_memory_allocated; CPU: the
  process's peak resident set, with every large allocation returned to the system on
  free so that the peak follows the live tensors), and the step's own peak above the
  memory held before it;
- Region Mask Guidance: the guided step's extra time split into the guidance pass's
  forward and its backward (each over a plain step), and the whole 30-step run with the
  first 30% guided, composed from the measured steps; ``--whole-runs`` (the default on
  a GPU) also times whole runs of every variant.

    .venv/bin/python benchmarks/bench_sdxl.py [--sizes 512,1024] [--repeats 3] [--variants ...]
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import torch

from . import cli, host
from .bench_plan import EXTRA_VARIANTS, STEPS, VARIANTS

def main(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--sizes", default="512,1024", help="image sizes in pixels, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each variant per size")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS + EXTRA_VARIANTS)}")
    parser.add_argument("--model", choices=("sdxl", "tiny"), default="sdxl",
                        help="the full-width SDXL UNet, or the tests' tiny one (a wiring check)")
    parser.add_argument("--whole-runs", action=argparse.BooleanOptionalAction, default=None,
                        help=f"also time whole {STEPS}-step runs (default: on a GPU only)")
    parser.add_argument("--host-attention", choices=("pytorch", "default"), default="pytorch",
                        help="the host's attention for unpatched sites: pytorch (SDPA, what GPUs use) or the "
                             "host's default on this device (sub-quadratic on a CPU)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS + EXTRA_VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS + EXTRA_VARIANTS)}")

    # The host picks its attention when comfy is first imported: bootstrap, then import.
    host.import_host(use_pytorch_cross_attention=args.host_attention == "pytorch")
    import comfy.ldm.modules.attention as host_attention
    import comfy.model_management
    import comfy.utils

    from .bench_steps import SizeBench, build_model, cpu_name
    comfy.utils.PROGRESS_BAR_ENABLED = False

    device = comfy.model_management.get_torch_device()
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    started = time.monotonic()
    plain = build_model(args.model, device)
    params = sum(p.numel() for p in plain.model.diffusion_model.parameters())
    dtype = next(plain.model.diffusion_model.parameters()).dtype
    machine = torch.cuda.get_device_name() if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"{'SDXL' if args.model == 'sdxl' else 'tiny SDXL'} UNet, {params / 1e9:.3f} B params, {dtype}, built in "
          f"{time.monotonic() - started:.0f} s; {machine}; torch {torch.__version__}; host attention "
          f"{host_attention.optimized_attention.__name__}; {datetime.now(timezone.utc):%Y-%m-%d}", flush=True)
    bench = SizeBench(plain, names, device, sync, args.repeats)
    for size in (int(s) for s in args.sizes.split(",")):
        bench.run(size, cuda if args.whole_runs is None else args.whole_runs)
    return 0


