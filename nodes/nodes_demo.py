"""Demo models that ship with the extension, so workflows run without a checkpoint."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from . import tiny_sdxl

CATEGORY = "MaskAttn/demo"
TINY_RANDOM = "tiny SDXL, random weights (wiring only)"


class MaskAttnLoadDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnLoadDemoModel",
            display_name="Load MaskAttn Demo Model",
            category=CATEGORY,
            description=(
                "Builds a small model with SDXL's architecture (same UNet blocks and "
                "cross-attention sites, both CLIP encoders on the real tokenizer, a small "
                "VAE) in place of an SDXL checkpoint. Random weights: images are noise-like; "
                "it exists to run the workflows and tests without a checkpoint."),
            inputs=[
                io.Combo.Input("model", options=[TINY_RANDOM], default=TINY_RANDOM,
                               tooltip="Which demo model to build."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the random weights."),
            ],
            outputs=[
                io.Model.Output(tooltip="The UNet, like a checkpoint loader's MODEL."),
                io.Clip.Output(tooltip="SDXL's two text encoders, small."),
                io.Vae.Output(tooltip="A small VAE (TAESD architecture)."),
            ],
        )

    @classmethod
    def execute(cls, model: str, seed: int) -> io.NodeOutput:
        if model != TINY_RANDOM:
            raise ValueError(f"Load MaskAttn Demo Model: unknown model {model!r}; choose {TINY_RANDOM!r}")
        with torch.inference_mode():
            return io.NodeOutput(*tiny_sdxl.build_all(seed))
