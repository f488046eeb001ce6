"""Load MaskAttn Demo Model: the demo models that ship with the extension, so workflows
run without a checkpoint."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from . import demo_models, patching

log = logging.getLogger(__name__)

CATEGORY = "MaskAttn/demo"
# Combo values are what saved workflows store: short keys, stable forever.
SHAPES, TINY_RANDOM = "shapes-sdxl", "tiny-sdxl-random"
# random-weight models of each UNet family the nodes support: (family, v-prediction)
TINY_RANDOM_MODELS = {TINY_RANDOM: ("sdxl", False), "tiny-sd1-random": ("sd1", False),
                      "tiny-sd2-random": ("sd2", False), "tiny-sd2-v-random": ("sd2", True)}
SHAPES_SD2 = "shapes-sd2"
DEMO_MODELS = (SHAPES, SHAPES_SD2, *TINY_RANDOM_MODELS)
# Values that workflows saved by earlier versions hold, still loaded.
LEGACY_VALUES = {
    "shapes SDXL, trained on rendered shapes (128 px)": SHAPES,
    "tiny SDXL, random weights (wiring only)": TINY_RANDOM,
}


def demo_model_key(value: str) -> str:
    """A combo value, current or legacy, as its current key; anything else is an error."""
    key = LEGACY_VALUES.get(value, value)
    if key not in DEMO_MODELS:
        raise ValueError(f"Load MaskAttn Demo Model (model): unknown model {value!r}; choose one of {list(DEMO_MODELS)}")
    return key


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
                "checkpoint. 'shapes-sdxl' is trained on images of 1 to 4 coloured circles, "
                "squares and triangles (scripts/train_shapes_model.py writes "
                "weights/shapes_sdxl.safetensors): prompt it like 'a red circle and a blue "
                "square' at 128x128 (colours: red, green, blue, yellow, purple, orange); "
                "'shapes-sd2' is the same training with SD2.x's UNet blocks and one text encoder. "
                "The tiny-*-random models have random weights and only run the wiring: SDXL's, "
                "SD1.x's (clip_l) and SD2.x's (OpenCLIP ViT-H; epsilon, or v-prediction as SD2 768) "
                "architectures, small."),
            inputs=[
                io.Combo.Input("model", options=list(DEMO_MODELS), default=SHAPES,
                               tooltip="shapes-sdxl / shapes-sd2: SDXL's / SD2.x's architecture trained "
                                       "on rendered shapes (128 px). "
                                       "tiny-sdxl/sd1/sd2/sd2-v-random: that family's architecture with "
                                       "random weights (wiring only)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seed of the random weights (used by the tiny-*-random models only)."),
            ],
            outputs=[
                io.Model.Output(tooltip="The UNet, like a checkpoint loader's MODEL."),
                io.Clip.Output(tooltip="The family's text encoders (SDXL: two), small."),
                io.Vae.Output(tooltip="A small VAE."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model: str) -> bool | str:
        """Takes over the host's list check of ``model``, so that workflows saved with the
        earlier, longer values still load."""
        try:
            demo_model_key(model)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model: str, seed: int) -> io.NodeOutput:
        key = demo_model_key(model)
        if key != model:
            log.info("Load MaskAttn Demo Model: %r is now %r", model, key)
        with torch.inference_mode():
            if key in TINY_RANDOM_MODELS:
                family, v_prediction = TINY_RANDOM_MODELS[key]
                return io.NodeOutput(*demo_models.build_all(seed, family, v_prediction))
            path = demo_models.SHIPPED if key == SHAPES else demo_models.SHIPPED_SD2
            if not path.is_file():
                raise FileNotFoundError(f"Load MaskAttn Demo Model (model): {path} is missing; "
                                        "train it with scripts/train_shapes_model.py --out <that path>")
            model, clip, vae = demo_models.load_shapes_model(path)
            side = demo_models.read_config(path).image_size
            return io.NodeOutput(patching.with_trained_size(model, side, side, f"The demo model {key!r}"), clip, vae)
