"""Another pack's attention patch at the sites we patch, installed BEFORE or AFTER ours:
both act, and the result does not depend on the order. Two kinds of pack, from their
public sources' behaviour:

- a plain replacer (DenseDiffusion- or attention-couple-style): ``set_model_attn2_replace``
  at a site's (block, id, index) key, or at its (block, id) key;
- IPAdapter_plus / PuLID / InstantID: their ``set_model_patch_replace`` installs an
  ``Attn2Replace`` where the key is free and calls ``.add(callback, **kwargs)`` on whatever
  holds it otherwise; the callback's term is added to the attention output within
  ``sigma_start`` .. ``sigma_end``.
"""
from __future__ import annotations

import pytest
import torch

from helpers import assert_same_run

PROMPT = "a red circle and a blue square"
SITES = [("input", 4, 0), ("output", 3, 0)]


class PlainReplace:
    """A replacer's attn2 replace: plain attention plus a term of its own."""
    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):       # the host's clone() keeps this one object, so calls count here
        return self

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as host_attention
        self.calls += 1
        return host_attention.optimized_attention(q, k, v, extra_options["n_heads"]) + 0.5 * v.mean(1, keepdim=True)


def ip_term(out, q, k, v, extra_options, weight=1.0, **kwargs):
    """An IPAdapter-like callback: a term from the site's own inputs, scaled by weight."""
    return weight * 0.3 * v.mean(1, keepdim=True).expand_as(out)


class Attn2Replace:
    """IPAdapter_plus's CrossAttentionPatch.Attn2Replace, as its public source behaves."""
    def __init__(self, callback=None, **kwargs):
        self.callback, self.kwargs = [callback], [kwargs]

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as host_attention
        out = host_attention.optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else 999999999.9
        for i, callback in enumerate(self.callback):
            if self.kwargs[i]["sigma_start"] >= sigma >= self.kwargs[i]["sigma_end"]:
                out = out + callback(out, q, k, v, extra_options, **self.kwargs[i])
        return out.to(dtype=q.dtype)


def ipadapter_like(model, weight=1.0, sigma_start=999.0, sigma_end=0.0):
    """IPAdapter_plus's installer: a clone, then its set_model_patch_replace per key."""
    model = model.clone()
    for key in SITES:
        to = model.model_options["transformer_options"].copy()
        to["patches_replace"] = dict(to.get("patches_replace", {}))
        to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
        kwargs = {"weight": weight, "sigma_start": sigma_start, "sigma_end": sigma_end}
        if key not in to["patches_replace"]["attn2"]:
            to["patches_replace"]["attn2"][key] = Attn2Replace(ip_term, **kwargs)
            model.model_options["transformer_options"] = to
        else:
            to["patches_replace"]["attn2"][key].add(ip_term, **kwargs)
    return model


def replacer(model, key_len=3):
    model = model.clone()
    op = PlainReplace()
    for key in SITES:
        model.set_model_attn2_replace(op, *key[:key_len])
    return model, op


@pytest.fixture(scope="module")
def regions(host, nodes_regions, tiny_models):
    import nodes
    _, clip, _ = tiny_models
    with torch.inference_mode():
        _, prompt = nodes_regions.MaskAttnEncodeRegionPrompt.execute(clip, PROMPT).args
    red = nodes_regions.MaskAttnBindRegion.execute(prompt, "red circle", 1.0, 0, 0, 64, 128, 128, 128).args[0]
    both = nodes_regions.MaskAttnBindRegion.execute(prompt, "blue square", 1.0, 64, 0, 64, 128, 128, 128,
                                                    regions=red).args[0]
    return both


def ours(nodes_regions, regions, mode):
    def apply(model):
        return nodes_regions.MaskAttnRegionGuidance.execute(
            model, regions, mode, 0.08, 0.5, 0.3, 0.0, 1.0 if mode != "guidance" else 0.5, "all").args[0]
    return apply


@pytest.mark.parametrize("mode", ["swapping", "guidance"])
@pytest.mark.parametrize("key_len", [3, 2])
def test_a_replacer_after_ours_composes_as_before_ours(tiny_models, sample, nodes_regions, regions, mode, key_len):
    model = tiny_models[0]
    apply_ours = ours(nodes_regions, regions, mode)
    sampler = "euler"
    plain = sample(model, steps=3, sampler=sampler)
    theirs_model, theirs_op = replacer(model, key_len)
    theirs = sample(theirs_model, steps=3, sampler=sampler)
    ours_only = sample(apply_ours(model), steps=3, sampler=sampler)

    before_model, before_op = replacer(model, key_len)
    before = sample(apply_ours(before_model), steps=3, sampler=sampler)
    after_model, after_op = replacer(apply_ours(model), key_len)
    after = sample(after_model, steps=3, sampler=sampler)

    assert before_op.calls and after_op.calls, "their replace did not run"
    assert_same_run(after, before)
    for alone in (plain, theirs, ours_only):                   # both act
        assert (after - alone).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["swapping", "guidance"])
def test_an_ipadapter_like_pack_before_or_after_ours(tiny_models, sample, nodes_regions, regions, mode):
    model = tiny_models[0]
    apply_ours = ours(nodes_regions, regions, mode)
    theirs = sample(ipadapter_like(model), steps=3)
    ours_only = sample(apply_ours(model), steps=3)
    before = sample(apply_ours(ipadapter_like(model)), steps=3)
    after = sample(ipadapter_like(apply_ours(model)), steps=3)       # .add() on our replace: no crash
    assert_same_run(after, before)
    for alone in (theirs, ours_only):
        assert (after - alone).abs().max() > 1e-3


def test_ipadapter_like_window_is_kept_on_our_replace(tiny_models, sample, nodes_regions, regions):
    """Their sigma window still holds when their term rides on our replace: a window no
    step falls in adds nothing."""
    model = tiny_models[0]
    apply_ours = ours(nodes_regions, regions, "swapping")
    ours_only = sample(apply_ours(model), steps=3)
    closed = sample(ipadapter_like(apply_ours(model), sigma_start=-1.0, sigma_end=-2.0), steps=3)
    assert_same_run(closed, ours_only)


def test_the_model_we_were_given_is_untouched_by_their_later_add(tiny_models, sample, nodes_regions, regions):
    model = tiny_models[0]
    ours_model = ours(nodes_regions, regions, "swapping")(model)
    first = sample(ours_model, steps=3)
    ipadapter_like(ours_model)            # their clone gets the term; ours_model must not
    assert_same_run(sample(ours_model, steps=3), first)
