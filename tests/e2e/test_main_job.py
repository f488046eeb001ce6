"""The README's main job, end to end: the real ComfyUI server started headless with
this extension from custom_nodes/, every shipped template converted, queued over HTTP,
executed, its images written as PNGs and its thumbnail as a JPEG; the templates' two
forms; the Registry metadata as the host's own parser reads it."""
import json
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

from maskattn_lab.host import PACKAGE, REPO
from maskattn_lab.make_workflows import DEMO, SDXL, file_name
from maskattn_lab.run_workflows import WORKFLOWS


def templates():
    return sorted(WORKFLOWS.glob("*.json"))


def test_main_job_runs_shipped_workflows_headless(host, tmp_path):
    assert templates()
    thumbs = tmp_path / "thumbnails"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "run_workflows.py"), "--out", str(tmp_path),
                             "--thumbnails", str(thumbs)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for wf in templates():
        pngs = sorted((tmp_path / wf.stem).glob("*.png"))
        assert pngs, f"{wf.name} wrote no PNG"
        for png in pngs:
            pixels = np.asarray(Image.open(png))
            assert pixels.ndim == 3 and pixels.shape[-1] == 3 and pixels.size > 0
            assert pixels.std() > 10, f"{png.name} is flat"
        with Image.open(thumbs / f"{wf.stem}.jpg") as thumb:
            assert thumb.format == "JPEG" and min(thumb.size) >= 256, (wf.stem, thumb.size)
    # the host streamed its progress to the console
    assert "Prompt executed" in result.stdout + result.stderr


def test_every_template_ships_with_its_thumbnail():
    for wf in templates():
        with Image.open(wf.with_suffix(".jpg")) as thumb:
            assert thumb.format == "JPEG" and min(thumb.size) >= 256, wf.stem


def test_host_reads_our_registry_metadata(host):
    from comfy_config import config_parser
    import comfyui_version
    config = config_parser.extract_node_configuration(str(REPO))
    assert config.project.name == "comfyui-maskattn"
    assert config.project.license.file == "LICENSE"
    assert config.project.urls.repository
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name
    # the icon: a URL of a file in this repo, a square image the Registry can show
    prefix = f"https://raw.githubusercontent.com/{urllib.parse.urlparse(config.project.urls.repository).path.strip('/')}/main/"
    assert config.tool_comfy.icon.startswith(prefix), config.tool_comfy.icon
    with Image.open(REPO / config.tool_comfy.icon[len(prefix):]) as icon:
        assert icon.size[0] == icon.size[1] and 128 <= icon.size[0] <= 400, icon.size
    # templates in the folder the newest hosts and the Registry expect (workflows/ is a legacy alias)
    assert (REPO / "example_workflows").is_dir() and not (REPO / "workflows").exists()
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
        shipped = [p.stem for p in templates()]
        assert sorted(listed.get(pack, [])) == shipped, listed
        for name in shipped:
            for suffix in (".json", ".jpg"):
                url = f"{server.url}/api/workflow_templates/{pack}/{urllib.parse.quote(name)}{suffix}"
                with urllib.request.urlopen(url, timeout=30) as r:
                    assert r.read() == (WORKFLOWS / f"{name}{suffix}").read_bytes(), url
    finally:
        server.stop()


def test_templates_come_in_two_forms_and_the_sdxl_one_points_to_its_twin():
    """The SDXL form loads a checkpoint at 1024 px and its Note names its demo twin, a file
    that exists; the demo form loads the demo model at 128 px and no file the user must find."""
    names = {p.stem for p in templates()}
    sdxl = sorted(n for n in names if n.endswith(f"({SDXL.label})"))
    assert sdxl and len(sdxl) * 2 == len(names), sorted(names)
    for name in sdxl:
        title = name[: -len(f" ({SDXL.label})")]
        twin = file_name(title, DEMO)
        assert twin in names, twin
        for form, stem in ((SDXL, name), (DEMO, twin)):
            workflow = json.loads((WORKFLOWS / f"{stem}.json").read_text())
            nodes = workflow["nodes"]
            types = [n["type"] for n in nodes]
            assert "links" in workflow and all("pos" in n for n in nodes), stem
            notes = [n["widgets_values"][0] for n in nodes if n["type"] == "Note"]
            assert notes, f"{stem} has no Note"
            sizes = [n["widgets_values"][:2] for n in nodes if n["type"] in ("EmptyLatentImage", "EmptyImage")]
            assert sizes and all(s == [form.size, form.size] for s in sizes), (stem, sizes)
            assert ("CheckpointLoaderSimple" in types) == (form is SDXL), stem
            assert ("MaskAttnLoadDemoModel" in types) == (form is DEMO), stem
            if form is SDXL:
                assert any(f"'{twin}'" in text for text in notes), stem
