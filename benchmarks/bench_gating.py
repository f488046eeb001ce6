"""Apply Masked Cross-Attention: time per UNet evaluation, gated vs plain, side by side.

The full-width SDXL UNet from the host's own SDXL config (2.6 B parameters, random
weights: speed does not depend on weight values), fresh "keep everything" heads at the
10 mid-resolution sites (the work is the same as for trained heads), one apply_model
call per measurement, plain and gated interleaved on the same inputs. Prints the ratio
gated/plain per repeat and min/median/max.

    .venv/bin/python benchmarks/bench_gating.py [--size 512] [--repeats 3] [--batch 2]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import host_env  # noqa: E402


def build_sdxl(dtype):
    import torch
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    from comfyui_maskattn.nodes import tiny_sdxl
    config = comfy.model_detection.model_config_from_unet_config(dict(tiny_sdxl.SDXL_UNET_CONFIG))
    config.set_inference_dtype(dtype, None)
    device = comfy.model_management.get_torch_device()
    with torch.inference_mode():
        model = config.get_model({}, device=device)
        tiny_sdxl.init_weights(model)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one cond + one uncond)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    host_env.import_host()
    host_env.load_package()
    import torch
    import comfy.model_management
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import nodes_gating, patching

    device = comfy.model_management.get_torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    started = time.monotonic()
    plain = build_sdxl(dtype)
    sites = select_sites(patching.discover_sites(plain), "mid-resolution")
    with torch.inference_mode():
        heads = HeadSet.for_sites(sites).to(device)
    gated = nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(
        plain, heads, threshold=0.5, mode="hard", start_percent=0.0, end_percent=1.0, apply_to_uncond=True).args[0]
    n_params = sum(p.numel() for p in plain.model.diffusion_model.parameters())
    head_params = sum(p.numel() for p in heads.parameters())
    print(f"built SDXL UNet ({n_params / 1e9:.2f} B params, {dtype}) in {time.monotonic() - started:.0f} s; "
          f"heads: {len(sites)} sites, {head_params:,} params ({head_params * 4 / 2**20:.2f} MiB fp32)", flush=True)

    g = torch.Generator().manual_seed(0)
    latent = args.size // 8
    x = torch.randn(args.batch, 4, latent, latent, generator=g).to(device, dtype)
    context = torch.randn(args.batch, 77, 2048, generator=g).to(device, dtype)
    y = torch.randn(args.batch, 2816, generator=g).to(device, dtype)
    sigma = torch.full((args.batch,), 7.0, device=device)

    def evaluate(patcher):
        options = {**patcher.model_options["transformer_options"], "cond_or_uncond": [1, 0][: args.batch],
                   "sigmas": sigma[:1]}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            patcher.model.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options=options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    evaluate(plain), evaluate(gated)          # warm-up: allocator, kernels
    ratios, rows = [], []
    for r in range(args.repeats):
        t_plain, t_gated = evaluate(plain), evaluate(gated)
        ratios.append(t_gated / t_plain)
        rows.append(f"repeat {r}: plain {t_plain:.3f} s  gated {t_gated:.3f} s  ratio {ratios[-1]:.3f}")
        print(rows[-1], flush=True)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\nApply Masked Cross-Attention, {len(sites)} mid-resolution sites, {args.size}x{args.size}, batch {args.batch}, "
          f"{device_name}, {datetime.now(timezone.utc):%Y-%m-%d}")
    print(f"time per UNet evaluation, gated/plain: min {min(ratios):.3f}  median {statistics.median(ratios):.3f}  max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
