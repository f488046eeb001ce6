"""Region Mask Guidance on the tiny SDXL (CPU): whole-run wall time, guided / plain,
side by side in one run: same model, prompt, seed; 10 steps, the first 30% guided.

    .venv/bin/python benchmarks/bench_guidance_tiny.py [--repeats 3] [--size 32]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import host_env  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="latent size (image = 8x)")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    host_env.import_host()
    host_env.load_package()
    import torch
    import nodes
    import comfy.utils
    from comfyui_maskattn.nodes import nodes_regions, tiny_sdxl
    comfy.utils.PROGRESS_BAR_ENABLED = False

    with torch.inference_mode():
        model, clip, _ = tiny_sdxl.build_all(0)
        positive, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(clip, "a red circle and a blue square").args
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        image = args.size * 8
        regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "red circle", 1.0, 0, 0, image // 2, image,
                                                           image, image).args[0]
        regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "blue square", 1.0, image // 2, 0, image // 2,
                                                           image, image, image, regions=regions).args[0]
    variants = {"plain": model}
    for sites in ("all", "mid-resolution"):
        for mode in ("guidance", "swapping", "paint-with-words"):
            variants[f"{mode}, {sites}"] = nodes_regions.MaskAttnRegionGuidance.execute(
                model, regions, mode, 0.08, 0.5, 0.3, 0.0, 0.3, sites).args[0]
    latent = {"samples": torch.zeros(1, 4, args.size, args.size)}

    def run(m):
        t = time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(m, 0, args.steps, 5.0, "euler", "normal", positive, negative, latent)
        return time.perf_counter() - t

    for m in variants.values():
        run(m)                                            # warm-up (and the one-time weight preparation)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, m in variants.items():                  # interleaved: drift hits all alike
            times[name].append(run(m))
    print(f"tiny SDXL (23.6 M), {args.size * 8}px ({args.size}x{args.size} latent), {args.steps} steps euler, "
          f"30% in the window, CPU {torch.get_num_threads()} threads, {datetime.now(timezone.utc):%Y-%m-%d}")
    print(f"{'variant':<34} {'ratio to plain: min / median / max':>36}")
    for name in variants:
        if name == "plain":
            continue
        ratios = [t / p for t, p in zip(times[name], times["plain"])]
        print(f"{name:<34} {min(ratios):>10.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}")
    print(f"plain run: median {statistics.median(times['plain']):.2f} s")


if __name__ == "__main__":
    main()
