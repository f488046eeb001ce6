"""Writes weights/tiny_sdxl_untrained_heads.safetensors: fresh ("keep everything") gate
heads for the tiny demo model's 10 mid-resolution sites, so the gating workflow runs on
it. Untrained: they reproduce the model's own attention and show uniform gates.

    .venv/bin/python scripts/make_demo_heads.py
"""
import torch

from comfyui_maskattn.maskattn_ops.heads import HeadSet, save_heads
from maskattn_lab.host import REPO

DEMO_HEADS = "tiny_sdxl_untrained_heads.safetensors"
MID_SITES = [f"{block}.{i}.{d}" for block, ids in (("input", (4, 5)), ("output", (3, 4, 5))) for i in ids for d in (0, 1)]
TINY_MID_WIDTH = 64        # demo_models' tiny SDXL: model_channels 32 x channel_mult 2
TINY_CONTEXT = 64          # demo_models' tiny SDXL: two 32-wide CLIPs

if __name__ == "__main__":
    torch.manual_seed(0)
    heads = HeadSet({s: (TINY_MID_WIDTH, TINY_MID_WIDTH) for s in MID_SITES}, context_dim=TINY_CONTEXT,
                    base_family="sdxl-tiny-demo", training={"steps": 0, "note": "untrained: keeps every token"})
    path = REPO / "weights" / DEMO_HEADS
    save_heads(heads, path)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
