"""SDXL-layout checkpoint FILES with random weights, written by the host's own save path
(``comfy.sd.save_checkpoint``, what its Save Checkpoint node calls) for Load Checkpoint
to read back: what the in-process demo models cannot show, that every node works on a
file the host detects and loads as a user's checkpoint, at SDXL's real widths.

The host recognises an SDXL-family UNet only at SDXL's widths (model channels 320, text
width 2048, pooled+size embedding 2816) and at one of a few known depth patterns
(comfy/supported_models.py), so a file cannot be made smaller than these layouts:

- ``sdxl``: SDXL base (UNet 2.6 B parameters, 70 cross-attention sites);
- ``vega``: Segmind Vega's depths (transformer depth 1 and 2, no middle transformer:
  UNet 0.75 B, 15 sites), the smallest UNet the host loads as an SDXL model. The suite's
  file.

Both carry SDXL's two full text encoders (clip_l and clip_g, 0.8 B) and the SD VAE.
Random weights draw noise: these files prove loading and wiring, not images.
"""
from __future__ import annotations

import logging
from pathlib import Path

from . import cli, host

host.import_host()
import comfy.ldm.models.autoencoder  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.sdxl_clip  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.supported_models_base  # noqa: E402
import torch  # noqa: E402

from comfyui_maskattn.maskattn_ops.heads import HeadSet, save_heads  # noqa: E402
from comfyui_maskattn.maskattn_ops.sites import Site, select_sites  # noqa: E402
from comfyui_maskattn.nodes import demo_models, patching  # noqa: E402

log = logging.getLogger(__name__)

# (the host's model class it must be detected as, the depths that differ from SDXL's)
LAYOUTS = {
    "sdxl": (comfy.supported_models.SDXL, {}),
    "vega": (comfy.supported_models.Segmind_Vega, {
        "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_middle": -1,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2]}),
}
# The SD VAE's config, as comfy.sd.VAE builds it for an SD/SDXL checkpoint
VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def unet_config(layout: str) -> dict:
    return {**demo_models.SDXL_UNET_CONFIG, **LAYOUTS[layout][1]}


def build_unet(layout: str, dtype: torch.dtype) -> comfy.model_patcher.ModelPatcher:
    """The layout's UNet as the host's model class builds it, torch's initializers on
    its weights (ComfyUI's ops leave them uninitialized)."""
    model_config = LAYOUTS[layout][0](unet_config(layout))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    demo_models.init_weights(model)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def build_clip(dtype: torch.dtype) -> comfy.sd.CLIP:
    """SDXL's clip_l + clip_g at their real sizes (the host's default configs)."""
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    clip = comfy.sd.CLIP(target, model_options={"dtype": dtype, "initial_device": torch.device("cpu")})
    demo_models.init_weights(clip.cond_stage_model)
    return clip


def build_vae() -> comfy.sd.VAE:
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=VAE_CONFIG, embed_dim=4)
    demo_models.init_weights(vae)
    return comfy.sd.VAE(sd=vae.state_dict())


def fitting_heads(sites: list[Site], seed: int) -> HeadSet:
    """Heads for the mid-resolution sites whose gates act: fresh heads keep every token
    everywhere, so their last layer and bias are redrawn (seeded) to switch tokens off
    at some locations."""
    heads = HeadSet.for_sites(select_sites(sites, "mid-resolution"), base_family="sdxl")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in heads.site_names:
            head = heads.head(name)
            last = head.features[-1].weight
            last.copy_(torch.randn(last.shape, generator=generator) / last[0].numel() ** 0.5)
            head.bias.zero_()
    return heads


def write_checkpoint(path: Path, layout: str = "vega", dtype: torch.dtype = torch.float16, seed: int = 0,
                     heads_path: Path | None = None) -> list[Site]:
    """Writes the layout's checkpoint to ``path`` through the host's save path (and, when
    ``heads_path`` is given, gate heads that fit it); returns the UNet's sites."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)}")
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        unet, clip, vae = build_unet(layout, dtype), build_clip(dtype), build_vae()
        sites = patching.discover_sites(unet)
        log.info("%s: UNet %.2f B parameters, %d cross-attention sites; writing %s",
                 layout, sum(p.numel() for p in unet.model.parameters()) / 1e9, len(sites), path)
        path.parent.mkdir(parents=True, exist_ok=True)
        comfy.sd.save_checkpoint(str(path), unet, clip, vae, metadata={"maskattn_test_layout": layout})
        if heads_path is not None:
            heads = fitting_heads(sites, seed)
            heads.fingerprint = patching.model_fingerprint(unet, heads.site_names)   # made for this file
            heads_path.parent.mkdir(parents=True, exist_ok=True)
            save_heads(heads, heads_path)
    comfy.model_management.unload_all_models()
    return sites


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="sdxl", help="the UNet's depths")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint file to write")
    parser.add_argument("--heads", type=Path, default=None, help="also write gate heads that fit it here")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="the weights' dtype in the file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cli.setup_logging()
    write_checkpoint(args.out, args.layout, DTYPES[args.dtype], args.seed, args.heads)
    return 0
