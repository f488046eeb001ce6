"""The workflow templates in ComfyUI's real frontend, in Debian's Chromium: the template
browser lists every one of them under our pack with its thumbnail; each loads with no
missing node and no node covering another, greys out the widgets its choices leave
unused, and converts with the frontend's own app.graphToPrompt(). Each demo form is
queued with the Run button and its images appear on its Save Image nodes; each SDXL
form's prompt runs on the real server on the demo model (the main job's substitution).
The issue's search queries, typed into the node search box, list our node first and Enter
adds it (frontend 1.27.10 searches the node id and display name only: docs/development.md).
Screenshots land in output/screenshots/ (the README's come from there)."""
import json
import subprocess

from maskattn_lab.comfy_server import Host, free_port, saved_images
from maskattn_lab.host import PACKAGE, REPO
from maskattn_lab.run_workflows import WORKFLOWS, loads_checkpoint, on_demo_model

SCRIPT = REPO / "tests" / "browser" / "load_templates.mjs"
CATEGORY = json.loads((REPO / "locales" / "en" / "main.json").read_text())["templateWorkflows"]["category"][PACKAGE]
BOX = ("x", "y", "width", "height", "image_width", "image_height")
SEARCH = {"region guidance": ("MaskAttnRegionGuidance", "Region Mask Guidance"),   # query: (node id, listed as)
          "masked attention": ("MaskAttnApplyMaskedCrossAttention", "Apply Masked Cross-Attention")}


def test_templates_in_the_real_frontend(host, tmp_path):
    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    demo = [n for n in names if "(demo model" in n]
    assert len(demo) * 2 == len(names), names           # every template in both forms
    shots = REPO / "output" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    server = Host(host, free_port(), tmp_path)
    try:
        server.wait_ready()
        queue = [arg for name in demo for arg in ("--queue", name)]
        search = [arg for query in SEARCH for arg in ("--search", query)]
        result = subprocess.run(["node", str(SCRIPT), server.url, PACKAGE, CATEGORY, str(shots), *search, *queue, *names],
                                capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stderr[-4000:]
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        found = {s["query"]: s for s in lines[0]["node_search"]}
        assert sorted(found) == sorted(SEARCH), found
        for query, (node_id, listed_as) in SEARCH.items():
            assert found[query]["results"][:1] == [listed_as], found[query]     # first in the list
            assert found[query]["added"] == [node_id], found[query]             # and what Enter adds
        cards = {c["name"]: c["thumbnail"] for c in lines[1]["browser_cards"]}
        assert sorted(cards) == names and all(cards.values()), cards
        loaded = lines[2:]
        assert [r["name"] for r in loaded] == names
        for r in loaded:
            name = r["name"]
            assert r["missing"] == [], (name, r["missing"])
            assert r["overlaps"] == [], (name, r["overlaps"])
            if name.startswith("Two-region guidance"):        # masks connected: both boxes greyed
                assert sorted(r["greyed"]) == sorted([f"Bind Region to Words.{w}" for w in BOX] * 2
                                                     + ["Region Mask Guidance.weight"]), r["greyed"]
            if name.startswith("Guidance vs swapping"):       # boxes used; each mode greys what it ignores
                assert sorted(r["greyed"]) == sorted([
                    "Region Mask Guidance: guidance.weight",
                    "Region Mask Guidance: swapping.alpha", "Region Mask Guidance: swapping.lam",
                    "Region Mask Guidance: swapping.weight",
                    "Region Mask Guidance: paint-with-words.alpha", "Region Mask Guidance: paint-with-words.lam"]), r["greyed"]
            if name in demo:
                assert not loads_checkpoint(r["prompt"]), name
                assert r["queued"] and r["shown"] >= 1, (name, r)
            else:
                entry = server.run(on_demo_model(r["prompt"]))
                assert entry["status"]["status_str"] == "success", name
                assert saved_images(entry), name
            assert (shots / f"{name}.png").stat().st_size > 10_000
    finally:
        server.stop()
