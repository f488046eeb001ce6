"""The workflow templates in ComfyUI's real frontend, in Debian's Chromium: each loads
with no missing node, converts with the frontend's own app.graphToPrompt(), and that
prompt runs to the end on the real server (on the demo model: the same substitution as
the main job). A screenshot per template lands in output/screenshots/."""
import json
import subprocess

from maskattn_lab.comfy_server import Host, free_port, saved_images
from maskattn_lab.host import PACKAGE, REPO
from maskattn_lab.run_workflows import on_demo_model

SCRIPT = REPO / "tests" / "browser" / "load_templates.mjs"


def test_templates_load_convert_and_run_in_the_real_frontend(host, tmp_path):
    names = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    shots = REPO / "output" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    server = Host(host, free_port(), tmp_path)
    try:
        server.wait_ready()
        result = subprocess.run(["node", str(SCRIPT), server.url, PACKAGE, str(shots), *names],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        loaded = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert [r["name"] for r in loaded] == names
        for r in loaded:
            assert r["missing"] == [], (r["name"], r["missing"])
            entry = server.run(on_demo_model(r["prompt"]))
            assert entry["status"]["status_str"] == "success", r["name"]
            assert saved_images(entry), r["name"]
            assert (shots / f"{r['name']}.png").stat().st_size > 10_000
    finally:
        server.stop()
