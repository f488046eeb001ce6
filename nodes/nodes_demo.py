"""Demo models that ship with the extension, so workflows run without a checkpoint."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from . import shapes_model, tiny_sdxl

CATEGORY = "MaskAttn/demo"
SHAPES = "shapes SDXL, trained on rendered shapes (128 px)"
TINY_RANDOM = "tiny SDXL, random weights (wiring only)"
DEMO_MODELS = (SHAPES, TINY_RANDOM)


class MaskAttnLoadDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnLoadDemoModel",
            display_name="Load MaskAttn Demo Model",
            category=CATEGORY,
            description=(
                "A small model with SDXL's architecture (the same UNet blocks and cross-attention "
                "sites, both CLIP encoders on the real tokenizer, a small VAE) in place of an SDXL "
                "checkpoint. 'shapes SDXL' is trained on images of 1 to 4 coloured circles, "
                "squares and triangles (scripts/train_shapes_model.py writes "
                "weights/shapes_sdxl.safetensors): prompt it like 'a red circle and a blue "
                "square' at 128x128 (colours: red, green, blue, yellow, purple, orange). The "
                "random one only runs the wiring."),
            inputs=[
                io.Combo.Input("model", options=list(DEMO_MODELS), default=SHAPES,
                               tooltip="Which demo model to load."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the random weights (random model only)."),
            ],
            outputs=[
                io.Model.Output(tooltip="The UNet, like a checkpoint loader's MODEL."),
                io.Clip.Output(tooltip="SDXL's two text encoders, small."),
                io.Vae.Output(tooltip="A small VAE."),
            ],
        )

    @classmethod
    def execute(cls, model: str, seed: int) -> io.NodeOutput:
        if model not in DEMO_MODELS:
            raise ValueError(f"Load MaskAttn Demo Model: unknown model {model!r}; choose one of {list(DEMO_MODELS)}")
        with torch.inference_mode():
            if model == TINY_RANDOM:
                return io.NodeOutput(*tiny_sdxl.build_all(seed))
            if not shapes_model.SHIPPED.is_file():
                raise FileNotFoundError(f"Load MaskAttn Demo Model (model): {shapes_model.SHIPPED} is missing; "
                                        "train it with scripts/train_shapes_model.py --out <that path>")
            return io.NodeOutput(*shapes_model.load(shapes_model.SHIPPED))
