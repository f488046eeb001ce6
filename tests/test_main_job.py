"""The README's main job, end to end: the real ComfyUI server started headless with
this extension from custom_nodes/, every shipped workflow converted, queued over HTTP,
executed, and its images written as PNGs."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from host_env import REPO


def test_main_job_runs_shipped_workflows_headless(host, tmp_path):
    workflows = sorted((REPO / "workflows").glob("*.json"))
    assert workflows
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "run_workflows.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for wf in workflows:
        pngs = sorted((tmp_path / wf.stem).glob("*.png"))
        assert pngs, f"{wf.name} wrote no PNG"
        for png in pngs:
            pixels = np.asarray(Image.open(png))
            assert pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.size > 0
    # the host streamed its progress to the console
    assert "Prompt executed" in result.stdout + result.stderr


def test_host_reads_our_registry_metadata(host):
    from comfy_config import config_parser
    import comfyui_version
    config = config_parser.extract_node_configuration(str(REPO))
    assert config.project.name == "comfyui-maskattn"
    assert config.project.license.file == "LICENSE"
    assert config.project.urls.repository
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name
    assert config.project.supported_comfyui_version == f"=={comfyui_version.__version__}"
