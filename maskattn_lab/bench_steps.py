"""The benchmark's measurements (benchmarks/bench_sdxl.py is its command line): the
models it times, the variants built by the nodes' own execute(), the memory meter, and
one image size's table. See maskattn_lab/bench_sdxl.py for what is measured and how.
"""
from __future__ import annotations

import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from . import host

host.import_host()
import comfy.model_detection  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import nodes  # noqa: E402  (the host's core nodes: KSampler's common_ksampler)

from comfyui_maskattn.maskattn_ops.heads import HeadSet  # noqa: E402
from comfyui_maskattn.maskattn_ops.regions import Region  # noqa: E402
from comfyui_maskattn.maskattn_ops.sites import select_sites  # noqa: E402
from comfyui_maskattn.nodes import demo_models, nodes_gating, nodes_regions, patching, visualize  # noqa: E402

from .bench_plan import CFG, GUIDED_PERCENT, LABELS, STEPS  # noqa: E402
from .peak_memory import PeakMemory  # noqa: E402


def spread(values) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def build_model(which: str, device):
    """The full SDXL UNet (random weights) or the tiny one, as a ModelPatcher."""
    if which == "tiny":
        return demo_models.build_model(0)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    config = comfy.model_detection.model_config_from_unet_config(dict(demo_models.SDXL_UNET_CONFIG))
    config.set_inference_dtype(dtype, None)
    with torch.inference_mode():           # as a checkpoint loader node builds it
        model = config.get_model({}, device=device)
        demo_models.init_weights(model)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(model, seed: int = 0):
    """Random positive and negative conds of the model's widths (77 tokens each)."""
    config = model.model.model_config.unet_config
    g = torch.Generator().manual_seed(seed)
    pooled = config["adm_in_channels"] - 6 * 256         # SDXL: pooled text + six size embeddings

    def cond():
        return [[torch.randn(1, 77, config["context_dim"], generator=g),
                 {"pooled_output": torch.randn(1, pooled, generator=g)}]]
    return cond(), cond()


def two_regions(size: int):
    """Left and right halves of the image, bound to two words each."""
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1.0
    return (Region(left, (2, 3), 77, "red circle"), Region(1.0 - left, (5, 6), 77, "blue square"))


def variants(plain, names, size):
    """name -> patched clone, built by the nodes' own execute()."""
    with torch.inference_mode():
        heads = HeadSet.for_sites(select_sites(patching.discover_sites(plain), "mid-resolution"))
    count = sum(p.numel() for p in heads.parameters())
    print(f"gate heads: {len(heads.site_names)} sites, {count:,} params ({count * 4 / 2**20:.2f} MiB in fp32)")
    regions = two_regions(size)

    def gated(self_gating):
        return nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(
            plain, heads, threshold=0.5, mode="hard", start_percent=0.0, end_percent=1.0, apply_to_uncond=True,
            self_attention_gating=self_gating).args[0]

    def region(mode, sites, end=GUIDED_PERCENT):
        return nodes_regions.MaskAttnRegionGuidance.execute(
            plain, regions, mode, 0.08, 0.5, 0.3, 0.0, end, sites).args[0]

    build = {
        "gating": lambda: gated(False), "self-gating": lambda: gated(True), "visualized": lambda: gated(False),
        "swapping": lambda: region("swapping", "all"), "paint-with-words": lambda: region("paint-with-words", "all"),
        "paint-and-suppress": lambda: region("paint-and-suppress", "all", end=1.0),     # its default: the whole run
        "guidance-all": lambda: region("guidance", "all"), "guidance-mid": lambda: region("guidance", "mid-resolution"),
        "guidance-encoder": lambda: region("guidance", "encoder"),
        "guidance-all-kept": lambda: patching.keeping_activations(region("guidance", "all")),
    }
    return {"plain": plain, **{name: build[name]() for name in names}}


class GuidanceClock:
    """Times a guided model's guidance pass: its forward (``loss``) and the whole shift
    (forward, backward, the in-place step), by wrapping the LatentGuidance instance's
    methods (every clone of the model shares that instance)."""

    def __init__(self, model, sync):
        self.guidance = patching.latent_guidance(model)
        self.forward, self.shift = [], []
        self._wrap("loss", self.forward, sync)
        self._wrap("shift", self.shift, sync)

    def _wrap(self, name, times, sync):
        method = getattr(self.guidance, name)

        def timed(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                sync()
                times.append(time.perf_counter() - start)
        setattr(self.guidance, name, timed)

    def guided_steps(self, model) -> int:
        """How many of the STEPS steps fall in the guidance window."""
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
        return sum(self.guidance.regions.active_sigma(float(s)) for s in sigmas[:-1])


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else the architecture."""
    found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M) \
        if Path("/proc/cpuinfo").exists() else None
    return found.group(1).strip() if found else f"CPU ({platform.machine()})"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class SizeBench:
    """The measurements at one image size, printed as they finish."""

    def __init__(self, plain, names, device, sync, repeats):
        self.plain, self.names, self.device, self.sync, self.repeats = plain, names, device, sync, repeats
        self.positive, self.negative = conditioning(plain)

    def step(self, model, latent, last_step: int | None = 1) -> float:
        """Seconds for the sampler's first step of STEPS (or the whole run, last_step None)."""
        self.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(model, 0, STEPS, CFG, "euler", "normal", self.positive, self.negative, latent,
                                  last_step=last_step)
        self.sync()
        return time.perf_counter() - start

    def run(self, size: int, whole_runs: bool):
        models = variants(self.plain, self.names, size)
        clocks = {n: GuidanceClock(m, self.sync) for n, m in models.items() if n.startswith("guidance")}
        latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
        print(f"\n== {size}x{size} ({size // 8}x{size // 8} latent): the first euler step of {STEPS}, cfg {CFG:g} "
              f"(cond + uncond), {self.repeats} repeats ==", flush=True)
        if "visualized" in models:         # Visualize Gates reads the gated model once; then it samples
            with torch.inference_mode():   # as the host runs a node
                visualize.capture_maps(models["visualized"], self.positive, self.negative, latent, CFG, 0.0, 0)
        for model in models.values():      # warm-up: kernels, allocator, guidance's one-time weight preparation
            self.step(model, latent)
        for clock in clocks.values():
            clock.forward.clear(), clock.shift.clear()
        times = {n: [] for n in models}
        for _ in range(self.repeats):
            for name, model in models.items():
                times[name].append(self.step(model, latent))
        guided = {n: (c.forward[: self.repeats], c.shift[: self.repeats], c.guided_steps(models[n]))
                  for n, c in clocks.items()}

        if self.device.type != "cuda":
            PeakMemory.track_cpu()
        memory = {}
        for name, model in models.items():
            with PeakMemory(self.device) as memory[name]:
                self.step(model, latent)
        base = memory["plain"]
        print(f"plain step: median {statistics.median(times['plain']):.2f} s; peak {gib(base.peak)} "
              f"({gib(base.peak - base.held)} above the {gib(base.held)} held before the step)")
        print(f"{'variant':<48} {'time / plain':>20} {'peak / plain':>13} {'above held':>11}")
        for name in self.names:
            ratios = [t / p for t, p in zip(times[name], times["plain"])]
            mem = memory[name]
            print(f"{LABELS[name]:<48} {spread(ratios):>20} {mem.peak / base.peak:>13.3f} "
                  f"{gib(mem.peak - mem.held):>11}")
        if guided:
            print(f"\nguided step, each part over a plain step (min / median / max); the whole {STEPS}-step run "
                  f"composed: {STEPS} plain steps plus the guided steps' extra time")
            print(f"{'variant':<48} {'extra forward':>20} {'backward':>20} {'guided / plain run':>20}")
        for name, (forward, shift, count) in guided.items():
            plain_steps = times["plain"]
            backward = [s - f for s, f in zip(shift, forward)]
            run = [(STEPS * p + count * (g - p)) / (STEPS * p) for g, p in zip(times[name], plain_steps)]
            print(f"{LABELS[name]:<48} {spread([f / p for f, p in zip(forward, plain_steps)]):>20} "
                  f"{spread([b / p for b, p in zip(backward, plain_steps)]):>20} "
                  f"{spread(run):>20} ({count} of {STEPS} steps guided)")
        if whole_runs:
            runs = {n: [] for n in models}
            for _ in range(self.repeats):
                for name, model in models.items():
                    runs[name].append(self.step(model, latent, last_step=None))
            print(f"\nwhole {STEPS}-step runs, patched / plain (min / median / max); plain run median "
                  f"{statistics.median(runs['plain']):.1f} s")
            for name in self.names:
                print(f"{LABELS[name]:<48} {spread([t / p for t, p in zip(runs[name], runs['plain'])]):>20}")
        sys.stdout.flush()

