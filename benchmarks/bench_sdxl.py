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
import ctypes
import gc
import platform
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import host_env  # noqa: E402

STEPS = 30              # schedule length (Endo: 30% of the steps guided)
GUIDED_PERCENT = 0.3
CFG = 5.0
VARIANTS = ("gating", "self-gating", "visualized", "swapping", "paint-with-words",
            "guidance-all", "guidance-mid", "guidance-encoder")
LABELS = {
    "gating": "Apply Masked Cross-Attention (mid-resolution)",
    "self-gating": "  + self-attention gating",
    "visualized": "  after Visualize Gates ran on it",
    "swapping": "Region Mask Guidance: swapping, all sites",
    "paint-with-words": "Region Mask Guidance: paint-with-words, all",
    "guidance-all": "Region Mask Guidance: guidance, all sites",
    "guidance-mid": "Region Mask Guidance: guidance, mid-resolution",
    "guidance-encoder": "Region Mask Guidance: guidance, encoder",
}


def spread(values) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


class PeakMemory:
    """Peak memory of what runs inside ``with``: (peak in bytes, bytes held at entry).

    CUDA: the allocator's own counters. CPU: the process's resident set (VmHWM, reset by
    /proc/self/clear_refs). For that to follow the live tensors, glibc must hand every
    large block back on free; ``track_cpu()`` sets that (mmap above 64 KiB), once, after
    the timing runs, since it costs page faults on every large allocation."""

    def __init__(self, device):
        self.device = device

    @staticmethod
    def track_cpu():
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)      # M_MMAP_THRESHOLD: fixed, 64 KiB

    @staticmethod
    def _status(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def __enter__(self):
        import torch
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.held = torch.cuda.memory_allocated()
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS
            self.held = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = self._status("VmHWM")
        return False


def build_model(which: str, device):
    """The full SDXL UNet (random weights) or the tiny one, as a ModelPatcher."""
    import torch
    import comfy.model_detection
    import comfy.model_patcher
    from comfyui_maskattn.nodes import tiny_sdxl
    if which == "tiny":
        return tiny_sdxl.build_model(0)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    config = comfy.model_detection.model_config_from_unet_config(dict(tiny_sdxl.SDXL_UNET_CONFIG))
    config.set_inference_dtype(dtype, None)
    with torch.inference_mode():           # as a checkpoint loader node builds it
        model = config.get_model({}, device=device)
        tiny_sdxl.init_weights(model)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(model, seed: int = 0):
    """Random positive and negative conds of the model's widths (77 tokens each)."""
    import torch
    config = model.model.model_config.unet_config
    g = torch.Generator().manual_seed(seed)
    pooled = config["adm_in_channels"] - 6 * 256         # SDXL: pooled text + six size embeddings

    def cond():
        return [[torch.randn(1, 77, config["context_dim"], generator=g),
                 {"pooled_output": torch.randn(1, pooled, generator=g)}]]
    return cond(), cond()


def two_regions(size: int):
    """Left and right halves of the image, bound to two words each."""
    import torch
    from comfyui_maskattn.maskattn_ops.regions import Region
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1.0
    return (Region(left, (2, 3), 77, "red circle"), Region(1.0 - left, (5, 6), 77, "blue square"))


def variants(plain, names, size):
    """name -> patched clone, built by the nodes' own execute()."""
    import torch
    from comfyui_maskattn.maskattn_ops.heads import HeadSet
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import nodes_gating, nodes_regions, patching
    with torch.inference_mode():
        heads = HeadSet.for_sites(select_sites(patching.discover_sites(plain), "mid-resolution"))
    count = sum(p.numel() for p in heads.parameters())
    print(f"gate heads: {len(heads.site_names)} sites, {count:,} params ({count * 4 / 2**20:.2f} MiB in fp32)")
    regions = two_regions(size)

    def gated(self_gating):
        return nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(
            plain, heads, threshold=0.5, mode="hard", start_percent=0.0, end_percent=1.0, apply_to_uncond=True,
            self_attention_gating=self_gating).args[0]

    def region(mode, sites):
        return nodes_regions.MaskAttnRegionGuidance.execute(
            plain, regions, mode, 0.08, 0.5, 0.3, 0.0, GUIDED_PERCENT, sites).args[0]

    build = {
        "gating": lambda: gated(False), "self-gating": lambda: gated(True), "visualized": lambda: gated(False),
        "swapping": lambda: region("swapping", "all"), "paint-with-words": lambda: region("paint-with-words", "all"),
        "guidance-all": lambda: region("guidance", "all"), "guidance-mid": lambda: region("guidance", "mid-resolution"),
        "guidance-encoder": lambda: region("guidance", "encoder"),
    }
    return {"plain": plain, **{name: build[name]() for name in names}}


class GuidanceClock:
    """Times a guided model's guidance pass: its forward (``loss``) and the whole shift
    (forward, backward, the in-place step), by wrapping the LatentGuidance instance's
    methods (every clone of the model shares that instance)."""

    def __init__(self, model, sync):
        from comfyui_maskattn.nodes import patching
        self.guidance = model.model_options["transformer_options"][patching.GUIDANCE_KEY]
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
        import comfy.samplers
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
        return sum(self.guidance.regions.active_sigma(float(s)) for s in sigmas[:-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024", help="image sizes in pixels, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--model", choices=("sdxl", "tiny"), default="sdxl")
    parser.add_argument("--whole-runs", action=argparse.BooleanOptionalAction, default=None,
                        help=f"also time whole {STEPS}-step runs (default: on a GPU only)")
    parser.add_argument("--host-attention", choices=("pytorch", "default"), default="pytorch",
                        help="the host's attention for unpatched sites: pytorch (SDPA, what GPUs use) or the "
                             "host's default on this device (sub-quadratic on a CPU)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    host_env.import_host(use_pytorch_cross_attention=args.host_attention == "pytorch")
    host_env.load_package()
    import torch
    import comfy.ldm.modules.attention as host_attention
    import comfy.model_management
    import comfy.utils
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
        import torch
        import nodes
        self.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(model, 0, STEPS, CFG, "euler", "normal", self.positive, self.negative, latent,
                                  last_step=last_step)
        self.sync()
        return time.perf_counter() - start

    def run(self, size: int, whole_runs: bool):
        import torch
        from comfyui_maskattn.nodes import visualize
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


if __name__ == "__main__":
    main()
