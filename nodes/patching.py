"""The one module of this extension that touches ModelPatcher.

Everything our nodes do to a model goes through here: find the UNet's cross-attention
sites, clone the patcher, and install one attn2 replace per chosen site
(``transformer_options["patches_replace"]["attn2"][(block, id, block_index)]``, see
comfy/ldm/modules/attention.py, BasicTransformerBlock.forward). The replace receives the
PROJECTED q, k, v and returns the attention output before ``to_out``.

A site's replace (``SiteAttention``) asks each of its bias providers for an additive
logit bias for this call and runs ``maskattn_ops.attention.biased_attention``. Stacked
nodes of ours add providers to the same object; a replace from another pack at the same
site is chained, not dropped.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Protocol

import torch

import comfy.ldm.modules.attention as host_attention
import comfy.model_patcher
import comfy.patcher_extension
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample
from comfy.model_patcher import ModelPatcher

from ..maskattn_ops.attention import biased_attention, reference_attention
from ..maskattn_ops.sites import RunStore, Site, SiteCall, select_sites, token_grid

# transformer_options key of the per-sampling-run store (see with_run_state)
RUN_STATE_KEY = "maskattn_run"
ATTENTION_LAYERS = ("attn1", "attn2")   # self-attention, cross-attention


class BiasProvider(Protocol):
    """A patch's contribution at a site: an additive logit bias broadcastable to
    (B, heads, N, T), or None to leave this call alone. May also define
    ``probs_edit(call) -> (probs -> probs) | None``: for calls where it returns an edit,
    the site runs the explicit-softmax path and lets the edit replace the probabilities
    (masked-attention swapping); and ``to(device)`` and ``models()``."""

    def __call__(self, call: SiteCall) -> torch.Tensor | None: ...


def site_call(site: Site, q: torch.Tensor, k: torch.Tensor, extra_options: dict) -> SiteCall:
    """Reads a site call's layout from the host's extra_options."""
    cond_or_uncond = tuple(extra_options.get("cond_or_uncond", (0,)))
    if q.shape[0] % len(cond_or_uncond):
        raise RuntimeError(f"MaskAttn: batch {q.shape[0]} at site {site.name} does not split into "
                           f"{len(cond_or_uncond)} cond/uncond chunks")
    sigmas = extra_options.get("sigmas")
    if sigmas is None:
        sigmas = torch.zeros(q.shape[0] // len(cond_or_uncond))
    return SiteCall(
        site=site,
        # The host reports the site's feature map as activations_shape (B, C, h, w), set
        # by SpatialTransformer.forward: exact for non-square latents, unlike sqrt(N).
        grid=token_grid(extra_options["activations_shape"], q.shape[1]),
        batch=q.shape[0],
        tokens=k.shape[1],
        cond_or_uncond=cond_or_uncond,
        sigmas=sigmas,
        q=q,
        k=k,
        run=extra_options.get(RUN_STATE_KEY),
    )


def host_attention_op(q, k, v, extra_options) -> torch.Tensor:
    """The attention the host itself would have run here (its chosen backend and any
    ``optimized_attention_override``), read at call time since the host picks it late."""
    return host_attention.optimized_attention(
        q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
        transformer_options=extra_options)


class SiteAttention:
    """The attention replace (attn2, or attn1 for self-attention) at one site: plain
    attention plus the providers' biases.

    ``chained`` is a replace that another pack had installed at this site (e.g.
    IPAdapter's, which is plain attention plus its own terms). It still runs, and the
    change our bias makes to plain attention is added to its output, so both apply.
    """

    def __init__(self, site: Site, providers: Iterable[BiasProvider] = (), chained: Callable | None = None):
        self.site = site
        self.providers = list(providers)
        self.chained = chained

    def with_provider(self, provider: BiasProvider) -> "SiteAttention":
        """A new replace with one more provider (the installed one stays as it was)."""
        return SiteAttention(self.site, [*self.providers, provider], self.chained)

    def bias(self, call: SiteCall) -> torch.Tensor | None:
        biases = [b for b in (p(call) for p in self.providers) if b is not None]
        if not biases:
            return None
        return sum(biases[1:], biases[0])

    def edit(self, call: SiteCall):
        """The providers' probability edits for this call, composed, or None."""
        edits = [e for e in (p.probs_edit(call) for p in self.providers if hasattr(p, "probs_edit")) if e is not None]
        if not edits:
            return None

        def run(probs):
            for edit in edits:
                probs = edit(probs)
            return probs
        return run

    def attention(self, q, k, v, heads: int, bias, edit):
        if edit is None:
            return biased_attention(q, k, v, heads, bias)
        return reference_attention(q, k, v, heads, bias, edit)[0]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        call = site_call(self.site, q, k, extra_options)
        bias, edit = self.bias(call), self.edit(call)
        heads = extra_options["n_heads"]
        changed = bias is not None or edit is not None
        if self.chained is None:
            return self.attention(q, k, v, heads, bias, edit) if changed else host_attention_op(q, k, v, extra_options)
        out = self.chained(q, k, v, extra_options)
        if not changed:
            return out
        return out + (self.attention(q, k, v, heads, bias, edit) - biased_attention(q, k, v, heads))

    # The host deep-copies model_options on every clone(): share the providers (they
    # may hold weights) and copy only the list, so clones stay independent and cheap.
    def __deepcopy__(self, memo):
        return SiteAttention(self.site, self.providers, copy.deepcopy(self.chained, memo))

    def to(self, device):
        """Called by the host when the model moves; providers move in place."""
        for p in self.providers:
            if hasattr(p, "to"):
                p.to(device)
        if hasattr(self.chained, "to"):
            self.chained = self.chained.to(device)
        return self

    def models(self) -> list:
        """ModelPatchers that the providers hold, for the host to load with the UNet."""
        return [m for p in [*self.providers, self.chained] if hasattr(p, "models") for m in p.models()]


def _is_resampler(module: torch.nn.Module, kind: type) -> bool:
    # SDXL resamples with Downsample/Upsample modules; resblock_updown UNets do it
    # inside a ResBlock (h_upd).
    return isinstance(module, kind) or (getattr(module, "updown", False) and isinstance(module.h_upd, kind))


def discover_sites(model: ModelPatcher) -> list[Site]:
    """Every cross-attention site of the model's UNet, in execution order, with its
    token-grid downsampling read from the module tree (not assumed from a config)."""
    unet = model.get_model_object("diffusion_model")
    if not hasattr(unet, "input_blocks"):
        raise TypeError(f"MaskAttn supports SDXL-pattern UNets; this model is {type(unet).__name__}")
    sites: list[Site] = []
    factor = 1

    def visit(block_name: str, block_id: int, block: torch.nn.Module) -> None:
        nonlocal factor
        for module in block:
            if isinstance(module, host_attention.SpatialTransformer):
                for index, tb in enumerate(module.transformer_blocks):
                    if tb.attn2 is None:
                        continue
                    sites.append(Site(
                        key=(block_name, block_id, index), downsample=factor,
                        channels=tb.attn2.to_q.in_features, heads=tb.attn2.heads,
                        dim_head=tb.attn2.dim_head, context_dim=tb.attn2.to_k.in_features))
            elif _is_resampler(module, Downsample):
                factor *= 2
            elif _is_resampler(module, Upsample):
                factor //= 2

    for block_id, block in enumerate(unet.input_blocks):
        visit("input", block_id, block)
    if unet.middle_block is not None:
        visit("middle", 0, unet.middle_block)
    for block_id, block in enumerate(unet.output_blocks):
        visit("output", block_id, block)
    return sites


def install_bias(model: ModelPatcher, provider: BiasProvider, sites: str | Iterable[str] = "mid-resolution",
                 layer: str = "attn2") -> ModelPatcher:
    """A clone of ``model`` whose chosen sites add ``provider``'s bias to their
    cross-attention (``layer`` "attn2") or self-attention ("attn1"); ``model`` itself is
    left untouched. ``sites``: "mid-resolution", "all", or site names ("input.4.0")."""
    if layer not in ATTENTION_LAYERS:
        raise ValueError(f"layer must be one of {ATTENTION_LAYERS}, got {layer!r}")
    patched = model.clone()
    replaces = patched.model_options["transformer_options"].get("patches_replace", {}).get(layer, {})
    for site in select_sites(discover_sites(model), sites):
        # The host tries (block, id, index) before (block, id): chain whichever it would run.
        existing = replaces.get(site.key, replaces.get(site.key[:2]))
        if isinstance(existing, SiteAttention) and existing.site == site:
            op = existing.with_provider(provider)
        else:
            op = SiteAttention(site, [provider], chained=existing)
        patched.set_model_patch_replace(op, layer, *site.key)
    return patched


def _run_state_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE: a fresh store for this sampling run (providers pass data from one
    site call to a later one through it), dropped when the run ends, however it ends."""
    guider = executor.class_obj
    original = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    guider.model_options["transformer_options"][RUN_STATE_KEY] = RunStore()
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original


def with_run_state(model: ModelPatcher) -> ModelPatcher:
    """Gives ``model`` (a clone of ours) a per-run store, visible to providers as
    ``SiteCall.run``. Idempotent."""
    if not model.get_wrappers(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, RUN_STATE_KEY):
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, RUN_STATE_KEY, _run_state_wrapper)
    return model
