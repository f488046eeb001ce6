"""Regions bound to words, and Region Mask Guidance's swapping and paint-with-words on
the real host over the tiny SDXL."""
import pytest
import torch

from comfyui_maskattn.maskattn_ops.attention import attention_logits
from comfyui_maskattn.maskattn_ops.regions import mask_to_grid
from comfyui_maskattn.maskattn_ops.region_attention import RegionAttention
from comfyui_maskattn.maskattn_ops.regions import Region

from helpers import FAMILY_MODELS, every_family


PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def prompt(nodes_regions, tiny_models):
    with torch.inference_mode():
        return nodes_regions.MaskAttnEncodeRegionPrompt.execute(tiny_models[1], PROMPT).args


def left_half(h=128, w=128, batch=1):
    mask = torch.zeros(batch, h, w)
    mask[:, :, : w // 2] = 1
    return mask


def bind(nodes_regions, prompt, words, mask=None, regions=None, box=(0, 0, 64, 64), image=(128, 128), strength=1.0):
    x, y, w, h = box
    return nodes_regions.MaskAttnBindRegion.execute(prompt, words, strength, x, y, w, h, image[0], image[1],
                                                    mask=mask, regions=regions).args[0]


def guide(nodes_regions, model, regions, mode="swapping", start=0.0, end=0.5, sites="all", weight=0.3, alpha=0.08, lam=0.5):
    return nodes_regions.MaskAttnRegionGuidance.execute(model, regions, mode, alpha, lam, weight, start, end, sites).args[0]


class Probe:
    """Records the cross-attention probabilities that the site really used (as a last
    probability edit) and, separately, the plain ones (from q and k)."""
    def __init__(self):
        self.used, self.plain = [], []

    def __call__(self, call):
        self.plain.append((call, attention_logits(call.q, call.k, call.site.heads).softmax(-1)))
        return None

    def probs_edit(self, call):
        def record(probs):
            self.used.append((call, probs))
            return probs
        return record


def test_region_prompt_encodes_like_clip_text_encode(prompt, encode):
    conditioning, region_prompt = prompt
    plain = encode(PROMPT)
    assert torch.equal(conditioning[0][0], plain[0][0])
    assert torch.equal(conditioning[0][1]["pooled_output"], plain[0][1]["pooled_output"])
    assert region_prompt.positions("red circle") == [2, 3] and region_prompt.context_tokens == 77


@every_family
def test_bind_errors_name_the_problem(nodes_regions, prompt):
    _, p = prompt
    with pytest.raises(ValueError, match="Bind Region to Words: 'giraffe' is not in the prompt"):
        bind(nodes_regions, p, "red, giraffe")
    with pytest.raises(ValueError, match="no words given"):
        bind(nodes_regions, p, " , ")
    with pytest.raises(ValueError, match=r"mask for 'red' is empty"):
        bind(nodes_regions, p, "red", mask=torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match=r"box for 'red' .* outside the 128x128 image"):
        bind(nodes_regions, p, "red", box=(100, 0, 64, 64))
    regions = bind(nodes_regions, p, "red circle", mask=left_half())
    regions = bind(nodes_regions, p, "blue square", regions=regions, box=(64, 0, 64, 128))
    assert [r.words for r in regions] == ["red circle", "blue square"]
    assert regions[1].mask.shape == (1, 128, 128) and regions[1].mask[0, :, 64:].all()


@pytest.mark.parametrize("fill", ["zero", "one", "half"])
@every_family
def test_swapping_sets_the_words_maps_at_every_site(nodes_regions, patching, tiny_models, prompt, sample, fill):
    _, p = prompt
    mask = {"zero": torch.zeros(1, 64, 64), "one": torch.ones(1, 64, 64), "half": left_half(64, 64)}[fill]
    region = Region(mask, tuple(p.positions("red circle")), p.context_tokens, "red circle")   # (all-zero: bypasses bind)
    probe = Probe()
    model = patching.install_bias(guide(nodes_regions, tiny_models[0], (region,), end=1.0), probe, "all")
    out = sample(model, prompt=PROMPT, steps=2)
    assert torch.isfinite(out).all()
    assert {call.site.key for call, _ in probe.used} == {s.key for s in patching.discover_sites(tiny_models[0])}
    for call, probs in probe.used:
        cond = ~call.is_uncond()
        expected = mask_to_grid(mask, call.grid)[0] / 2                      # 1/|C| inside, 0 outside
        for position in (2, 3):
            assert torch.allclose(probs[cond][..., position], expected.expand_as(probs[cond][..., position]))
        assert not torch.allclose(probs[~cond][..., 2], expected.expand_as(probs[~cond][..., 2]))  # uncond untouched


def top_left_cell() -> torch.Tensor:
    """1/64 of the image: one cell of an 8 x 8 grid, under SMALL_REGION."""
    mask = torch.zeros(1, 128, 128)
    mask[:, :16, :16] = 1.0
    return mask


@pytest.mark.parametrize("mode", ["paint-with-words", "paint-and-suppress"])
@pytest.mark.parametrize("region_mask", [left_half, top_left_cell])
@every_family
def test_painting_raises_the_words_logits_inside_and_suppress_lowers_them_outside(
        nodes_regions, patching, tiny_models, prompt, sample, mode, region_mask):
    """paint-with-words adds c = w' log(1 + sigma) max(QK^T) inside the region and nothing
    outside; paint-and-suppress also takes lambda * c away outside (lambda 0.7 here), times
    share / SMALL_REGION for a region under SMALL_REGION of the image (1/64 here)."""
    from comfyui_maskattn.maskattn_ops.region_attention import SMALL_REGION
    _, p = prompt
    regions = bind(nodes_regions, p, "red", mask=region_mask())
    model = guide(nodes_regions, tiny_models[0], regions, mode=mode, end=1.0, lam=0.7)
    changes = []                                   # (call, logits after - before)

    class Recorder:
        def __init__(self, provider):
            self.provider = provider

        def __call__(self, call):
            return self.provider(call)

        def logits_edit(self, call):
            edit = self.provider.logits_edit(call)

            def recorded(logits):
                before = logits.clone()
                changes.append((call, edit(logits) - before))
                return logits
            return recorded
    model = patching.map_providers(model, lambda p: Recorder(p) if isinstance(p, RegionAttention) else p)
    assert torch.isfinite(sample(model, steps=2)).all()
    changes = [(call, bias) for call, bias in changes if call.site.key == ("input", 4, 0)]
    assert len(changes) == 2
    for call, bias in changes:
        grid_mask = mask_to_grid(region_mask(), call.grid)[0]
        inside = grid_mask > 0.5
        cond = ~call.is_uncond()
        painted = bias[cond][..., 2]                                       # (rows, heads, N)
        assert (painted[:, :, inside] > 0).all()
        per_head = painted[:, :, inside][..., :1]                          # c, the same at every location
        torch.testing.assert_close(painted[:, :, inside], per_head.expand_as(painted[:, :, inside]))
        outside = painted[:, :, ~inside]
        if mode == "paint-with-words":
            assert (outside == 0).all()
        else:
            push_down = 0.7 * min(1.0, float(grid_mask.mean()) / SMALL_REGION)
            torch.testing.assert_close(outside, (-push_down * per_head).expand_as(outside))
        assert (bias[~cond] == 0).all() and (bias[..., 3] == 0).all()


@pytest.mark.parametrize("mode", ["swapping", "paint-with-words", "paint-and-suppress"])
@every_family
def test_inactive_window_is_exactly_unpatched(nodes_regions, tiny_models, prompt, sample, mode):
    _, p = prompt
    regions = bind(nodes_regions, p, "red", mask=left_half())
    model = guide(nodes_regions, tiny_models[0], regions, mode=mode, start=1.0, end=1.0)
    assert torch.equal(sample(model), sample(tiny_models[0]))


@pytest.mark.parametrize("mode", ["swapping", "paint-with-words", "paint-and-suppress"])
@every_family
def test_modes_raise_the_words_attention_mass_inside(nodes_regions, patching, tiny_models, prompt, sample, mode):
    """The attention the sites really use, on the cond rows during the window. (The
    lasting effect, after the window, needs a model that learned something: the random
    tiny model does not carry it; the trained toy model's evaluation will.)"""
    _, p = prompt
    regions = bind(nodes_regions, p, "red circle", mask=left_half())

    def mass_inside(model):
        probe = Probe()
        sample(patching.install_bias(model, probe, "all"), steps=2)
        inside_mass, total = 0.0, 0.0
        for call, probs in probe.used:
            cond = ~call.is_uncond()
            words = probs[cond][..., [2, 3]].sum(-1).mean(1)                 # (rows, N)
            inside = mask_to_grid(left_half(), call.grid)[0]
            inside_mass += float((words * inside).sum())
            total += float(words.sum())
        return inside_mass / total

    # a probe that edits nothing still makes the sites record what they used
    base = mass_inside(tiny_models[0])
    steered = mass_inside(guide(nodes_regions, tiny_models[0], regions, mode=mode, end=1.0, weight=1.0))
    assert steered > base + 0.1, (mode, base, steered)


def test_site_list_names_the_sites_instead_of_the_set(nodes_regions, patching, tiny_models, prompt):
    _, p = prompt
    regions = bind(nodes_regions, p, "red", mask=left_half())
    model = nodes_regions.MaskAttnRegionGuidance.execute(tiny_models[0], regions, "swapping", 0.08, 0.5, 0.3, 0.0, 0.5,
                                                         "all", site_list="input.4.0, output.3.1").args[0]
    installed = model.model_options["transformer_options"][patching.SITES_KEY]
    assert sorted(f"{layer} {op.site.name}" for (layer, _), op in installed.items()) == ["attn2 input.4.0",
                                                                                        "attn2 output.3.1"]
    with pytest.raises(ValueError, match=r"Region Mask Guidance \(sites\): unknown cross-attention site\(s\) \['input.1.0'\]"):
        nodes_regions.MaskAttnRegionGuidance.execute(tiny_models[0], regions, "swapping", 0.08, 0.5, 0.3, 0.0, 0.5,
                                                     "all", site_list="input.1.0")


def test_mask_batch_must_match_latent_batch(nodes_regions, tiny_models, prompt, sample):
    _, p = prompt
    regions = bind(nodes_regions, p, "red", mask=left_half(batch=3))
    with pytest.raises(Exception, match=r"mask for 'red' has batch 3, the latent batch is 2: give Bind Region to Words \(mask\)"):
        sample(guide(nodes_regions, tiny_models[0], regions), batch=2)
    per_sample = bind(nodes_regions, p, "red", mask=torch.cat([left_half(), 1 - left_half()]))
    assert torch.isfinite(sample(guide(nodes_regions, tiny_models[0], per_sample), batch=2)).all()


@pytest.mark.parametrize("sampler", ["euler_ancestral", "heun", "dpmpp_2m_sde", "uni_pc", "ddim", "lcm"])
def test_attention_modes_run_with_every_sampler(nodes_regions, tiny_models, prompt, sample, sampler):
    _, p = prompt
    regions = bind(nodes_regions, p, "red", mask=left_half())
    for mode in ("swapping", "paint-with-words", "paint-and-suppress"):
        assert torch.isfinite(sample(guide(nodes_regions, tiny_models[0], regions, mode=mode), sampler=sampler, steps=3)).all()


@pytest.mark.parametrize("demo_model", FAMILY_MODELS)
def test_regions_graph_through_the_executor(run_graph, demo_model):
    prompt = {
        "1": {"class_type": "MaskAttnLoadDemoModel", "inputs": {"model": demo_model, "seed": 0}},
        "2": {"class_type": "MaskAttnEncodeRegionPrompt", "inputs": {"clip": ["1", 1], "text": PROMPT}},
        "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
        "4": {"class_type": "MaskAttnBindRegion", "inputs": {
            "prompt": ["2", 1], "words": "red circle", "strength": 1.0, "x": 0, "y": 0, "width": 0, "height": 0,
            "image_width": 128, "image_height": 128, "mask": ["3", 0]}},
        "5": {"class_type": "MaskAttnBindRegion", "inputs": {
            "prompt": ["2", 1], "words": "blue square", "strength": 1.0, "x": 64, "y": 0, "width": 64, "height": 128,
            "image_width": 128, "image_height": 128, "regions": ["4", 0]}},
        "6": {"class_type": "MaskAttnRegionGuidance", "inputs": {
            "model": ["1", 0], "regions": ["5", 0], "mode": "swapping", "alpha": 0.08, "lam": 0.5, "weight": 0.3,
            "start_percent": 0.0, "end_percent": 0.3, "sites": "all"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "positive": ["2", 0], "negative": ["7", 0], "latent_image": ["8", 0],
            "seed": 0, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }
    assert len(run_graph(prompt)["11"]["images"]) == 1
