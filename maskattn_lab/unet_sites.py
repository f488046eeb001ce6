"""Print the cross-attention sites of a full-size UNet (SDXL, SD1.x, SD2.x), as the host
builds it.

The UNet config is the one the host detects from that family's checkpoint; the host
matches it to its supported_models class and builds the model from it on the meta
device (no weights, no memory), and the sites are read from that module tree by the same
code the nodes use. Compare SDXL's with the table in ../shared/DESIGN.md.

    .venv/bin/python scripts/print_sites.py [--family sdxl|sd1|sd2]
"""
from __future__ import annotations

import itertools

from . import cli, host

host.import_host()
import comfy.model_detection  # noqa: E402
import comfy.model_patcher  # noqa: E402
import torch  # noqa: E402

from comfyui_maskattn.maskattn_ops.sites import select_sites  # noqa: E402
from comfyui_maskattn.nodes import demo_models, patching  # noqa: E402
from comfyui_maskattn.nodes.model_family import family_of  # noqa: E402

# Each family's usual image size, as its latent side: SDXL 1024 px, SD1.x 512 px, SD2.x
# 768 px (the v-prediction model; its 512 px base has SD1.x's grids)
NATIVE_LATENT = {"sdxl": 128, "sd1": 64, "sd2": 96}


def full_size_sites(family: str):
    """The sites of the family's full-size UNet (SDXL: 2.6 B parameters), built on meta."""
    config = comfy.model_detection.model_config_from_unet_config(dict(demo_models.DETECTED_UNET_CONFIGS[family]))
    config.set_inference_dtype(torch.bfloat16, None)
    model = config.get_model({}, device=torch.device("meta"))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    if family_of(patcher) != family:
        raise RuntimeError(f"the host matched the {family} config to {type(config).__name__}")
    return patching.discover_sites(patcher)


def site_table(sites, latent: int = NATIVE_LATENT["sdxl"]) -> str:
    """One line per block: token grid at the family's native size (``latent`` side)."""
    mid = {s.key for s in select_sites(sites, "mid-resolution")}
    pixels = latent * patching.LATENT_FACTOR
    lines = [f"{len(sites)} cross-attention sites; mid-resolution: {len(mid)}",
             f"grid@{pixels}px  block    id  block_index  heads x dim  channels  context  mid-res"]
    for (factor, block, block_id), group in itertools.groupby(sites, key=lambda s: (s.downsample, *s.key[:2])):
        group = list(group)
        s = group[0]
        grid = latent // factor
        indices = f"{group[0].key[2]}-{group[-1].key[2]}"
        lines.append(f"{grid:>4}x{grid:<7} {block:<8} {block_id:>2}  {indices:<11}  {s.heads:>3} x {s.dim_head:<5}  "
                     f"{s.channels:>8}  {s.context_dim:>7}  {'yes' if s.key in mid else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--family", choices=sorted(NATIVE_LATENT), default="sdxl",
                        help="the UNet family whose detected config is built")
    family = parser.parse_args(argv).family
    print(site_table(full_size_sites(family), NATIVE_LATENT[family]))
    return 0
