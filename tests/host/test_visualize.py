"""Visualize Gates on the real host: forced gates show exactly, attention for plain
models, labels, batch 2, errors, and nothing left on the sampled model."""
import pytest
import torch
from torch.testing import assert_close

from comfyui_maskattn.maskattn_ops.heads import HeadSet
from comfyui_maskattn.maskattn_ops.sites import select_sites

from helpers import every_family, scripted_heads

PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def nodes_visualize(host):
    from comfyui_maskattn.nodes import nodes_visualize
    return nodes_visualize


@pytest.fixture(scope="module")
def setup(nodes_regions, tiny_models, encode, patching):
    from comfyui_maskattn.nodes import nodes_gating
    model, clip, _ = tiny_models
    with torch.inference_mode():
        positive, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(clip, PROMPT).args
        heads = HeadSet.for_sites(select_sites(patching.discover_sites(model), "mid-resolution"))
    scripted_heads(heads, {2: "right"})                    # "red" in the left half only
    gated = nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(
        model, heads, threshold=0.5, mode="hard", start_percent=0.0, end_percent=1.0, apply_to_uncond=True).args[0]
    return gated, positive, encode(""), prompt


def visualize(nodes_visualize, model, positive, negative, prompt, words="red", show="gate (hard)", layout="each site",
              sites="mid-resolution", batch=1, size=(16, 16), regions=None):
    latent = {"samples": torch.zeros(batch, 4, *size)}
    with torch.inference_mode():
        return nodes_visualize.MaskAttnVisualizeGates.execute(
            model, positive, negative, latent, prompt, words, show, layout, sites, 0.5, 0.5, 5.0, 0,
            regions=regions).args[0]


@every_family
def test_forced_gate_shows_exactly_its_mask(nodes_visualize, setup, patching):
    from comfyui_maskattn.maskattn_ops import heatmaps
    from comfyui_maskattn.nodes.visualize import capture_maps
    gated, positive, negative, prompt = setup
    gated_sites = [s.name for s in select_sites(patching.discover_sites(gated), "mid-resolution")]
    with torch.inference_mode():
        maps = capture_maps(gated, positive, negative, {"samples": torch.zeros(2, 4, 16, 24)}, 5.0, 0.5, 0)
    rows = nodes_visualize.word_maps([m for m in maps if m.gates is not None], {"red": [2], "circle": [3]},
                                     "gate (hard)", 0.5, "each site")
    assert [word for word, _ in rows] == ["red", "circle"]
    assert [label for label, _ in rows[0][1]] == gated_sites        # (SDXL's: tests/host/test_sites.py)
    left = torch.zeros(2, 8, 12)
    left[..., :6] = 1
    for _, m in rows[0][1]:
        assert torch.equal(m, left)                          # "red": exactly the left half, both batch items
    for _, m in rows[1][1]:
        assert (m == 1).all()                                # "circle": kept everywhere
    # and in the picture: the first tile's heat is the ramp's top left, its bottom right
    image = visualize(nodes_visualize, gated, positive, negative, prompt, size=(16, 24), batch=2)
    assert image.shape[0] == 2
    heat = image[0, heatmaps.LABEL_HEIGHT: heatmaps.LABEL_HEIGHT + 128, :192]
    assert_close(heat[:, :90].reshape(-1, 3), heatmaps.RAMP[-1].expand(128 * 90, 3))
    assert_close(heat[:, 102:].reshape(-1, 3), heatmaps.RAMP[0].expand(128 * 90, 3))


@every_family
def test_plain_model_shows_attention_and_refuses_gates(nodes_visualize, tiny_models, setup):
    _, positive, negative, prompt = setup
    image = visualize(nodes_visualize, tiny_models[0], positive, negative, prompt, words="red, square",
                      show="attention", layout="per level", sites="all")
    assert image.shape[0] == 1 and torch.isfinite(image).all() and image.max() > 0.5
    with pytest.raises(ValueError, match="has no learned gates"):
        visualize(nodes_visualize, tiny_models[0], positive, negative, prompt)


def test_word_not_in_prompt_is_named(nodes_visualize, setup):
    gated, positive, negative, prompt = setup
    with pytest.raises(ValueError, match="Visualize Gates \\(words\\): 'giraffe' is not in the prompt"):
        visualize(nodes_visualize, gated, positive, negative, prompt, words="red, giraffe")


def test_regions_outlined_and_model_left_untouched(nodes_visualize, nodes_regions, patching, setup, sample):
    """Nothing is installed on the model that samples, and it samples as before."""
    gated, positive, negative, prompt = setup
    providers = {layer: patching.providers(gated, object, layer) for layer in ("attn1", "attn2")}
    sampled = sample(gated, steps=2)
    regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "red", 1.0, 0, 0, 64, 128, 128, 128).args[0]
    image = visualize(nodes_visualize, gated, positive, negative, prompt, regions=regions)
    assert (image == 1.0).all(-1).any()                   # white outline pixels
    assert {layer: patching.providers(gated, object, layer) for layer in ("attn1", "attn2")} == providers
    assert patching.CAPTURES_KEY not in gated.model_options["transformer_options"]
    assert torch.equal(sample(gated, steps=2), sampled)


def test_visualize_a_guided_model(nodes_visualize, nodes_regions, patching, setup, sample):
    """A model from Region Mask Guidance (mode guidance) shows its attention: the one
    evaluation is no sampling run, so the latent step stays out of it (it used to refuse
    the internal one-evaluation sampler as unguidable); the guided model still guides."""
    gated, positive, negative, prompt = setup
    regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "red", 1.0, 0, 0, 64, 128, 128, 128).args[0]
    guided = nodes_regions.MaskAttnRegionGuidance.execute(gated, regions, "guidance", 0.08, 0.5, 0.3, 0.0, 0.3,
                                                          "all").args[0]
    image = visualize(nodes_visualize, guided, positive, negative, prompt, show="attention", regions=regions)
    assert image.shape[0] == 1 and torch.isfinite(image).all() and image.max() > 0.5
    assert patching.latent_guidance(guided) is not None
    assert not torch.equal(sample(guided, steps=2), sample(gated, steps=2))
