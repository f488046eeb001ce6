"""The README's main job, end to end: the real ComfyUI server started headless with
this extension from custom_nodes/, every shipped workflow converted, queued over HTTP,
executed, and its images written as PNGs."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from maskattn_lab.host import PACKAGE, REPO


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
    # a pack never lists torch: pip could replace the user's CUDA build
    listed = [r.split("=")[0].split(">")[0].strip().lower() for r in config.project.dependencies]
    requirements = [line.strip().lower() for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert "torch" not in listed and "torch" not in requirements, (listed, requirements)
    from packaging.specifiers import SpecifierSet
    required = SpecifierSet(config.project.supported_comfyui_version)
    assert not any(spec.operator == "==" for spec in required), required          # a range, never a pin
    assert comfyui_version.__version__ in required, (comfyui_version.__version__, required)


def test_host_serves_our_workflow_templates(host, tmp_path):
    """The real server's /workflow_templates lists every shipped workflow under our
    pack, and serves each file as it is."""
    import urllib.request

    from maskattn_lab.comfy_server import Host, free_port
    server = Host(host, free_port(), tmp_path)
    try:
        server.wait_ready()
        listed = server.get("/workflow_templates")
        pack = PACKAGE          # the folder name under custom_nodes/
        shipped = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
        assert sorted(listed.get(pack, [])) == shipped, listed
        for name in shipped:
            with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{pack}/{name}.json", timeout=30) as r:
                assert json.load(r) == json.loads((REPO / "workflows" / f"{name}.json").read_text())
    finally:
        server.stop()


def test_templates_are_ui_format_with_a_note_and_the_checkpoint_loader():
    for path in sorted((REPO / "workflows").glob("maskattn_*.json")):
        workflow = json.loads(path.read_text())
        types = [n["type"] for n in workflow["nodes"]]
        assert "links" in workflow and all("pos" in n for n in workflow["nodes"]), path.name
        assert "Note" in types, f"{path.name} has no Note"
        assert "CheckpointLoaderSimple" in types, f"{path.name} does not load a checkpoint"
