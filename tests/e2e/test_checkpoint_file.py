"""A checkpoint FILE through Load Checkpoint: an SDXL-layout file written by the host's own
save path (Segmind Vega's depths at SDXL's widths with both full text encoders: the
smallest UNet the host detects as an SDXL model, 3.5 GB in fp16), loaded by the real
server's CheckpointLoaderSimple, and every SDXL template run on it (guidance, swapping,
paint-with-words, inpainting with guidance, learned gating with Visualize Gates) at
64 px for 2 steps. Random weights: the images are noise, so the checks are that every
node ran, nothing is NaN, and each mode changed the result."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from maskattn_lab.host import REPO
from maskattn_lab.run_workflows import WORKFLOWS

FOUR_WAY = "Guidance vs swapping vs paint-with-words (SDXL)"
GATING = "Learned gating with Visualize Gates (SDXL)"
# Mean absolute difference (8-bit levels) above which two images differ by more than
# the rounding of two attention implementations (the same run through ours or the
# host's attention differs by well under 0.1)
ACTED = 1.0


def saved_image_count(template: str) -> int:
    return sum(node["type"] == "SaveImage" for node in json.loads((WORKFLOWS / f"{template}.json").read_text())["nodes"])


def pixels(run_dir, template, prefix) -> np.ndarray:
    [path] = (run_dir / template).glob(f"{prefix}_*.png")
    return np.asarray(Image.open(path)).astype(np.float64)


def test_every_sdxl_template_runs_on_a_checkpoint_file_through_load_checkpoint(host, tmp_path):
    checkpoint, heads = tmp_path / "checkpoints" / "vega_layout.safetensors", tmp_path / "heads" / "vega_heads.safetensors"
    heads.parent.mkdir()
    written = subprocess.run([sys.executable, str(REPO / "scripts" / "write_sdxl_checkpoint.py"), "--layout", "vega",
                              "--out", str(checkpoint), "--heads", str(heads)], capture_output=True, text=True, timeout=900)
    assert written.returncode == 0, written.stderr[-3000:]
    try:
        run_dir = tmp_path / "run"
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "run_on_checkpoint.py"), str(checkpoint),
                                 "--heads", str(heads), "--size", "64", "--steps", "2", "--out", str(run_dir)],
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        console = (run_dir / "server.log").read_text(errors="replace")
        assert "model_type EPS" in console
        # the heads were written for this file (its fingerprint), and loaded as fp32 it is still that model
        assert "was made for another model" not in console and "records no model fingerprint" not in console
        runs = {r["name"]: r for r in json.loads((run_dir / "checkpoint_run.json").read_text())["runs"]}
        sdxl_forms = sorted(p.stem for p in WORKFLOWS.glob("*(SDXL).json"))
        assert len(sdxl_forms) == 5 and set(sdxl_forms) <= set(runs)
        for template in sdxl_forms:
            run = runs[template]
            assert run["error"] is None and run["images"] == saved_image_count(template), run
            assert [len(bar) for bar in run["step_s"]] == [2] * len(run["step_s"]) and run["step_s"], run
            for png in (run_dir / template).glob("*.png"):
                assert np.asarray(Image.open(png)).std() > 10, f"{png.name} is flat (NaN decodes to black)"
        none = pixels(run_dir, FOUR_WAY, "compare_none")
        for mode in ("compare_guidance", "compare_swapping", "compare_paint_with_words"):
            assert np.abs(pixels(run_dir, FOUR_WAY, mode) - none).mean() > ACTED, f"{mode} equals no control"
        # the gating template is the four-way's "none" graph with Apply Masked Cross-Attention added
        assert np.abs(pixels(run_dir, GATING, "gating") - none).mean() > ACTED, "the gates changed nothing"
        # heads trained on the file by Train MaskAttn Heads (2 steps on the shipped pairs) fit it
        assert "Train MaskAttn Heads: 2 steps" in console
    finally:
        checkpoint.unlink()         # 3.5 GB: pytest keeps its last temporary folders
