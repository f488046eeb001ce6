"""A tiny SDXL-architecture model (UNet, both CLIPs, VAE) built in-process from
ComfyUI's own classes, for the tests, the benchmarks' wiring checks and the demo.

Same block and transformer-depth pattern as SDXL (so the same 70 cross-attention site
keys), small widths; the text side is SDXL's real two-encoder stack on ComfyUI's real
tokenizer files, shrunk. Weights are random under a fixed seed: it proves wiring, not
image quality.
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd

TEXT_WIDTH = 32                  # hidden size of each tiny CLIP
CONTEXT_DIM = 2 * TEXT_WIDTH     # clip_l and clip_g hidden states are concatenated
POOLED_DIM = TEXT_WIDTH          # clip_g's projected pooled output
SDXL_SIZE_EMBEDS = 6 * 256       # six Timestep(256) size/crop embeddings (model_base.SDXL)

# SDXL's UNet config as the host detects it from a real checkpoint
# (comfy/model_detection.py, "SDXL"), the base the tiny config shrinks.
SDXL_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
    "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

TINY_UNET_CONFIG = {
    **SDXL_UNET_CONFIG,
    "model_channels": 32,        # 32/64/128 channels: GroupNorm(32) needs multiples of 32
    "context_dim": CONTEXT_DIM,
    "adm_in_channels": POOLED_DIM + SDXL_SIZE_EMBEDS,
}


class TinySDXL(comfy.supported_models.SDXL):
    """SDXL's model config with 16-wide attention heads (SDXL's 64 would give 0 heads)."""
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}


def _tiny_clip_config(layers: int, width: int) -> dict:
    # SDXL reads clip_l's and clip_g's layer -2, so at least 3 layers keep that meaningful.
    return {"hidden_size": width, "intermediate_size": 2 * width,
            "num_attention_heads": 2, "num_hidden_layers": layers, "projection_dim": width}


def init_weights(module: torch.nn.Module) -> None:
    """ComfyUI's ops skip weight init (uninitialized memory): run torch's own."""
    base_types = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.GroupNorm)
    for m in module.modules():
        for base in base_types:
            if isinstance(m, base):
                base.reset_parameters(m)
                break


def unet_config(**overrides) -> dict:
    """The tiny UNet config, with optional overrides (e.g. depth-1 transformers)."""
    return {**TINY_UNET_CONFIG, **overrides}


def build_model(seed: int = 0, config: dict | None = None, head_channels: int = 16,
                v_prediction: bool = False) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher over ``model_base.SDXL`` with the tiny config, seeded weights, fp32;
    epsilon prediction (SDXL base) or v-prediction (as SDXL v-pred checkpoints, which the
    host recognises by a "v_pred" key)."""
    model_config = TinySDXL(config or TINY_UNET_CONFIG)
    model_config.unet_config["num_head_channels"] = head_channels
    model_config.set_inference_dtype(torch.float32, None)
    torch.manual_seed(seed)
    markers = {"v_pred": torch.zeros(0)} if v_prediction else {}
    model = model_config.get_model(markers, device=torch.device("cpu"))
    init_weights(model)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())


def build_clip(seed: int = 0, layers: int = 3, width: int = TEXT_WIDTH) -> comfy.sd.CLIP:
    """SDXL's two text encoders (real tokenizer files) at ``width``."""
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    torch.manual_seed(seed)
    clip = comfy.sd.CLIP(target, model_options={
        "clip_l_model_config": _tiny_clip_config(layers, width),
        "clip_g_model_config": _tiny_clip_config(layers, width),
        "dtype": torch.float32,
        "initial_device": torch.device("cpu"),
    })
    init_weights(clip.cond_stage_model)
    return clip


def build_vae(seed: int = 0) -> comfy.sd.VAE:
    """A freshly initialised TAESD (the host detects it from its keys)."""
    torch.manual_seed(seed)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_weights(taesd)
    return comfy.sd.VAE(sd=taesd.state_dict())


def build_all(seed: int = 0) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """MODEL, CLIP and VAE, as a checkpoint loader returns them."""
    return build_model(seed), build_clip(seed), build_vae(seed)
