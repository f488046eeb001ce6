"""The shapes demo model's training side: the build-and-save half (the product's
nodes/demo_models.py builds and loads it), captions encoded differentiably for training,
and the scenes' own rendering through its VAE (the evaluation's ceiling).

It is the project's measuring ground (random weights prove wiring, never that a method
works) and the demo's default model: a small SDXL-architecture model (UNet from
``model_base.SDXL``, SDXL's two CLIP text encoders on the real tokenizer, the host's
TAESD as its VAE) that scripts/train_shapes_model.py trains on rendered shapes
(maskattn_lab/shapes.py). One safetensors file holds all three parts under a checkpoint's
usual prefixes, in fp16, with the config in its metadata.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import safetensors.torch
import torch

from . import host

host.import_host()
import comfy.sd  # noqa: E402

from comfyui_maskattn.nodes.demo_models import (  # noqa: E402
    CLIP_PREFIX, FORMAT, FORMAT_VERSION, UNET_PREFIX, VAE_PREFIX, ShapesModelConfig, is_token_table)

from . import shapes  # noqa: E402


def encode_captions(clip: comfy.sd.CLIP, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, pooled) for a batch of short captions, differentiable in the encoders.

    The same computation as ``clip.encode_from_tokens(clip.tokenize(c), return_pooled=True)``
    for one-chunk prompts at weight 1 (tests/test_shapes_model.py checks it), batched:
    SDXLClipModel concatenates clip_l's and clip_g's hidden states, pooled is clip_g's;
    SD1.x / SD2.x have one encoder (clip_l / clip_h) and no use for pooled.
    """
    tokens = [clip.tokenize(c) for c in captions]
    names = [n for n in ("l", "g", "h") if n in tokens[0]]        # SDXL's concatenation order: l, g
    for c, t in zip(captions, tokens):
        if any(len(t[n]) != 1 for n in names):
            raise ValueError(f"caption longer than one 77-token chunk: {c!r}")
    encoders = clip.cond_stage_model
    # The host's CLIP layers add residuals in place (x += ...) onto tensors LayerNorm
    # saved for backward: saving copies makes that legal (the encoders are small).
    # torch's allow_mutation_on_saved_tensors, used first, copies lazily but keys saved
    # tensors by (id, data_ptr, version); a mutated tensor, once freed, lent its id to a
    # new one, and a UNet GroupNorm backward got the wrong tensor after 46 steps.
    with torch.autograd.graph.saved_tensors_hooks(_copy, _same):
        outputs = [getattr(encoders, f"clip_{n}")([[tok for tok, _ in t[n][0]] for t in tokens]) for n in names]
    return torch.cat([hidden for hidden, _ in outputs], dim=-1), outputs[-1][1]


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.clone()


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


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
    for key in [k for k in out if is_token_table(k)]:
        out[key], out[key + ".rows"] = out[key][rows], rows.clone()
    return {k: (v.half() if v.is_floating_point() else v).detach().contiguous().cpu() for k, v in out.items()}


def save(path, config: ShapesModelConfig, model, clip, vae) -> None:
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(asdict(config))}
    safetensors.torch.save_file(state_dict(model, clip, vae), str(path), metadata=metadata)


def through_vae(vae: comfy.sd.VAE, scene: shapes.Scene) -> np.ndarray:
    """The scene's own rendering, encoded and decoded by ``vae`` ((H, W, 3) uint8): what a
    perfect diffusion model on this VAE gives back, so what the evaluator's readings of
    generated images can at best be."""
    return image_through_vae(vae, shapes.render(scene)[0])


def image_through_vae(vae: comfy.sd.VAE, image) -> np.ndarray:
    """An RGB image encoded and decoded by ``vae``: (H, W, 3) uint8."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    with torch.inference_mode():
        decoded = vae.decode(vae.encode(pixels))
    return (decoded[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
