"""The demo models Load MaskAttn Demo Model gives in place of an SDXL checkpoint, built
in-process from ComfyUI's own classes.

- The tiny models: a UNet family's block and transformer-depth pattern (so the same
  cross-attention site keys as the full-size model) at small widths, with the family's
  real text-encoder stack on ComfyUI's real tokenizer files, shrunk. SDXL (two encoders,
  clip_l + clip_g), SD1.x (clip_l) and SD2.x (OpenCLIP ViT-H, penultimate layer; epsilon
  or v-prediction). Random weights under a fixed seed: they prove wiring, not image
  quality (the tests and the benchmarks' wiring checks build them too).
- The shapes models: the SDXL architecture (and SD2.x's, Endo's setting), trained on
  rendered shapes by the lab (maskattn_lab/shapes_model.py saves them), read back from one
  safetensors file whose metadata holds the config it was built from, so
  ``load_shapes_model`` rebuilds exactly what was trained.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.taesd.taesd

TEXT_WIDTH = 32                  # hidden size of each tiny CLIP
CONTEXT_DIM = 2 * TEXT_WIDTH     # clip_l and clip_g hidden states are concatenated
POOLED_DIM = TEXT_WIDTH          # clip_g's projected pooled output
SDXL_SIZE_EMBEDS = 6 * 256       # six Timestep(256) size/crop embeddings (model_base.SDXL)

# The shapes model file
FORMAT = "maskattn-shapes-model"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "shapes_sdxl.safetensors"
SHIPPED_SD2 = SHIPPED.with_name("shapes_sd2.safetensors")     # SD2.x's architecture, the same data
UNET_PREFIX, CLIP_PREFIX, VAE_PREFIX = "model.diffusion_model.", "clip.", "vae."

# The UNet configs the host detects from real checkpoints (comfy/model_detection.py,
# "SDXL", "SD15", "SD21"), the bases the tiny configs shrink.
_DETECTED_COMMON = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                    "legacy": False, "in_channels": 4, "model_channels": 320,
                    "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL_UNET_CONFIG = {
    **_DETECTED_COMMON, "num_classes": "sequential", "adm_in_channels": 2816,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
    "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
}
_SD_1_2_LAYOUT = {"adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                  "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
                  "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
SD15_UNET_CONFIG = {**_DETECTED_COMMON, **_SD_1_2_LAYOUT, "use_linear_in_transformer": False,
                    "context_dim": 768, "num_heads": 8}
SD21_UNET_CONFIG = {**_DETECTED_COMMON, **_SD_1_2_LAYOUT, "use_linear_in_transformer": True,
                    "context_dim": 1024, "num_head_channels": 64}
DETECTED_UNET_CONFIGS = {"sdxl": SDXL_UNET_CONFIG, "sd1": SD15_UNET_CONFIG, "sd2": SD21_UNET_CONFIG}

TINY_UNET_CONFIG = {
    **SDXL_UNET_CONFIG,
    "model_channels": 32,        # 32/64/128 channels: GroupNorm(32) needs multiples of 32
    "context_dim": CONTEXT_DIM,
    "adm_in_channels": POOLED_DIM + SDXL_SIZE_EMBEDS,
}


class TinySDXL(comfy.supported_models.SDXL):
    """SDXL's model config with 16-wide attention heads (SDXL's 64 would give 0 heads)."""
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}


class TinySD2(comfy.supported_models.SD20):
    """SD2's model config (fp32 attention kept) with 16-wide attention heads."""
    unet_extra_config = {**comfy.supported_models.SD20.unet_extra_config, "num_head_channels": 16}


@dataclass(frozen=True)
class TinyFamily:
    """How to build one UNet family's tiny model: the host's model config class (SD1.x
    keeps its own 8 heads per site, whose width follows the channels), the tiny UNet
    config, the state-dict key the host reads v-prediction from (None: not offered)."""
    model_config: type
    unet_config: dict
    v_prediction_marker: dict | None


TINY_FAMILIES = {
    "sdxl": TinyFamily(TinySDXL, TINY_UNET_CONFIG, {"v_pred": torch.zeros(0)}),
    "sd1": TinyFamily(comfy.supported_models.SD15,
                      {**SD15_UNET_CONFIG, "model_channels": 32, "context_dim": TEXT_WIDTH}, None),
    # SD20.model_type calls a checkpoint v-prediction when this norm's bias varies (std > 0.09)
    "sd2": TinyFamily(TinySD2, {**SD21_UNET_CONFIG, "model_channels": 32, "context_dim": TEXT_WIDTH},
                      {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.tensor([-1.0, 1.0])}),
}


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
                v_prediction: bool = False, weight_dtype: torch.dtype = torch.float32,
                manual_cast: bool = True, family: str = "sdxl") -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher over the host's model for ``family`` ("sdxl": ``model_base.SDXL``,
    "sd1" / "sd2": ``model_base.BaseModel``) with the tiny config and seeded weights;
    epsilon prediction or v-prediction (SDXL and SD2, recognised the host's way from the
    state dict). ``weight_dtype`` other than fp32 stores the same weights in that dtype
    (fp16, bf16, fp8) with the compute dtype the host's own manual cast picks for this
    device, as a checkpoint loader would; ``manual_cast`` off computes in the weight dtype
    itself (what a GPU with bf16 or fp16 does)."""
    tiny = TINY_FAMILIES[family]
    if v_prediction and tiny.v_prediction_marker is None:
        raise ValueError(f"the tiny {family} model has no v-prediction form")

    def model_in(dtype, manual_cast_dtype):
        model_config = tiny.model_config(config or tiny.unet_config)
        if model_config.unet_config.get("num_head_channels", -1) != -1:
            model_config.unet_config["num_head_channels"] = head_channels
        model_config.set_inference_dtype(dtype, manual_cast_dtype)
        return model_config.get_model(dict(tiny.v_prediction_marker) if v_prediction else {},
                                      device=torch.device("cpu"))

    torch.manual_seed(seed)
    model = model_in(torch.float32, None)
    init_weights(model)           # torch's initializers work in fp32 only
    if weight_dtype != torch.float32:
        weights = model.state_dict()
        device = comfy.model_management.get_torch_device()
        cast = comfy.model_management.unet_manual_cast(weight_dtype, device) if manual_cast else None
        model = model_in(weight_dtype, cast)
        model.load_state_dict(weights)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())


def build_clip(seed: int = 0, layers: int = 3, width: int = TEXT_WIDTH, family: str = "sdxl") -> comfy.sd.CLIP:
    """The family's text encoders (the host's clip target for it: SDXL clip_l + clip_g,
    SD1.x clip_l, SD2.x clip_h) on the real tokenizer files, at ``width``."""
    model_config = TINY_FAMILIES[family].model_config
    target = model_config(TINY_FAMILIES[family].unet_config).clip_target()
    encoder_config = _tiny_clip_config(layers, width)
    torch.manual_seed(seed)
    clip = comfy.sd.CLIP(target, model_options={
        **{f"clip_{name}_model_config": encoder_config for name in ("l", "g", "h")},
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


def build_all(seed: int = 0, family: str = "sdxl", v_prediction: bool = False,
              ) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """MODEL, CLIP and VAE of a tiny ``family`` model, as a checkpoint loader returns them."""
    return (build_model(seed, v_prediction=v_prediction, family=family), build_clip(seed, family=family),
            build_vae(seed))


@dataclass
class ShapesModelConfig:
    """What the three parts are built from (recorded in the weights file)."""
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4)
    # SDXL's pattern (no attention at full resolution), depth 1 where SDXL has 2 and 10
    transformer_depth: tuple[int, ...] = (0, 0, 1, 1, 1, 1)
    transformer_depth_output: tuple[int, ...] = (0, 0, 0, 1, 1, 1, 1, 1, 1)
    transformer_depth_middle: int = 1
    head_channels: int = 16
    text_width: int = 32
    text_layers: int = 3
    image_size: int = 128
    # v-prediction: with epsilon prediction, x0 = x - sigma * eps amplifies the UNet's
    # error by sigma (14.6 at SDXL's first step); a UNet this small and this briefly
    # trained drew colour noise all over the image that way (docs/shapes_model.md)
    v_prediction: bool = True
    train: dict = field(default_factory=dict)     # the training run's settings, for the record
    # the UNet family (TINY_FAMILIES); files written before SD2.x shapes models are SDXL's
    family: str = "sdxl"

    @classmethod
    def for_family(cls, family: str, **fields) -> "ShapesModelConfig":
        """SDXL's shrunk pattern above, or SD1.x's / SD2.x's own block pattern (depth 1
        at its three attended levels, as the host detects it) at the same small widths."""
        if family == "sdxl":
            return cls(**fields)
        detected = DETECTED_UNET_CONFIGS[family]
        layout = {key: tuple(detected[key]) for key in ("channel_mult", "transformer_depth", "transformer_depth_output")}
        return cls(**layout, transformer_depth_middle=detected["transformer_depth_middle"], family=family, **fields)

    def context_dim(self) -> int:
        return 2 * self.text_width if self.family == "sdxl" else self.text_width   # SDXL: clip_l + clip_g

    def unet_config(self) -> dict:
        adm = {"adm_in_channels": self.text_width + SDXL_SIZE_EMBEDS} if self.family == "sdxl" else {}
        return {**TINY_FAMILIES[self.family].unet_config, **adm,
                "model_channels": self.model_channels, "channel_mult": list(self.channel_mult),
                "transformer_depth": list(self.transformer_depth),
                "transformer_depth_output": list(self.transformer_depth_output),
                "transformer_depth_middle": self.transformer_depth_middle, "context_dim": self.context_dim()}


def build_shapes_model(config: ShapesModelConfig, seed: int = 0):
    """MODEL, CLIP, VAE with freshly initialised weights (fp32, CPU)."""
    model = build_model(seed, config.unet_config(), head_channels=config.head_channels,
                        v_prediction=config.v_prediction, family=config.family)
    clip = build_clip(seed, layers=config.text_layers, width=config.text_width, family=config.family)
    return model, clip, build_vae(seed)


def is_token_table(key: str) -> bool:
    """A text encoder's token table: the file keeps only the shapes vocabulary's rows."""
    return key.startswith(CLIP_PREFIX) and key.endswith("token_embedding.weight")


def read_config(path: Path) -> ShapesModelConfig:
    """The config a shapes model file was built from (its metadata), checked for format."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{path.name}: not a readable safetensors file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not a shapes demo model (metadata format {metadata.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{path.name}: shapes model format version {metadata.get('format_version')!r}, "
                         f"this extension reads {FORMAT_VERSION}")
    raw = json.loads(metadata["config"])
    return ShapesModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def load_shapes_model(path: Path):
    """MODEL, CLIP, VAE from a file the lab saved; every tensor must fit."""
    config = read_config(path)
    model, clip, vae = build_shapes_model(config)
    weights = safetensors.torch.load_file(str(path))
    for key in [k for k in weights if is_token_table(k)]:
        rows = weights.pop(key + ".rows", None)
        if rows is not None:
            table = torch.zeros(clip.cond_stage_model.get_parameter(key[len(CLIP_PREFIX):]).shape)
            table[rows.long()] = weights[key].float()
            weights[key] = table
    parts = {UNET_PREFIX: model.model.diffusion_model, CLIP_PREFIX: clip.cond_stage_model,
             VAE_PREFIX: vae.first_stage_model}
    for prefix, module in parts.items():
        sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(sd, strict=False)
        except RuntimeError as e:          # a tensor of the wrong shape
            raise ValueError(f"{path.name}: weights do not fit the recorded config: {e}") from None
        if missing or unexpected:
            raise ValueError(f"{path.name}: weights do not fit the recorded config under {prefix!r} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, clip, vae
