"""Learned gating on the real host: Apply Masked Cross-Attention over the tiny SDXL (and
SD1.x and SD2.x, for the tests marked every_family)."""
import pytest
import torch

from comfyui_maskattn.maskattn_ops.attention import SUPPRESSED
from comfyui_maskattn.maskattn_ops.gate_providers import GateBias, SelfAttentionGate
from comfyui_maskattn.maskattn_ops.heads import HeadSet, save_heads

from helpers import Spy, assert_same_run, every_family, scripted_heads

SUPPRESSED_TOKEN = 2     # "red" in "a red circle ...": start token, "a", "red"


@pytest.fixture(scope="session")
def nodes_gating(host):
    from comfyui_maskattn.nodes import nodes_gating
    return nodes_gating


@pytest.fixture()
def mid_sites(patching, tiny_models):
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    return select_sites(patching.discover_sites(tiny_models[0]), "mid-resolution")


def fresh_heads(sites):
    with torch.inference_mode():     # as Load MaskAttn Heads makes them, inside the executor
        return HeadSet.for_sites(sites)


def forced_heads(sites):
    """Every token kept everywhere but SUPPRESSED_TOKEN, which is off everywhere."""
    return scripted_heads(fresh_heads(sites), {SUPPRESSED_TOKEN: "all"})


def apply(nodes_gating, model, heads, **options):
    kwargs = dict(threshold=0.5, mode="hard", start_percent=0.0, end_percent=1.0, apply_to_uncond=True)
    kwargs.update(options)
    return nodes_gating.MaskAttnApplyMaskedCrossAttention.execute(model, heads, **kwargs).args[0]


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("cfg,batch,size", [(5.0, 1, (16, 16)), (1.0, 2, (16, 24)), (5.0, 2, (24, 16))])
@every_family
def test_fresh_heads_reproduce_unpatched(nodes_gating, tiny_models, mid_sites, sample, sampler, cfg, batch, size):
    model = tiny_models[0]
    run = dict(sampler=sampler, cfg=cfg, batch=batch, height=size[0], width=size[1])
    assert_same_run(sample(apply(nodes_gating, model, fresh_heads(mid_sites)), **run), sample(model, **run))


@pytest.mark.parametrize("cfg,batch,size", [(5.0, 1, (16, 16)), (1.0, 2, (16, 24))])
@every_family
def test_forced_head_changes_output_and_never_empties_a_location(
        nodes_gating, patching, tiny_models, mid_sites, sample, cfg, batch, size):
    model = tiny_models[0]
    # record every bias the gate provider produced during the run, at every gated site
    log = []
    gated = patching.map_providers(apply(nodes_gating, model, forced_heads(mid_sites)),
                                   lambda p: Spy(p, log) if isinstance(p, GateBias) else p)
    run = dict(cfg=cfg, batch=batch, height=size[0], width=size[1])
    out = sample(gated, **run)
    biases = [bias for _, bias in log]
    assert {call.site.key for call, _ in log} == {s.key for s in mid_sites}
    assert torch.isfinite(out).all()
    assert (out - sample(model, **run)).abs().max() > 1e-2
    assert biases
    for bias in biases:
        assert (bias > SUPPRESSED).any(-1).all()                  # some token kept everywhere
        assert (bias[..., SUPPRESSED_TOKEN] <= SUPPRESSED).all()  # the forced token is gone
        assert (bias[..., 0] == 0).all()                          # the start token never is


def test_long_prompt_keeps_every_chunks_start_token(nodes_gating, patching, tiny_models, mid_sites, sample):
    """A prompt over 75 tokens gives 154 keys (cond and uncond alike, the host repeats the
    shorter); the forced gate suppresses token 2 of the context and never a start token."""
    model = tiny_models[0]
    prompt = " ".join(["a small grey pebble"] * 25) + " and a red circle"
    log = []
    gated = patching.map_providers(apply(nodes_gating, model, forced_heads(mid_sites)),
                                   lambda p: Spy(p, log) if isinstance(p, GateBias) else p)
    out = sample(gated, prompt=prompt, steps=2)
    biases = [bias for _, bias in log]
    assert torch.isfinite(out).all()
    assert {b.shape[-1] for b in biases} == {154}
    assert all((b[..., 0] == 0).all() and (b[..., 77] == 0).all() for b in biases)
    assert_same_run(sample(apply(nodes_gating, model, fresh_heads(mid_sites)), prompt=prompt, steps=2),
                    sample(model, prompt=prompt, steps=2))


def test_window_and_uncond_options(nodes_gating, patching, tiny_models, mid_sites, sample):
    model = tiny_models[0]
    plain = sample(model)
    heads = forced_heads(mid_sites)
    # an empty window (start = end at the very end) is exactly the unpatched run
    assert_same_run(sample(apply(nodes_gating, model, heads, start_percent=1.0, end_percent=1.0)), plain)
    for to_uncond in (False, True):
        log = []
        gated = patching.map_providers(apply(nodes_gating, model, heads, apply_to_uncond=to_uncond),
                                       lambda p: Spy(p, log) if isinstance(p, GateBias) else p)
        sample(gated, steps=2)
        assert log
        for call, bias in log:                    # (B, 1, N, T): the uncond chunk gated exactly when asked
            uncond = call.is_uncond()
            assert (bias[~uncond][..., SUPPRESSED_TOKEN] <= SUPPRESSED).all()
            assert ((bias[uncond][..., SUPPRESSED_TOKEN] <= SUPPRESSED).all() if to_uncond
                    else (bias[uncond] == 0).all())


@pytest.mark.parametrize("start, end, gated_steps", [(0.0, 1.0, 4), (0.3, 1.0, 3), (0.0, 0.3, 1), (0.5, 0.5, 0)])
def test_a_partial_window_gates_exactly_its_steps(nodes_gating, patching, tiny_models, mid_sites, sample,
                                                  start, end, gated_steps):
    """Gating acts at the steps whose sigma lies in [sigma(end), sigma(start)] and no other."""
    import comfy.samplers
    model = tiny_models[0]
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", 4)[:-1]
    high, low = sampling.percent_to_sigma(start), sampling.percent_to_sigma(end)
    assert sum(low <= float(s) <= high for s in sigmas) == gated_steps
    log = []
    gated = patching.map_providers(apply(nodes_gating, model, forced_heads(mid_sites), start_percent=start,
                                         end_percent=end), lambda p: Spy(p, log) if isinstance(p, GateBias) else p)
    sample(gated, steps=4)
    acted = {float(call.sigmas.max()) for call, bias in log if bias is not None}
    assert len(acted) == gated_steps


def test_heads_are_shared_not_copied_across_clones(nodes_gating, patching, tiny_models, mid_sites):
    heads = fresh_heads(mid_sites)
    gated = apply(nodes_gating, tiny_models[0], heads)
    for m in (gated, gated.clone(), gated.clone().clone()):
        [provider] = patching.providers(m, GateBias)
        assert provider.heads is heads


def test_heads_for_another_model_are_refused(nodes_gating, tiny, tiny_models):
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes import patching
    with torch.inference_mode():
        wide = tiny.build_model(config=tiny.unet_config(model_channels=64))
    heads = fresh_heads(select_sites(patching.discover_sites(wide), "mid-resolution"))
    with pytest.raises(ValueError, match=r"Apply Masked Cross-Attention \(heads\): .*query width 128 .* has 64"
                                         r".*heads files that fit this MODEL: .*tiny_sdxl_untrained_heads.safetensors"):
        apply(nodes_gating, tiny_models[0], heads)
    with pytest.raises(ValueError, match="no heads file in models/maskattn fits this MODEL"):
        apply(nodes_gating, wide, fresh_heads(select_sites(patching.discover_sites(tiny_models[0]), "mid-resolution")))


def test_heads_for_another_family_are_refused_naming_both(nodes_gating, patching, tiny):
    """Tiny SD1.x and SD2.x models have the same sites and widths: only the family the
    heads record tells their heads apart. Heads without a record (older files) are
    checked by widths alone."""
    from comfyui_maskattn.maskattn_ops.sites import select_sites
    from comfyui_maskattn.nodes.model_family import family_of
    with torch.inference_mode():
        sd1, sd2, sdxl = (tiny.build_model(family=f) for f in ("sd1", "sd2", "sdxl"))
    assert [family_of(m) for m in (sd1, sd2, sdxl)] == ["sd1", "sd2", "sdxl"]
    sd2_sites = select_sites(patching.discover_sites(sd2), "mid-resolution")
    assert [(s.name, s.channels, s.context_dim) for s in sd2_sites] == \
        [(s.name, s.channels, s.context_dim) for s in select_sites(patching.discover_sites(sd1), "mid-resolution")]
    with torch.inference_mode():
        sd2_heads = HeadSet.for_sites(sd2_sites, base_family=family_of(sd2))
    with pytest.raises(ValueError, match=r"Apply Masked Cross-Attention \(heads\): these heads were trained on an SD2.x "
                                         r"model; this MODEL is SD1.x\. no heads file in models/maskattn fits"):
        apply(nodes_gating, sd1, sd2_heads)
    with pytest.raises(ValueError, match=r"trained on an SD2.x model; this MODEL is SDXL\. heads files that fit this "
                                         r"MODEL: .*tiny_sdxl_untrained_heads"):
        apply(nodes_gating, sdxl, sd2_heads)
    apply(nodes_gating, sd2, sd2_heads)
    apply(nodes_gating, sd1, fresh_heads(sd2_sites))            # no family recorded: widths fit


def test_load_and_apply_inside_a_graph(run_graph, tmp_path, patching, tiny_models, mid_sites):
    """Load MaskAttn Heads reads a file from a temporary models/maskattn folder; the
    whole graph runs through the host's validator and executor."""
    import folder_paths
    folder = tmp_path / "maskattn"
    folder.mkdir()
    save_heads(HeadSet.for_sites(mid_sites), folder / "tiny_fresh.safetensors")
    (folder / "ignored.ckpt").write_bytes(b"\x80not listed")
    folder_paths.add_model_folder_path("maskattn", str(folder))
    try:
        assert "tiny_fresh.safetensors" in folder_paths.get_filename_list("maskattn")
        assert "ignored.ckpt" not in folder_paths.get_filename_list("maskattn")
        prompt = {
            "1": {"class_type": "MaskAttnLoadDemoModel", "inputs": {"model": "tiny-sdxl-random", "seed": 0}},
            "2": {"class_type": "MaskAttnLoadHeads", "inputs": {"heads_name": "tiny_fresh.safetensors"}},
            "3": {"class_type": "MaskAttnApplyMaskedCrossAttention", "inputs": {
                "model": ["1", 0], "heads": ["2", 0], "threshold": 0.5, "mode": "hard",
                "start_percent": 0.0, "end_percent": 1.0, "apply_to_uncond": True}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
            "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
            "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 192, "batch_size": 2}},
            "7": {"class_type": "KSampler", "inputs": {
                "model": ["3", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
                "seed": 0, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
            "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
        }
        outputs = run_graph(prompt)
        assert len(outputs["9"]["images"]) == 2
    finally:
        folder_paths.folder_names_and_paths["maskattn"][0].remove(str(folder))


def halves_heads(sites):
    """Token 2 acts in the left half of the grid only, token 3 in the right half only."""
    return scripted_heads(fresh_heads(sites), {2: "right", 3: "left"})


def test_self_attention_gating_is_off_by_default(nodes_gating, patching, tiny_models, mid_sites, sample):
    assert not patching.providers(apply(nodes_gating, tiny_models[0], fresh_heads(mid_sites)), object, "attn1")
    on = apply(nodes_gating, tiny_models[0], fresh_heads(mid_sites), self_attention_gating=True)
    assert len(patching.providers(on, SelfAttentionGate, "attn1")) == 1
    log = []
    sample(patching.map_providers(on, lambda p: Spy(p, log), "attn1"), steps=1)
    assert {call.site.key for call, _ in log} == {s.key for s in mid_sites}


def test_self_attention_gating_with_fresh_heads_changes_nothing(nodes_gating, tiny_models, mid_sites, sample):
    model = tiny_models[0]
    on = apply(nodes_gating, model, fresh_heads(mid_sites), self_attention_gating=True)
    assert_same_run(sample(on), sample(model))


def test_self_attention_gating_uses_the_previous_steps_gates(nodes_gating, patching, tiny_models, mid_sites, sample):
    from comfyui_maskattn.nodes.patching import RUN_STATE_KEY
    model = tiny_models[0]
    heads = halves_heads(mid_sites)
    cross_only = sample(apply(nodes_gating, model, heads), steps=3)
    gated = apply(nodes_gating, model, heads, self_attention_gating=True)
    log, had_gates = [], []
    site = mid_sites[0]
    spied = patching.map_providers(gated, lambda p: Spy(p, log, lambda call: had_gates.append(
        call.site.name in call.run.gates)), "attn1")
    both = sample(spied, steps=3)
    seen = [(had, bias) for had, (call, bias) in zip(had_gates, log) if call.site == site]
    assert torch.isfinite(both).all() and (both - cross_only).abs().max() > 1e-3
    assert seen[0] == (False, None)                          # the run's first evaluation: no gates yet
    biases = [b for _, b in seen if b is not None]
    assert len(biases) == len(seen) - 1                       # every later evaluation is gated
    h, w = 8, 8                                               # 16x16 latent, mid-resolution
    left = torch.tensor([c < w // 2 for r in range(h) for c in range(w)])
    for bias in biases:
        allowed = bias[:, 0] == 0                             # (B, N, N)
        assert torch.equal(allowed, (left[:, None] == left[None, :]).expand_as(allowed))
    assert RUN_STATE_KEY not in spied.model_options["transformer_options"]   # dropped after the run


def test_run_state_is_fresh_after_an_interrupted_run(nodes_gating, patching, tiny_models, mid_sites, sample):
    gated = apply(nodes_gating, tiny_models[0], halves_heads(mid_sites), self_attention_gating=True)
    runs = []

    def failing(call):
        runs.append(dict(call.run.gates))
        if len(runs) == 3 * len(mid_sites):       # in the third evaluation, with gates stored
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        sample(patching.map_providers(gated, lambda p: Spy(p, [], failing), "attn1"), steps=3)
    assert runs[-1]
    runs.clear()
    sample(patching.map_providers(gated, lambda p: Spy(p, [], lambda call: runs.append(dict(call.run.gates))),
                                  "attn1"), steps=2)
    assert runs[0] == {}


def test_the_hosts_device_and_dtype_moves_leave_the_master_heads(nodes_gating, patching, tiny_models, mid_sites):
    """The host calls model_patches_to with the load device and with the model's dtype:
    the master weights stay fp32 (each call computes with a cast copy in its own dtype,
    tests/host/test_precision.py), and a device move drops copies held on other devices."""
    heads = fresh_heads(mid_sites)
    gated = apply(nodes_gating, tiny_models[0], heads)
    [provider] = patching.providers(gated, GateBias)
    copy = provider.heads_for(torch.device("cpu"), torch.float16)
    assert {p.dtype for p in copy.parameters()} == {torch.float16}
    assert provider.heads_for(torch.device("cpu"), torch.float16) is copy      # made once
    assert provider.heads_for(torch.device("cpu"), torch.float32) is heads     # the master itself
    gated.model_patches_to(torch.float16)
    gated.model_patches_to(torch.device("cpu"))
    assert {p.dtype for p in heads.parameters()} == {torch.float32}
    assert provider.heads_for(torch.device("cpu"), torch.float16) is copy
    gated.model_patches_to(torch.device("meta"))                                 # an offload elsewhere
    assert provider.heads_for(torch.device("cpu"), torch.float16) is not copy


def spread_heads(sites, seed=0):
    """Heads with random weights: gate probabilities spread around 0.5, so a threshold
    of 0.3 and one of 0.7 keep different parts of every token."""
    heads = fresh_heads(sites)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return heads


class WrittenOutGate:
    """The gate of MaskAttn-SDXL written out from the paper, as a test-side bias provider:
    G = sigmoid(f(q, k)); hard: 0 where G >= threshold, NEG elsewhere; soft: log G (at
    least NEG); the start token always kept; the uncond rows left alone unless
    ``to_uncond``; nothing outside [sigma_end, sigma_start]. Records the share of
    (location, token) pairs it keeps."""
    def __init__(self, heads, threshold, mode, sigma_start, sigma_end, to_uncond):
        self.heads, self.threshold, self.mode, self.to_uncond = heads, threshold, mode, to_uncond
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self.kept = []

    def __call__(self, call):
        from comfyui_maskattn.maskattn_ops.attention import NEG
        if not self.sigma_end <= float(call.sigmas.max()) <= self.sigma_start:
            return None
        with torch.no_grad():
            logits = self.heads.head(call.site.name)(call.q, call.k, call.grid).float()     # (B, T, h, w)
        probs = torch.sigmoid(logits)
        if self.mode == "hard":
            bias = torch.where(probs >= self.threshold, 0.0, NEG)
        else:
            bias = torch.log(probs).clamp(min=NEG)
        bias[:, 0] = 0.0                                                                    # start token (T = 77)
        if not self.to_uncond:
            bias[call.is_uncond()] = 0.0
        self.kept.append(float((bias[:, 1:] == 0).float().mean()))
        return bias.flatten(2).transpose(1, 2)[:, None]                                     # (B, 1, N, T)


@pytest.mark.parametrize("mode, threshold, to_uncond, start", [
    ("hard", 0.3, True, 0.0), ("hard", 0.7, False, 0.0), ("hard", 0.7, True, 0.3),
    ("soft", 0.9, True, 0.0), ("soft", 0.5, False, 0.3)])
@every_family
def test_gates_through_the_sampler_equal_the_gate_written_out(nodes_gating, patching, tiny_models, mid_sites, sample,
                                                               mode, threshold, to_uncond, start):
    """Apply Masked Cross-Attention through the host's sampler equals the same heads'
    gate written out (WrittenOutGate, on the same sites of the same model): in soft mode
    (which ignores the threshold), with thresholds other than 0.5, with the uncond pass
    gated as the cond one or left exactly as the model has it, in a window from 30%."""
    model, heads = tiny_models[0], spread_heads(mid_sites)
    window = patching.sigma_window(model, start, 1.0, "test")
    written = WrittenOutGate(heads, threshold, mode, window["sigma_start"], window["sigma_end"], to_uncond)
    node = sample(apply(nodes_gating, model, heads, threshold=threshold, mode=mode, start_percent=start,
                        apply_to_uncond=to_uncond))
    reference = sample(patching.install_bias(model, written, [s.name for s in mid_sites]))
    assert_same_run(node, reference)
    if mode == "hard":                                  # the threshold cut somewhere inside every run
        assert 0.1 < sum(written.kept) / len(written.kept) < 0.9, written.kept
    at_half = sample(apply(nodes_gating, model, heads, threshold=0.5, mode="hard", start_percent=start,
                           apply_to_uncond=to_uncond))
    assert (node - at_half).abs().max() > 1e-3        # the option changed the run

