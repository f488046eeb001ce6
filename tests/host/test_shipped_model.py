"""The shipped shapes models (weights/shapes_sdxl.safetensors, and shapes_sd2.safetensors:
SD2.x's architecture) learned what they are for, and the region modes leave a lasting
mark on them: after their window closes, the bound words' attention stays more inside
their regions than without them (the random tiny model cannot show this; its attention
carries nothing from one step to the next)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_maskattn.maskattn_ops.attention import attention_logits
from comfyui_maskattn.maskattn_ops.regions import mask_to_grid

from helpers import Recorder

PROMPT = "a red circle and a blue square"
# token positions (after the start token) of the two bound phrases, in every encoder
PHRASES = {"red circle": [2, 3], "blue square": [6, 7]}
STEPS = 12


@pytest.fixture(scope="module")
def demo_models(host):
    from comfyui_maskattn.nodes import demo_models
    return demo_models


@pytest.fixture(scope="module", params=["SHIPPED", "SHIPPED_SD2"], ids=["sdxl", "sd2"])
def shipped(demo_models, request):
    path = getattr(demo_models, request.param)
    assert path.is_file(), f"{path} is missing"
    with torch.inference_mode():
        return demo_models.load_shapes_model(path)


def half(side: str, size: int = 128) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    if side == "left":
        mask[:, :, : size // 2] = 1
    else:
        mask[:, :, size // 2:] = 1
    return mask


def sample(model, clip, seed: int, steps: int = STEPS, prompt: str = PROMPT):
    import nodes
    positive = nodes.CLIPTextEncode().encode(clip, prompt)[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, steps, 5.0, "euler", "normal", positive, negative,
                                     {"samples": torch.zeros(1, 4, 16, 16)})[0]


def draw(shipped, prompt: str, seed: int) -> dict[str, str]:
    """The objects (colour -> kind) the evaluator finds in the shipped model's image."""
    import nodes
    from maskattn_lab import scoring
    model, clip, vae = shipped
    latent = sample(model, clip, seed, 16, prompt)
    with torch.inference_mode():
        image = nodes.VAEDecode().decode(vae, latent)[0][0]
    return scoring.objects((image.numpy() * 255).round().astype(np.uint8))


def test_shipped_model_draws_what_it_is_asked(shipped):
    """Issue 8's bar at fixed seeds: single-object prompts give the named colour in the
    named kind in most samples (over 100 prompts 0.93, benchmarks/results/shapes_quality.md),
    two-object prompts both colours. A random model draws neither."""
    asked = [("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "square"),
             ("purple", "circle"), ("orange", "triangle")]
    found = [draw(shipped, f"a {color} {shape}", seed) for seed, (color, shape) in enumerate(asked)]
    in_kind = [f.get(color) == shape for f, (color, shape) in zip(found, asked)]
    assert sum(in_kind) >= 4, f"the named colour in the named kind in only {sum(in_kind)} of {len(asked)}: {found}"
    pairs = list(zip(asked[0::2], asked[1::2])) + list(zip(asked[1::2], asked[2::2]))
    both = [draw(shipped, f"a {a} {k} and a {b} {m}", seed) for seed, ((a, k), (b, m)) in enumerate(pairs)]
    present = [{a, b} <= set(f) for f, ((a, _), (b, _)) in zip(both, pairs)]
    assert sum(present) >= 4, f"both named colours in only {sum(present)} of {len(pairs)}: {both}"


def mass_inside_after_window(patching, shipped, model, seeds, at_percent=0.5) -> float:
    """Fraction of the bound phrases' cond attention inside their regions at the first
    step after ``at_percent`` of sampling (the modes act in 0-30%), over all sites."""
    _, clip, _ = shipped
    inside_mass = total = 0.0
    for seed in seeds:
        recorder = Recorder()
        sample(patching.install_bias(model, recorder, "all"), clip, seed)
        threshold = model.get_model_object("model_sampling").percent_to_sigma(at_percent)
        after = [c for c in recorder.calls if float(c.sigmas.max()) < threshold]
        first = max(float(c.sigmas.max()) for c in after)
        for call in (c for c in after if float(c.sigmas.max()) == first):
            cond = ~call.is_uncond()
            probs = attention_logits(call.q[cond], call.k[cond], call.site.heads).softmax(-1)
            for (phrase, tokens), side in zip(PHRASES.items(), ("left", "right")):
                words = probs[..., tokens].sum(-1).mean(1)                     # (rows, N)
                inside = mask_to_grid(half(side), call.grid)[0]
                inside_mass += float((words * inside).sum())
                total += float(words.sum())
    return inside_mass / total


@pytest.fixture(scope="module")
def bound(shipped, nodes_regions):
    _, clip, _ = shipped
    with torch.inference_mode():
        _, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(clip, PROMPT).args
    regions = None
    for phrase, side in zip(PHRASES, ("left", "right")):
        regions = nodes_regions.MaskAttnBindRegion.execute(prompt, phrase, 1.0, 0, 0, 0, 0, 128, 128,
                                                           mask=half(side), regions=regions).args[0]
    return regions


@pytest.mark.parametrize("mode", ["guidance", "swapping", "paint-with-words", "paint-and-suppress"])
def test_modes_leave_the_words_attention_inside_after_their_window(patching, shipped, nodes_regions, bound, mode):
    model = shipped[0]
    seeds = range(3)
    base = mass_inside_after_window(patching, shipped, model, seeds)
    steered = nodes_regions.MaskAttnRegionGuidance.execute(model, bound, mode, 0.08, 0.5, 0.3, 0.0, 0.3,
                                                           "all").args[0]
    after = mass_inside_after_window(patching, shipped, steered, seeds)
    assert after > base + 0.02, (mode, base, after)
