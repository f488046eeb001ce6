"""The shapes demo model: a small SDXL-architecture model (UNet from ``model_base.SDXL``,
SDXL's two CLIP text encoders on the real tokenizer, the host's TAESD as its VAE)
that scripts/train_shapes_model.py trains on rendered shapes (evaluation/shapes.py).

It is the project's measuring ground (random weights prove wiring, never that a method
works) and the demo's default model. One safetensors file holds all three parts under a
checkpoint's usual prefixes, and its metadata holds the config it was built from, so
``load`` rebuilds exactly what was trained.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

import comfy.sd

from ..evaluation import shapes
from . import tiny_sdxl

FORMAT = "maskattn-shapes-model"
FORMAT_VERSION = 1
SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "shapes_sdxl.safetensors"
UNET_PREFIX, CLIP_PREFIX, VAE_PREFIX = "model.diffusion_model.", "clip.", "vae."


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
    # trained drew colour noise all over the image that way (docs in README)
    v_prediction: bool = True
    train: dict = field(default_factory=dict)     # the training run's settings, for the record

    def unet_config(self) -> dict:
        return tiny_sdxl.unet_config(
            model_channels=self.model_channels, channel_mult=list(self.channel_mult),
            transformer_depth=list(self.transformer_depth),
            transformer_depth_output=list(self.transformer_depth_output),
            transformer_depth_middle=self.transformer_depth_middle,
            context_dim=2 * self.text_width,
            adm_in_channels=self.text_width + tiny_sdxl.SDXL_SIZE_EMBEDS)


def build(config: ShapesModelConfig, seed: int = 0):
    """MODEL, CLIP, VAE with freshly initialised weights (fp32, CPU)."""
    model = tiny_sdxl.build_model(seed, config.unet_config(), head_channels=config.head_channels,
                                  v_prediction=config.v_prediction)
    clip = tiny_sdxl.build_clip(seed, layers=config.text_layers, width=config.text_width)
    return model, clip, tiny_sdxl.build_vae(seed)


def encode_captions(clip: comfy.sd.CLIP, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, pooled) for a batch of short captions, differentiable in the encoders.

    The same computation as ``clip.encode_from_tokens(clip.tokenize(c), return_pooled=True)``
    for one-chunk prompts at weight 1 (tests/test_shapes_model.py checks it), batched:
    SDXLClipModel concatenates clip_l's and clip_g's hidden states, pooled is clip_g's.
    """
    tokens = [clip.tokenize(c) for c in captions]
    for c, t in zip(captions, tokens):
        if len(t["l"]) != 1 or len(t["g"]) != 1:
            raise ValueError(f"caption longer than one 77-token chunk: {c!r}")
    encoders = clip.cond_stage_model
    # The host's CLIP layers add residuals in place (x += ...) onto tensors LayerNorm
    # saved for backward: saving copies makes that legal (the encoders are small).
    # torch's allow_mutation_on_saved_tensors, used first, copies lazily but keys saved
    # tensors by (id, data_ptr, version); a mutated tensor, once freed, lent its id to a
    # new one, and a UNet GroupNorm backward got the wrong tensor after 46 steps.
    with torch.autograd.graph.saved_tensors_hooks(_copy, _same):
        l_out, _ = encoders.clip_l([[tok for tok, _ in t["l"][0]] for t in tokens])
        g_out, g_pooled = encoders.clip_g([[tok for tok, _ in t["g"][0]] for t in tokens])
    return torch.cat([l_out, g_out], dim=-1), g_pooled


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.clone()


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _is_token_table(key: str) -> bool:
    return key.startswith(CLIP_PREFIX) and key.endswith("token_embedding.weight")


def vocabulary_rows(clip) -> torch.Tensor:
    """Token ids the shapes captions can produce, start/end/pad tokens included."""
    tokens = clip.tokenize(" ".join(shapes.VOCABULARY))
    return torch.tensor(sorted({tok for chunks in tokens.values() for chunk in chunks for tok, _ in chunk}))


def state_dict(model, clip, vae) -> dict[str, torch.Tensor]:
    """All three parts in fp16, under a checkpoint's prefixes. The text encoders' token
    tables (2 x 49408 rows, most of the file) keep only the rows of the shapes
    vocabulary (KEY + ".rows" holds their ids): no other token was ever trained, and
    ``load`` gives them zero embeddings."""
    out = {UNET_PREFIX + k: v for k, v in model.model.diffusion_model.state_dict().items()}
    out.update({CLIP_PREFIX + k: v for k, v in clip.cond_stage_model.state_dict().items()})
    out.update({VAE_PREFIX + k: v for k, v in vae.first_stage_model.state_dict().items()})
    rows = vocabulary_rows(clip)
    for key in [k for k in out if _is_token_table(k)]:
        out[key], out[key + ".rows"] = out[key][rows], rows.clone()
    return {k: (v.half() if v.is_floating_point() else v).detach().contiguous().cpu() for k, v in out.items()}


def save(path: Path, config: ShapesModelConfig, model, clip, vae) -> None:
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(asdict(config))}
    safetensors.torch.save_file(state_dict(model, clip, vae), str(path), metadata=metadata)


def read_config(path: Path) -> ShapesModelConfig:
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


def load(path: Path):
    """MODEL, CLIP, VAE from a file written by ``save``; every tensor must fit."""
    config = read_config(path)
    model, clip, vae = build(config)
    weights = safetensors.torch.load_file(str(path))
    for key in [k for k in weights if _is_token_table(k)]:
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


def through_vae(vae: comfy.sd.VAE, scene: shapes.Scene) -> np.ndarray:
    """The scene's own rendering, encoded and decoded by ``vae`` ((H, W, 3) uint8): what a
    perfect diffusion model on this VAE gives back, so what the evaluator's readings of
    generated images can at best be."""
    image, _ = shapes.render(scene)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    with torch.inference_mode():
        decoded = vae.decode(vae.encode(pixels))
    return (decoded[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
