"""The SDXL templates through Load Checkpoint on a checkpoint FILE, in the real ComfyUI
server: what a user with an SDXL checkpoint runs, measured.

Each SDXL-form template in example_workflows/ is converted as the UI would, its Load
Checkpoint pointed at the file, its Load MaskAttn Heads at heads that fit it, its sizes
set to ``--size`` px and its samplers to ``--steps`` steps, and queued. Per template:
the sampler's time per step (from the host's own progress bars), the run's wall time and
the server's peak resident memory (the checkpoint loads once, in a first graph of its
own, so that its cost is its own row).

    .venv/bin/python scripts/write_sdxl_checkpoint.py --layout sdxl --out /tmp/sdxl.safetensors --heads /tmp/sdxl_heads.safetensors
    .venv/bin/python scripts/run_on_checkpoint.py /tmp/sdxl.safetensors --heads /tmp/sdxl_heads.safetensors --size 1024 --steps 2
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cli, host
from .comfy_server import Host, free_port
from .run_workflows import DEMO_TRAINING_SET, WORKFLOWS, copy_saved_images, loads_checkpoint, resized
from .workflow_api import ui_to_api

log = logging.getLogger(__name__)
TEMPLATE_SIZE = 1024        # the SDXL forms' image size
GIB = 1024 ** 3
# A state of the host's sampler progress bars (tqdm): "1/2 [01:23<01:23, ...]"
PROGRESS_BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


@dataclass
class TemplateRun:
    name: str
    images: int = 0
    wall_s: float = 0.0
    step_s: list[list[float]] = field(default_factory=list)   # per sampler run: seconds of each step
    peak_gib: float = 0.0
    error: str | None = None


def on_checkpoint(prompt: dict, checkpoint: str, heads: str | None, size: int, steps: int) -> dict:
    """The template's graph on ``checkpoint`` (a name in the checkpoints folder) at
    ``size`` px and ``steps`` steps (sampling and heads training), its heads replaced by
    ``heads`` and its training set by the shipped one."""
    if TEMPLATE_SIZE % size:
        raise ValueError(f"--size must divide {TEMPLATE_SIZE} (the templates' boxes are in its pixels)")
    out = resized(prompt, TEMPLATE_SIZE // size, steps, steps)
    for node in out.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = checkpoint
        elif node["class_type"] == "MaskAttnLoadHeads" and heads is not None:
            node["inputs"]["heads_name"] = heads
        elif node["class_type"] == "MaskAttnLoadTrainingSet":
            node["inputs"]["folder"] = DEMO_TRAINING_SET
    return out


def loading_graph(checkpoint: str) -> dict:
    """Loads the checkpoint (node "1", as in the templates, so that the executor's
    cache keeps it for them) and saves one 64 px latent of one step, nothing else."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "seed": 0,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "maskattn/loaded"}},
    }


def sampler_steps(console: str) -> list[list[int]]:
    """Seconds each step took, per sampler bar that finished in ``console`` (the bar's
    elapsed time at each step: whole seconds; a step the bar did not print shares the
    time to the next one it did)."""
    bars, elapsed = [], None
    for done, total, hours, minutes, seconds in PROGRESS_BAR.findall(console):
        done, total = int(done), int(total)
        if done == 0:
            elapsed = {0: 0}
        elif elapsed is not None:
            elapsed[done] = int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
            if done == total:
                shown = sorted(elapsed)
                steps = []
                for before, after in zip(shown, shown[1:]):
                    steps += [(elapsed[after] - elapsed[before]) / (after - before)] * (after - before)
                bars.append([round(x, 1) for x in steps])
                elapsed = None
    return bars


def extra_model_paths(state: Path, checkpoint: Path, heads: Path | None) -> Path:
    """An extra_model_paths.yaml that adds the checkpoint's (and the heads') folder."""
    lines = ["maskattn_checkpoint_run:", f"    base_path: {state}", f"    checkpoints: {checkpoint.parent}"]
    if heads is not None:
        lines.append(f"    maskattn: {heads.parent}")
    path = state / "extra_model_paths.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(checkpoint: Path, heads: Path | None, size: int, steps: int, out: Path,
        workflows: list[Path] | None = None) -> list[TemplateRun]:
    comfy = host.find_host()
    workflows = workflows or sorted(p for p in WORKFLOWS.glob("*.json"))
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="maskattn-ckpt-") as tmp:
        state = Path(tmp)
        console = out / "server.log"
        server = Host(comfy, free_port(), state, log=console,
                      extra_args=("--extra-model-paths-config", str(extra_model_paths(state, checkpoint, heads))))
        try:
            object_info = server.wait_ready()
            for name, prompt in [("(load the checkpoint)", loading_graph(checkpoint.name))] + [
                    (p.stem, ui_to_api(json.loads(p.read_text()), object_info)) for p in workflows]:
                if name != "(load the checkpoint)":
                    if not loads_checkpoint(prompt):
                        continue          # the demo forms
                    prompt = on_checkpoint(prompt, checkpoint.name, heads.name if heads else None, size, steps)
                record = TemplateRun(name)
                server.peak_memory(reset=True)
                seen = console.stat().st_size
                started = time.monotonic()
                log.info("== %s", name)
                try:
                    entry = server.run(prompt)
                    record.images = len(copy_saved_images(server, entry, out / name))
                except RuntimeError as e:
                    record.error = str(e)[:500]
                    log.error("   failed: %s", record.error)
                record.wall_s = round(time.monotonic() - started, 1)
                record.peak_gib = round(server.peak_memory() / GIB, 2)
                with open(console, errors="replace") as f:
                    f.seek(seen)
                    record.step_s = sampler_steps(f.read())
                log.info("   %s", record)
                runs.append(record)
        finally:
            server.stop()
    (out / "checkpoint_run.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "size": size, "steps": steps, "runs": [asdict(r) for r in runs]}, indent=1))
    return runs


def table(runs: list[TemplateRun], size: int, steps: int) -> str:
    lines = [f"| template ({size} px, {steps} steps) | images | s per step, each sampler | wall s | peak RSS GiB |",
             "|---|---|---|---|---|"]
    for r in runs:
        result = r.error and f"failed: {r.error[:80]}" or r.images
        steps_each = "; ".join(" + ".join(map(str, bar)) for bar in r.step_s)
        lines.append(f"| {r.name} | {result} | {steps_each} | {r.wall_s} | {r.peak_gib} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("checkpoint", type=Path, help="an SDXL checkpoint file (e.g. one scripts/write_sdxl_checkpoint.py wrote)")
    parser.add_argument("--heads", type=Path, default=None, help="gate heads that fit it (default: the templates' own)")
    parser.add_argument("--size", type=int, default=TEMPLATE_SIZE, help="image size in px (divides 1024)")
    parser.add_argument("--steps", type=int, default=2, help="sampler steps per template")
    parser.add_argument("--workflow", action="append", help="run only these templates (file stem)")
    parser.add_argument("--out", type=Path, default=host.REPO / "output" / "checkpoint_run", help="images, console log, results")
    args = parser.parse_args(argv)
    cli.setup_logging()
    workflows = [WORKFLOWS / f"{w}.json" for w in args.workflow] if args.workflow else None
    runs = run(args.checkpoint.resolve(), args.heads.resolve() if args.heads else None, args.size, args.steps,
               args.out, workflows)
    print(table(runs, args.size, args.steps))
    return 1 if any(r.error for r in runs) else 0
