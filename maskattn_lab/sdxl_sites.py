"""Print the cross-attention sites of the real SDXL UNet, as the host builds it.

The UNet config is the one the host detects from an SDXL checkpoint; the host matches
it to supported_models.SDXL and builds model_base.SDXL from it on the meta device (no
weights, no memory), and the sites are read from that module tree by the same code
the nodes use. Compare with the table in ../shared/DESIGN.md.

    .venv/bin/python scripts/print_sdxl_sites.py
"""
from __future__ import annotations

import itertools

from . import host

host.import_host()
import comfy.model_detection  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402

from comfyui_maskattn.maskattn_ops.sites import select_sites  # noqa: E402
from comfyui_maskattn.nodes import demo_models, patching  # noqa: E402

LATENT_AT_1024 = 128


def sdxl_sites():
    """The sites of the full-size SDXL UNet (2.6 B parameters, built on meta)."""
    config = comfy.model_detection.model_config_from_unet_config(dict(demo_models.SDXL_UNET_CONFIG))
    if type(config) is not comfy.supported_models.SDXL:
        raise RuntimeError(f"the host matched the SDXL config to {type(config).__name__}")
    config.set_inference_dtype(torch.bfloat16, None)
    model = config.get_model({}, device=torch.device("meta"))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    return patching.discover_sites(patcher)


def site_table(sites) -> str:
    mid = {s.key for s in select_sites(sites, "mid-resolution")}
    lines = [f"{len(sites)} cross-attention sites; mid-resolution: {len(mid)}",
             "grid@1024px  block    id  block_index  heads x dim  channels  context  mid-res"]
    for (factor, block, block_id), group in itertools.groupby(sites, key=lambda s: (s.downsample, *s.key[:2])):
        group = list(group)
        s = group[0]
        grid = LATENT_AT_1024 // factor
        indices = f"{group[0].key[2]}-{group[-1].key[2]}"
        lines.append(f"{grid:>4}x{grid:<7} {block:<8} {block_id:>2}  {indices:<11}  {s.heads:>3} x {s.dim_head:<5}  "
                     f"{s.channels:>8}  {s.context_dim:>7}  {'yes' if s.key in mid else ''}")
    return "\n".join(lines)


def main() -> int:
    print(site_table(sdxl_sites()))
    return 0
