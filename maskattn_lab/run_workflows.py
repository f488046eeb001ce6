"""The main job: start the real ComfyUI headless with this extension loaded, run every
shipped template (example_workflows/, both forms), copy the images each saved to an
output folder, and write each template's thumbnail from them. The demo forms run as
loaded; the SDXL forms load a checkpoint at 1024 px, so here each runs on the demo model
instead (on_demo_model: same graph, the demo loader, 1/8 of the size, fewer steps), and
its thumbnail says so.

    bash scripts/main.sh [--out output] [--workflow NAME ...] [--thumbnails DIR]
    bash scripts/main.sh --serve [--port 8188]   # the ComfyUI UI on localhost instead

The host's own log and progress bars stream to this console.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import cli, host
from .comfy_server import Host, free_port, host_command, saved_images
from .thumbnails import write_thumbnail
from .workflow_api import ui_to_api

log = logging.getLogger(__name__)
WORKFLOWS = host.REPO / "example_workflows"
DEMO_MODEL = {"class_type": "MaskAttnLoadDemoModel", "inputs": {"model": "shapes-sdxl", "seed": 0}}
DEMO_SCALE = 8          # the templates are 1024 px; the demo model runs them at 128 px
DEMO_STEPS = 16
DEMO_TRAINING_STEPS = 40                 # Train MaskAttn Heads' steps on the demo model
DEMO_TRAINING_SET = "[demo] shapes"      # the training set that ships with the pack
# Spatial inputs (pixels) of the nodes the templates use, scaled down for the demo model.
SPATIAL_INPUTS = {"EmptyLatentImage": ("width", "height"), "SolidMask": ("width", "height"),
                  "EmptyImage": ("width", "height"), "MaskComposite": ("x", "y"),
                  "MaskAttnBindRegion": ("x", "y", "width", "height", "image_width", "image_height"),
                  "MaskAttnTrainHeads": ("resolution",)}


def resized(prompt: dict, scale: int, steps: int, training_steps: int) -> dict:
    """The same graph with every pixel size divided by ``scale``, every sampler capped
    at ``steps`` steps and every heads training at ``training_steps``."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "KSampler":
            inputs["steps"] = min(inputs["steps"], steps)
        if kind == "MaskAttnTrainHeads":
            inputs["steps"] = min(inputs["steps"], training_steps)
        for name in SPATIAL_INPUTS.get(kind, ()):
            if isinstance(inputs.get(name), int):
                inputs[name] = max(1, inputs[name] // scale)
    return out


def on_demo_model(prompt: dict) -> dict:
    """The same graph on the demo model: Load Checkpoint becomes Load MaskAttn Demo Model
    (same MODEL, CLIP, VAE outputs), sizes shrink by DEMO_SCALE and samplers take
    DEMO_STEPS steps (the tiny model on a CPU), heads train on the shipped training set.
    The SDXL forms already name the demo model's heads (the only heads this pack ships)."""
    out = resized(prompt, DEMO_SCALE, DEMO_STEPS, DEMO_TRAINING_STEPS)
    for node in out.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node.update(json.loads(json.dumps(DEMO_MODEL)))
        if node["class_type"] == "MaskAttnLoadTrainingSet":
            node["inputs"]["folder"] = DEMO_TRAINING_SET
    return out


def copy_saved_images(server: Host, entry: dict, folder: Path) -> list[Path]:
    """Copies the images a run saved (its history ``entry``) into ``folder``."""
    written = []
    for subfolder, name in saved_images(entry):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.output_dir / subfolder / name, target)
        written.append(target)
        log.info("   wrote %s", target)
    return written


def loads_checkpoint(prompt: dict) -> bool:
    return any(node["class_type"] == "CheckpointLoaderSimple" for node in prompt.values())


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", type=Path, default=host.REPO / "output", help="where the PNGs go")
    parser.add_argument("--workflow", action="append", help="run only these workflows (file stem)")
    parser.add_argument("--thumbnails", type=Path, default=WORKFLOWS,
                        help="where each template's thumbnail <name>.jpg goes")
    parser.add_argument("--serve", action="store_true", help="serve the ComfyUI UI on localhost instead")
    parser.add_argument("--port", type=int, default=None, help="the server's port (default: 8188 with --serve, else a free one)")
    args = parser.parse_args(argv)
    cli.setup_logging()
    comfy = host.find_host()

    if args.serve:
        port = args.port or 8188
        state = host.REPO / "output" / "server"
        log.info("ComfyUI with MaskAttn at http://127.0.0.1:%d (Ctrl-C stops it)", port)
        return subprocess.call(host_command(comfy, port, state), cwd=comfy)

    workflows = sorted(WORKFLOWS.glob("*.json"))
    if args.workflow:
        workflows = [w for w in workflows if w.stem in args.workflow]
    if not workflows:
        raise SystemExit(f"no workflows to run in {WORKFLOWS} (asked: {args.workflow})")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maskattn-host-") as state:
        server = Host(comfy, args.port or free_port(), Path(state))
        try:
            object_info = server.wait_ready()
            for path in workflows:
                log.info("== %s", path.name)
                started = time.monotonic()
                prompt = ui_to_api(json.loads(path.read_text()), object_info)
                sdxl_form = loads_checkpoint(prompt)
                entry = server.run(on_demo_model(prompt) if sdxl_form else prompt)
                written = copy_saved_images(server, entry, args.out / path.stem)
                if not written:
                    raise RuntimeError(f"{path.name} saved no image")
                args.thumbnails.mkdir(parents=True, exist_ok=True)
                caption = "shown: this graph on the demo model (128 px)" if sdxl_form else None
                log.info("   thumbnail %s", write_thumbnail(written, args.thumbnails / f"{path.stem}.jpg", caption))
                log.info("   %s: %d image(s) in %.1f s", path.name, len(written), time.monotonic() - started)
        finally:
            server.stop()
    return 0

