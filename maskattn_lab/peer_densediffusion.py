"""DenseDiffusion's ComfyUI port (huchenlei/ComfyUI_densediffusion, the Omost variant of
Kim et al. 2023) as an evaluation row, run from its own checkout: never copied here.

Used as its README shows: one DenseDiffusion Add Cond per object phrase with the object's
mask, one for the whole caption with no mask (the pack then uses a full mask), then
DenseDiffusion Apply, whose MODEL and CONDITIONING go to the sampler.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

PACKAGE = "peer_densediffusion_pack"


def load(path: Path):
    """The pack's node module, imported from ``path`` as a package of its own (its
    modules import each other relatively), and its git commit (or "unknown")."""
    path = Path(path).resolve()
    if not (path / "densediffusion_node.py").exists():
        raise SystemExit(f"--densediffusion {path}: no densediffusion_node.py there; give the path of a "
                         "checkout of huchenlei/ComfyUI_densediffusion")
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return sys.modules[f"{PACKAGE}.densediffusion_node"], commit


def patched(nodes_module, model, encode, phrases_and_masks, caption: str):
    """(MODEL, positive CONDITIONING) from the pack's own nodes. ``encode`` is text ->
    CONDITIONING (CLIP Text Encode); masks are (1, H, W) float."""
    add = nodes_module.DenseDiffusionAddCondNode()
    for phrase, mask in phrases_and_masks:
        model = add.append(model, encode(phrase), 1.0, mask)[0]
    model = add.append(model, encode(caption), 1.0, None)[0]
    return nodes_module.DenseDiffusionApplyNode().apply(model)
