"""Masked-attention guidance (Endo Sec. 3.2) through the host's real samplers."""
import pytest
import torch
from torch.testing import assert_close

from comfyui_maskattn.maskattn_ops.attention import attention_logits
from comfyui_maskattn.maskattn_ops.guidance import ENDO_TERMS
from comfyui_maskattn.maskattn_ops.regions import mask_to_grid

from helpers import build_like, every_family

PROMPT = "a red circle and a blue square"
WORDS = [2, 3]          # "red circle"


@pytest.fixture(scope="module")
def k_diffusion_sampling(host):
    import comfy.k_diffusion.sampling
    return comfy.k_diffusion.sampling


@pytest.fixture(scope="module")
def region_prompt(nodes_regions, tiny_models):
    with torch.inference_mode():
        return nodes_regions.MaskAttnEncodeRegionPrompt.execute(tiny_models[1], PROMPT).args


def left_half(h=128, w=128):
    mask = torch.zeros(1, h, w)
    mask[:, :, : w // 2] = 1
    return mask


@pytest.fixture(scope="module")
def regions(nodes_regions, region_prompt):
    _, prompt = region_prompt
    return nodes_regions.MaskAttnBindRegion.execute(prompt, "red circle", 1.0, 0, 0, 0, 0, 128, 128,
                                                    mask=left_half()).args[0]


def guide(nodes_regions, model, regions, alpha=0.08, lam=0.5, start=0.0, end=0.3, sites="all"):
    return nodes_regions.MaskAttnRegionGuidance.execute(model, regions, "guidance", alpha, lam, 0.3, start, end, sites).args[0]


class Capture:
    """Test-side recorder of (site, q, k) at every site while ``on``; changes nothing."""
    def __init__(self):
        self.on, self.calls = False, []

    def __call__(self, call):
        if self.on:
            self.calls.append(call)
        return None


def endo_loss_written_out(calls, lam=0.5, regions=None):
    """Eq. 2 over the recorded sites, cond rows, every head: raw sums, then rescaled to
    Endo's term count as the extension documents. ``regions``: (mask (1 or one per
    latent, H, W), word positions, strength) each; by default "red circle" in the left half.
    Each latent of the batch is summed with its own mask."""
    raw, terms = 0.0, 0
    for call in calls:
        cond = ~call.is_uncond()
        probs = attention_logits(call.q[cond], call.k[cond], call.site.heads).softmax(-1)   # (B, heads, N, T)
        for mask, words, strength in regions or [(left_half(), WORDS, 1.0)]:
            for item in range(probs.shape[0]):
                inside = mask_to_grid(mask[item % mask.shape[0]][None], call.grid)[0]        # (N,)
                for w in words:
                    m = probs[item, ..., w]                                                  # (heads, N)
                    raw = raw + strength * (-(m * inside).sum() + lam * (m * (1 - inside)).sum())
        terms += call.site.heads * probs.shape[-2]
    return raw * ENDO_TERMS / terms


def endo_update(model, x, s, extra_args, capture, alpha, regions=None):
    """Endo Eq. 3 written out: the whole guidance forward recorded by ``capture``, Eq. 2
    on it, and z <- z - alpha dL/dz on z = x / sqrt(1 + s^2), i.e. x <- x - alpha (1 + s^2)
    dL/dx (the same input scaling for EPS and v-prediction models)."""
    x_leaf = x.detach().clone().requires_grad_(True)
    capture.on, capture.calls = True, []
    with torch.enable_grad():
        model(x_leaf, s * x.new_ones([x.shape[0]]), **extra_args)
        capture.on = False
        (grad,) = torch.autograd.grad(endo_loss_written_out(capture.calls, regions=regions), x_leaf)
    return x - alpha * (1 + s ** 2) * grad


def euler_step(model, x, sigmas, i, extra_args, state):
    """One euler step (= DDIM without a mask), written out."""
    s = sigmas[i]
    denoised = model(x, s * x.new_ones([x.shape[0]]), **extra_args)
    return x + (x - denoised) / s * (sigmas[i + 1] - s)


def node_and_written_out(nodes_regions, patching, tiny, regions, region_prompt, encode, *, sampler, step, steps,
                         end, sites="all", v_prediction=False, alpha=0.08, cfg=5.0, seed=0, start=0.0, batch=1,
                         written_regions=None, like=None):
    """The same run twice, on the tiny model (seed 0): Region Mask Guidance through the
    host's ``sampler``, and written out: Endo's update (``endo_update``, its guidance
    forward running the whole UNet on a twin built outside inference mode: plain
    autograd; ``written_regions`` as ``endo_loss_written_out`` takes them) while sigma
    is in the window, then ``step``. Also the unguided run. ``like``: a model of the family
    to build (else the tiny SDXL). Returns (node, written out, unguided) final latents."""
    import comfy.sample
    import comfy.samplers
    positive, _ = region_prompt
    negative = encode("")
    latent = torch.zeros(batch, 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent, seed)
    def build():
        return build_like(tiny, like) if like is not None else tiny.build_model(seed=0, v_prediction=v_prediction)

    with torch.inference_mode():
        model = build()
        guided = guide(nodes_regions, model, regions, alpha=alpha, start=start, end=end, sites=sites)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
        node_out = comfy.sample.sample_custom(guided, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas,
                                              positive, negative, latent, seed=seed)

    twin = build()
    twin.model.requires_grad_(False)                     # frozen, as a sampled model is
    capture = Capture()
    twin = patching.install_bias(twin, capture, sites)
    window_sigma = twin.get_model_object("model_sampling").percent_to_sigma(end)
    window_start = twin.get_model_object("model_sampling").percent_to_sigma(start)

    def endo_then_step(model, x, sigmas, extra_args=None, callback=None, disable=None):
        state = {}
        for i in range(len(sigmas) - 1):
            s = sigmas[i]
            if window_sigma <= float(s) <= window_start:
                x = endo_update(model, x, s, extra_args, capture, alpha, written_regions)
            x = step(model, x, sigmas, i, extra_args, state)
        return x

    reference = comfy.sample.sample_custom(twin, noise, cfg, comfy.samplers.KSAMPLER(endo_then_step), sigmas,
                                           positive, negative, latent, seed=seed)
    unguided = comfy.sample.sample_custom(twin, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas,
                                          positive, negative, latent, seed=seed)
    return node_out, reference, unguided


def assert_node_equals_written_out(node_out, reference, unguided):
    assert (reference - unguided).abs().max() > 1e-2          # the guidance did something
    assert_close(node_out, reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item())


@pytest.mark.parametrize("sites", ["all", "encoder"])
def test_node_equals_endo_update_written_out(nodes_regions, patching, tiny, region_prompt, regions, encode, sites):
    """Reference: ComfyUI's model, DDIM (= euler without a mask), 10 steps, guided while
    sigma is in the window; Eq. 3 applied to z = x / sqrt(1 + sigma^2) plainly, its
    guidance forward running the whole UNet. The node, through the real sampler, must
    give the same final latent (with "encoder", from a pass it ends after the input
    blocks)."""
    assert_node_equals_written_out(*node_and_written_out(
        nodes_regions, patching, tiny, regions, region_prompt, encode,
        sampler="ddim", step=euler_step, steps=10, end=0.3, sites=sites))


@every_family
def test_every_family_guided_equals_endo_written_out(nodes_regions, patching, tiny, tiny_models, region_prompt,
                                                    regions, encode):
    """SDXL, SD1.x, SD2.x (epsilon and v-prediction): DDIM, Endo's update written out on
    the family's own model, guided at every cross-attention site (Endo's setting)."""
    assert_node_equals_written_out(*node_and_written_out(
        nodes_regions, patching, tiny, regions, region_prompt, encode,
        sampler="ddim", step=euler_step, steps=10, end=0.3, like=tiny_models[0]))


def words_mass_inside(patching, model, sample, steps=6, at_percent=0.5):
    """Fraction of the bound words' cond attention that lies inside the region, over all
    sites, at the first step after ``at_percent`` of sampling."""
    probe = Capture()
    probe.on = True
    sample(patching.install_bias(model, probe, "all"), steps=steps)
    threshold = model.get_model_object("model_sampling").percent_to_sigma(at_percent)
    after = [c for c in probe.calls if float(c.sigmas.max()) < threshold]
    first = max(float(c.sigmas.max()) for c in after)
    inside_mass = total = 0.0
    for call in (c for c in after if float(c.sigmas.max()) == first):
        cond = ~call.is_uncond()
        words = attention_logits(call.q[cond], call.k[cond], call.site.heads).softmax(-1)[..., WORDS].sum(-1).mean(1)
        inside = mask_to_grid(left_half(), call.grid)[0]
        inside_mass += float((words * inside).sum())
        total += float(words.sum())
    return inside_mass / total


@every_family
def test_guidance_raises_the_words_mass_inside_after_the_window(nodes_regions, patching, tiny_models, regions, sample):
    model = tiny_models[0]
    base = words_mass_inside(patching, model, sample)
    weak = words_mass_inside(patching, guide(nodes_regions, model, regions, alpha=0.08, end=0.5), sample)
    strong = words_mass_inside(patching, guide(nodes_regions, model, regions, alpha=0.32, end=0.5), sample)
    assert base < weak < strong, (base, weak, strong)


@pytest.mark.parametrize("sites, blocks", [("encoder", {"input"}), ("all", {"input", "middle", "output"})])
def test_guidance_pass_runs_only_up_to_the_last_guided_site(nodes_regions, patching, tiny_models, regions, sample,
                                                           sites, blocks):
    """The cost of guidance is its pass: "encoder" must end it after the input blocks."""
    reached = set()

    def probe(call):        # a bias provider that only records which blocks the pass reached
        if call.run is not None and call.run.guidance_pass is not None:
            reached.add(call.site.key[0])
        return None

    sample(patching.install_bias(guide(nodes_regions, tiny_models[0], regions, sites=sites), probe, "all"), steps=3)
    assert reached == blocks


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "heun", "ddim", "lcm"])
@every_family
def test_supported_samplers_run_guided(nodes_regions, tiny_models, regions, sample, sampler):
    out = sample(guide(nodes_regions, tiny_models[0], regions, end=0.5), sampler=sampler, steps=4)
    assert torch.isfinite(out).all()
    assert (out - sample(tiny_models[0], sampler=sampler, steps=4)).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["uni_pc", "uni_pc_bh2", "dpm_fast", "dpm_adaptive", "sa_solver"])
def test_unsupported_samplers_are_refused_clearly(nodes_regions, tiny_models, regions, sample, sampler,
                                                  k_diffusion_sampling):
    with pytest.raises(ValueError, match=r"sampler '\w+' cannot be guided"):
        sample(guide(nodes_regions, tiny_models[0], regions), sampler=sampler, steps=3)
    assert k_diffusion_sampling.trange.__name__ == "trange"


@every_family
def test_inactive_window_is_exactly_unpatched(nodes_regions, tiny_models, regions, sample):
    model = guide(nodes_regions, tiny_models[0], regions, start=1.0, end=1.0)
    assert torch.equal(sample(model), sample(tiny_models[0]))


def test_host_name_restored_after_a_run_and_after_an_interrupt(nodes_regions, patching, tiny_models, regions, sample,
                                                               k_diffusion_sampling):
    original = k_diffusion_sampling.trange
    guided = guide(nodes_regions, tiny_models[0], regions, end=0.5)
    sample(guided, steps=3)
    assert k_diffusion_sampling.trange is original

    class Interrupt:
        def __init__(self):
            self.calls = 0

        def __call__(self, call):
            self.calls += 1
            if self.calls == 40:
                raise KeyboardInterrupt("user pressed cancel")
            return None

    with pytest.raises(KeyboardInterrupt):
        sample(patching.install_bias(guided, Interrupt(), "all"), steps=3)
    assert k_diffusion_sampling.trange is original


def test_guidance_with_a_denoise_mask(nodes_regions, patching, tiny_models, regions, encode):
    """Inpainting (SetLatentNoiseMask): the latent's shift is exactly zero outside the mask
    at every guided step (the final image cannot show it: the host re-imposes the kept
    latent at the last step), and the guided run differs inside."""
    import nodes
    positive = encode(PROMPT)
    latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1)),
              "noise_mask": left_half(16, 16)}
    model = guide(nodes_regions, tiny_models[0], regions, end=0.5)
    guidance = patching.latent_guidance(model)
    shifts = []

    def recorded_shift(model_k, base_model, x, sigma, kwargs):
        before = x.clone()
        LatentGuidance.shift(guidance, model_k, base_model, x, sigma, kwargs)
        shifts.append(x - before)

    LatentGuidance = type(guidance)
    guidance.shift = recorded_shift          # this test's own model: recorded, then sampled
    with torch.inference_mode():
        guided = nodes.common_ksampler(model, 0, 4, 5.0, "euler", "normal", positive, encode(""), latent)[0]["samples"]
    outside = left_half(16, 16)[0] == 0
    assert len(shifts) == 2                                             # the first half of 4 steps
    for shift in shifts:
        assert (shift[..., outside] == 0).all() and shift[..., ~outside].abs().max() > 0
    with torch.inference_mode():
        plain = nodes.common_ksampler(tiny_models[0], 0, 4, 5.0, "euler", "normal", positive, encode(""), latent)[0]["samples"]
    assert torch.isfinite(guided).all()
    assert torch.equal(guided[..., outside], plain[..., outside])        # kept image: same bits as unguided
    assert_close(guided[..., outside], latent["samples"][..., outside])    # (up to the latent format's rounding)
    assert (guided - plain)[..., ~outside].abs().max() > 1e-3


@pytest.mark.parametrize("fill", ["zero", "one", "half"])
def test_mask_fills_in_the_output(nodes_regions, tiny_models, region_prompt, sample, fill):
    """All-zero (built directly: Bind refuses empty masks), all-one and half masks: the
    guided run finishes finite and differs from the unguided one."""
    from comfyui_maskattn.maskattn_ops.regions import Region
    _, prompt = region_prompt
    mask = {"zero": torch.zeros(1, 32, 32), "one": torch.ones(1, 32, 32), "half": left_half(32, 32)}[fill]
    region = Region(mask, tuple(prompt.positions("red circle")), prompt.context_tokens, "red circle")
    out = sample(guide(nodes_regions, tiny_models[0], (region,), end=0.5), steps=3)
    assert torch.isfinite(out).all()
    assert (out - sample(tiny_models[0], steps=3)).abs().max() > 1e-3


def test_long_prompt_words_in_the_second_chunk(nodes_regions, tiny_models, sample):
    prompt_text = " ".join(["a small grey pebble"] * 25) + " and a red circle"
    with torch.inference_mode():
        positive, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(tiny_models[1], prompt_text).args
    regions = nodes_regions.MaskAttnBindRegion.execute(prompt, "red circle", 1.0, 0, 0, 64, 128, 128, 128).args[0]
    assert min(regions[0].positions) > 77 and regions[0].prompt_tokens == 154
    out = sample(guide(nodes_regions, tiny_models[0], regions, end=0.5), prompt=prompt_text, steps=3)
    assert torch.isfinite(out).all()
    assert (out - sample(tiny_models[0], prompt=prompt_text, steps=3)).abs().max() > 1e-3


def test_guided_steps_are_counted_and_logged(nodes_regions, tiny_models, regions, sample, caplog):
    """The run says how many of its steps it guided: the first 30% of 10 (normal schedule)."""
    import logging
    with caplog.at_level(logging.INFO, logger="comfyui_maskattn.nodes.patching"):
        sample(guide(nodes_regions, tiny_models[0], regions, end=0.3), steps=10)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Region Mask Guidance: guided")]
    assert said == ["Region Mask Guidance: guided 3 of 10 steps"]


def heun_step(model, x, sigmas, i, extra_args, state):
    """k-diffusion's sample_heun step (no churn), written out."""
    s, s_next = sigmas[i], sigmas[i + 1]
    ones = x.new_ones([x.shape[0]])
    d = (x - model(x, s * ones, **extra_args)) / s
    if s_next == 0:
        return x + d * (s_next - s)
    x_2 = x + d * (s_next - s)
    d_2 = (x_2 - model(x_2, s_next * ones, **extra_args)) / s_next
    return x + (d + d_2) / 2 * (s_next - s)


def dpmpp_2m_step(model, x, sigmas, i, extra_args, state):
    """k-diffusion's sample_dpmpp_2m step, written out (its history is the previous
    step's denoised)."""
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, s * x.new_ones([x.shape[0]]), **extra_args)
    t, t_next = -s.log(), -s_next.log()
    h = t_next - t
    old = state.get("denoised")
    if old is None or s_next == 0:
        mixed = denoised
    else:
        r = (t - (-sigmas[i - 1].log())) / h
        mixed = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
    state["denoised"] = denoised
    return (s_next / s) * x - (-h).expm1() * mixed


def euler_ancestral_step(model, x, sigmas, i, extra_args, state):
    """k-diffusion's sample_euler_ancestral step (eta 1), written out; its noise drawn as
    the sampler draws it (the host's default noise sampler, seeded once per run)."""
    from comfy.k_diffusion.sampling import default_noise_sampler
    if "noise" not in state:
        state["noise"] = default_noise_sampler(x, seed=extra_args.get("seed"))
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = model(x, s * x.new_ones([x.shape[0]]), **extra_args)
    sigma_up = min(s_next, (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5)
    sigma_down = (s_next ** 2 - sigma_up ** 2) ** 0.5
    if sigma_down == 0:
        return denoised
    return x + (x - denoised) / s * (sigma_down - s) + state["noise"](s, s_next) * sigma_up


@pytest.mark.parametrize("sampler, step", [("heun", heun_step), ("dpmpp_2m", dpmpp_2m_step),
                                           ("euler_ancestral", euler_ancestral_step)])
def test_move_z_then_step_exactly_on_a_v_prediction_model(nodes_regions, patching, tiny, region_prompt, regions,
                                                           encode, sampler, step):
    """Endo's "z <- z - alpha dL/dz, then the step proceeds from it" on a v-prediction
    model (the shapes model's parameterization), for a sampler with a second evaluation
    per step (heun: guided at the step's first only), one with history (dpmpp_2m) and an
    ancestral one (fresh noise each step): the node through the host's sampler equals
    the sampler's step written out after the written-out update."""
    assert_node_equals_written_out(*node_and_written_out(
        nodes_regions, patching, tiny, regions, region_prompt, encode,
        sampler=sampler, step=step, steps=6, end=0.5, v_prediction=True))


MANY = "a red circle and a blue square on green grass"


def part(*parts, size=128):
    """One mask per latent of the batch: "left", "right", "top", "bottom" half, or "centre"."""
    masks = torch.zeros(len(parts), size, size)
    half, quarter = size // 2, size // 4
    for mask, where in zip(masks, parts):
        {"left": mask[:, :half], "right": mask[:, half:], "top": mask[:half], "bottom": mask[half:],
         "centre": mask[quarter:-quarter, quarter:-quarter]}[where].fill_(1)
    return masks


@pytest.mark.parametrize("sampler, cfg, start, end", [("ddim", 5.0, 0.0, 0.3), ("euler", 1.0, 0.3, 0.65)])
def test_a_batch_with_its_own_masks_and_three_regions_equals_endo_written_out(
        nodes_regions, patching, tiny, tiny_models, encode, sampler, cfg, start, end):
    """Two latents, three regions with other words and strengths: "red circle" in the
    left half of latent 0 and the right half of latent 1 (a MASK batch of 2: one per
    latent, as ComfyUI applies a mask batch that matches the latent batch), "blue
    square" in the top half of both (a box: one mask for the batch), "green grass" in
    the bottom half of latent 0 and the centre of latent 1. Written out, each latent's
    loss uses its own masks; the node through the host's sampler must give the same.
    Also with cfg 1 (no uncond chunk at all) and a window that starts at 30%."""
    with torch.inference_mode():
        positive, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(tiny_models[1], MANY).args
    bind = nodes_regions.MaskAttnBindRegion.execute
    regions = bind(prompt, "red circle", 1.0, 0, 0, 0, 0, 128, 128, mask=part("left", "right")).args[0]
    regions = bind(prompt, "blue square", 0.5, 0, 0, 128, 64, 128, 128, regions=regions).args[0]
    regions = bind(prompt, "green grass", 2.0, 0, 0, 0, 0, 128, 128, mask=part("bottom", "centre"),
                   regions=regions).args[0]
    written = [(part("left", "right"), prompt.positions("red circle"), 1.0),
               (part("top"), prompt.positions("blue square"), 0.5),
               (part("bottom", "centre"), prompt.positions("green grass"), 2.0)]
    assert len({tuple(words) for _, words, _ in written}) == 3
    node_out, reference, unguided = node_and_written_out(
        nodes_regions, patching, tiny, regions, (positive, prompt), encode, sampler=sampler, step=euler_step,
        steps=6, start=start, end=end, cfg=cfg, batch=2, written_regions=written)
    for item in range(2):             # each latent guided, each as its own masks say
        assert (reference[item] - unguided[item]).abs().max() > 1e-2
        assert_close(node_out[item], reference[item], rtol=1e-3, atol=1e-3 * reference.abs().max().item())
