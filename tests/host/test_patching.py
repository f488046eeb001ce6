"""nodes/patching.py on the real host: real samplers over the tiny SDXL model."""
import pytest
import torch

from comfyui_maskattn.maskattn_ops.attention import NEG

from helpers import Recorder, assert_same_run

PROMPT = "a red circle and a blue square"


class KeepAll:
    """A bias that keeps every token: must change nothing."""
    def __call__(self, call):
        return torch.zeros(1, 1, 1, call.tokens)


class SuppressToken:
    """Suppresses one context token at every location of the patched sites."""
    def __init__(self, token):
        self.token = token

    def __call__(self, call):
        bias = torch.zeros(1, 1, 1, call.tokens)
        bias[..., self.token] = NEG
        return bias


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("sites", ["mid-resolution", "all"])
def test_keep_all_bias_reproduces_unpatched(patching, tiny_models, sample, sampler, sites):
    model = tiny_models[0]
    plain = sample(model, sampler=sampler)
    patched = sample(patching.install_bias(model, KeepAll(), sites), sampler=sampler)
    assert torch.isfinite(plain).all()
    assert_same_run(patched, plain)


def test_suppressing_a_token_changes_output(patching, tiny_models, sample):
    model = tiny_models[0]
    plain = sample(model)
    suppressed = sample(patching.install_bias(model, SuppressToken(2), "mid-resolution"))
    assert torch.isfinite(suppressed).all()
    assert (suppressed - plain).abs().max() > 1e-2


def test_patching_never_touches_the_original(patching, tiny_models, sample):
    model = tiny_models[0]
    before = sample(model)
    options_before = repr(model.model_options)
    patched = patching.install_bias(model, SuppressToken(2), "all")
    sample(patched)
    assert repr(model.model_options) == options_before
    assert "patches_replace" not in model.model_options["transformer_options"]
    assert torch.equal(sample(model), before)


def test_calls_reach_exactly_the_chosen_sites_with_their_grids(patching, tiny_models, sample):
    recorder = Recorder()
    patched = patching.install_bias(tiny_models[0], recorder, "mid-resolution")
    sample(patched, height=16, width=24, steps=2)   # non-square: 16x24 latent
    mid = {("input", 4), ("input", 5), ("output", 3), ("output", 4), ("output", 5)}
    assert {c.site.key for c in recorder.calls} == {(b, i, d) for b, i in mid for d in (0, 1)}
    assert {c.grid for c in recorder.calls} == {(8, 12)}   # latent / 2, h and w kept apart
    assert {c.cond_or_uncond for c in recorder.calls} <= {(0, 1), (1, 0)}
    assert all(c.tokens == 77 and c.batch == 2 for c in recorder.calls)
    sigmas = sorted({float(c.sigmas[0]) for c in recorder.calls}, reverse=True)
    assert len(sigmas) == 2 and sigmas[0] > sigmas[1] > 0


@pytest.mark.parametrize("cfg,batch", [(1.0, 1), (5.0, 2), (1.0, 2)])
def test_cfg1_and_batch2(patching, tiny_models, sample, cfg, batch):
    model = tiny_models[0]
    recorder = Recorder()
    plain = sample(model, cfg=cfg, batch=batch)
    kept = sample(patching.install_bias(patching.install_bias(model, recorder), KeepAll()), cfg=cfg, batch=batch)
    assert_same_run(kept, plain)
    chunks = {c.cond_or_uncond for c in recorder.calls}
    if cfg == 1.0:
        assert chunks == {(0,)}                       # no uncond pass at cfg 1
    else:
        assert all(sorted(c) == [0, 1] for c in chunks)  # one chunk each, in the host's order
    assert all(c.batch == batch * len(c.cond_or_uncond) for c in recorder.calls)
    assert all(c.is_uncond().tolist() == [f for f in c.cond_or_uncond for _ in range(batch)] for c in recorder.calls)
    suppressed = sample(patching.install_bias(model, SuppressToken(2)), cfg=cfg, batch=batch)
    assert torch.isfinite(suppressed).all() and (suppressed - plain).abs().max() > 1e-2


def test_non_square_latent(patching, tiny_models, sample):
    model = tiny_models[0]
    plain = sample(model, height=24, width=16)
    assert_same_run(sample(patching.install_bias(model, KeepAll(), "all"), height=24, width=16), plain)
    assert (sample(patching.install_bias(model, SuppressToken(2)), height=24, width=16) - plain).abs().max() > 1e-2


def test_stacked_patches_share_one_replace_per_site(patching, tiny_models):
    first, second = Recorder(), KeepAll()
    once = patching.install_bias(tiny_models[0], first)
    twice = patching.install_bias(once, second)
    key = ("input", 4, 0)
    op_once = once.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    op_twice = twice.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    assert op_once.providers == [first]                # the earlier clone is unchanged
    assert op_twice.providers[0] is first and op_twice.providers[1] is second
    # the host's clone() deep-copies model_options: providers are shared, not copied
    op_clone = twice.clone().model_options["transformer_options"]["patches_replace"]["attn2"][key]
    assert op_clone is not op_twice and op_clone.providers[0] is first


@pytest.mark.parametrize("key_len", [3, 2])
def test_existing_replace_is_chained_not_dropped(patching, tiny_models, sample, key_len):
    """Another pack's replace (IPAdapter-style: plain attention + its own term) at a
    site keeps running under ours, keyed by (block, id, index) or by (block, id)."""
    import comfy.ldm.modules.attention as host_attention
    model = tiny_models[0]
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(extra_options["block"])
        out = host_attention.optimized_attention(q, k, v, extra_options["n_heads"])
        return out + 0.5 * v.mean(1, keepdim=True)     # its own term, visible in the output

    with_foreign = model.clone()
    with_foreign.set_model_attn2_replace(foreign, "input", 4, *((0,) if key_len == 3 else ()))
    foreign_only = sample(with_foreign, steps=2)
    assert calls
    calls.clear()
    kept = sample(patching.install_bias(with_foreign, KeepAll()), steps=2)
    assert calls, "the foreign replace was dropped"
    assert_same_run(kept, foreign_only)
    suppressed = sample(patching.install_bias(with_foreign, SuppressToken(2)), steps=2)
    assert (suppressed - foreign_only).abs().max() > 1e-2


def test_providers_follow_the_model_to_its_device(patching, tiny_models):
    recorder = Recorder()
    patched = patching.install_bias(tiny_models[0], recorder)
    ops = dict(patched.model_options["transformer_options"]["patches_replace"]["attn2"])
    patched.model_patches_to(torch.device("cpu"))
    assert len(recorder.moved_to) == len(ops)
    assert patched.model_options["transformer_options"]["patches_replace"]["attn2"] == ops
