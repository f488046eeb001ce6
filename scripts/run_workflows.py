"""The main job: start the real ComfyUI headless with this extension loaded, run every
shipped workflow on the demo model, and copy the images it saved to an output folder.
The templates load an SDXL checkpoint at 1024 px; here each runs on the demo model
instead (on_demo_model: same graph, the demo loader, 1/8 of the size, fewer steps).

    bash scripts/main.sh [--out output] [--workflow NAME ...]
    bash scripts/main.sh --serve [--port 8188]   # the ComfyUI UI on localhost instead

The host's own log and progress bars stream to this console.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_env  # noqa: E402
from workflow_api import ui_to_api  # noqa: E402

WORKFLOWS = host_env.REPO / "workflows"
WEIGHTS = host_env.REPO / "weights"
DEMO_MODEL = {"class_type": "MaskAttnLoadDemoModel", "inputs": {"model": "shapes SDXL, trained on rendered shapes (128 px)", "seed": 0}}
DEMO_HEADS = "shapes_sdxl_heads_masksup.safetensors"   # gate heads trained on it with mask supervision: their maps show where words act
DEMO_SCALE = 8          # the templates are 1024 px; the demo model runs them at 128 px
DEMO_STEPS = 16
# Spatial inputs (pixels) of the nodes the templates use, scaled down for the demo model.
SPATIAL_INPUTS = {"EmptyLatentImage": ("width", "height"), "SolidMask": ("width", "height"),
                  "EmptyImage": ("width", "height"), "MaskComposite": ("x", "y"),
                  "MaskAttnBindRegion": ("x", "y", "width", "height", "image_width", "image_height")}


def on_demo_model(prompt: dict) -> dict:
    """The same graph on the demo model: Load Checkpoint becomes Load MaskAttn Demo Model
    (same MODEL, CLIP, VAE outputs), heads become the ones trained for it, sizes shrink
    by DEMO_SCALE and samplers take DEMO_STEPS steps (the tiny model on a CPU)."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            node.update(json.loads(json.dumps(DEMO_MODEL)))
        elif kind == "MaskAttnLoadHeads":
            inputs["heads_name"] = DEMO_HEADS
        elif kind == "KSampler":
            inputs["steps"] = min(inputs["steps"], DEMO_STEPS)
        for name in SPATIAL_INPUTS.get(kind, ()):
            if isinstance(inputs.get(name), int):
                inputs[name] = max(1, inputs[name] // DEMO_SCALE)
    return out
SERVER_START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 1800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_command(host: Path, port: int, state: Path) -> list[str]:
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("user/default", "temp", "output", "input"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    # Without this the first page load opens the template browser over the graph.
    (state / "user/default/comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return [sys.executable, str(host / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--user-directory", str(state / "user"), "--temp-directory", str(state / "temp"),
            "--output-directory", str(state / "output"), "--input-directory", str(state / "input"),
            "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
            "--extra-model-paths-config", str(demo_model_paths(state))]


def demo_model_paths(state: Path) -> Path:
    """An extra_model_paths.yaml that adds this repo's weights/ to models/maskattn."""
    path = state / "extra_model_paths.yaml"
    path.write_text(f"maskattn_demo:\n    base_path: {WEIGHTS.parent}\n    maskattn: {WEIGHTS.name}\n")
    return path


class Host:
    """A ComfyUI server process on localhost, stopped on exit."""

    def __init__(self, host: Path, port: int, state: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.output_dir = state / "output"
        self.process = subprocess.Popen(host_command(host, port, state), cwd=host)

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.load(r)

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"the host refused the prompt: {e.read().decode()}") from None

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} while starting")
            try:
                return self.get("/object_info")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not answer within {SERVER_START_TIMEOUT_S} s")

    def run(self, prompt: dict) -> dict:
        reply = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        prompt_id = reply["prompt_id"]
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] != "success":
                    raise RuntimeError(f"the run failed: {json.dumps(entry['status']['messages'])[:2000]}")
                return entry
            if self.process.poll() is not None:
                raise RuntimeError("ComfyUI exited during the run")
            time.sleep(0.5)
        raise RuntimeError(f"the run did not finish within {RUN_TIMEOUT_S} s")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def saved_images(entry: dict) -> list[tuple[str, str]]:
    return [(img.get("subfolder", ""), img["filename"])
            for out in entry["outputs"].values() for img in out.get("images", []) if img.get("type") == "output"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=host_env.REPO / "output", help="where the PNGs go")
    parser.add_argument("--workflow", action="append", help="run only these workflows (file stem)")
    parser.add_argument("--serve", action="store_true", help="serve the ComfyUI UI on localhost instead")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    host = host_env.find_host()

    if args.serve:
        port = args.port or 8188
        state = host_env.REPO / "output" / "server"
        print(f"ComfyUI with MaskAttn at http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
        return subprocess.call(host_command(host, port, state), cwd=host)

    workflows = sorted(WORKFLOWS.glob("*.json"))
    if args.workflow:
        workflows = [w for w in workflows if w.stem in args.workflow]
    if not workflows:
        raise SystemExit(f"no workflows to run in {WORKFLOWS} (asked: {args.workflow})")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maskattn-host-") as state:
        server = Host(host, args.port or free_port(), Path(state))
        try:
            object_info = server.wait_ready()
            for path in workflows:
                print(f"\n== {path.name}", flush=True)
                started = time.monotonic()
                entry = server.run(on_demo_model(ui_to_api(json.loads(path.read_text()), object_info)))
                images = saved_images(entry)
                if not images:
                    raise RuntimeError(f"{path.name} saved no image")
                for subfolder, name in images:
                    target = args.out / path.stem / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(server.output_dir / subfolder / name, target)
                    print(f"   wrote {target}", flush=True)
                print(f"   {path.name}: {len(images)} image(s) in {time.monotonic() - started:.1f} s", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
