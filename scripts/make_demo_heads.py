"""Writes weights/tiny_sdxl_untrained_heads.safetensors: fresh ("keep everything") gate
heads for the tiny demo model's 10 mid-resolution sites, so the gating workflow runs on
it. Untrained: they reproduce the model's own attention and show uniform gates, on the
tiny model of any seed, so they record no model fingerprint.

With --stamp-shapes-heads, instead adds the shipped shapes model's fingerprint to the
shipped shapes heads (weights/shapes_sdxl_heads*.safetensors, trained on it by
scripts/train_heads.py before heads recorded one): the file is rewritten with the same
tensors, checked bit for bit, and the added metadata key.

    .venv/bin/python scripts/make_demo_heads.py [--stamp-shapes-heads]
"""
import argparse

import torch

from comfyui_maskattn.maskattn_ops.heads import HeadSet, add_fingerprint, load_heads, save_heads
from maskattn_lab.host import REPO, import_host

DEMO_HEADS = "tiny_sdxl_untrained_heads.safetensors"
SHAPES_HEADS = ("shapes_sdxl_heads.safetensors", "shapes_sdxl_heads_masksup.safetensors")
MID_SITES = [f"{block}.{i}.{d}" for block, ids in (("input", (4, 5)), ("output", (3, 4, 5))) for i in ids for d in (0, 1)]
TINY_MID_WIDTH = 64        # demo_models' tiny SDXL: model_channels 32 x channel_mult 2
TINY_CONTEXT = 64          # demo_models' tiny SDXL: two 32-wide CLIPs


def stamp_shapes_heads() -> None:
    import_host()
    from comfyui_maskattn.nodes import demo_models, patching
    with torch.inference_mode():
        model, _, _ = demo_models.load_shapes_model(demo_models.SHIPPED)
    for name in SHAPES_HEADS:
        path = REPO / "weights" / name
        heads = load_heads(path)
        add_fingerprint(path, patching.model_fingerprint(model, heads.site_names))
        print(f"stamped {path} with {demo_models.SHIPPED.name}'s fingerprint (tensors unchanged)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stamp-shapes-heads", action="store_true",
                        help="add the shipped shapes model's fingerprint to the shipped shapes heads")
    if parser.parse_args().stamp_shapes_heads:
        stamp_shapes_heads()
    else:
        torch.manual_seed(0)
        heads = HeadSet({s: (TINY_MID_WIDTH, TINY_MID_WIDTH) for s in MID_SITES}, context_dim=TINY_CONTEXT,
                        base_family="sdxl", training={"steps": 0, "note": "untrained: keeps every token"})
        path = REPO / "weights" / DEMO_HEADS
        save_heads(heads, path)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
