"""Visualize Gates: maps of where each word may act, from one UNet evaluation.

The node runs the (patched or plain) model once, at a chosen point of the schedule over
the given latent, through the host's own sampling machinery (a one-evaluation sampler
function, so conds, devices and model loading are the host's). It records, per site:
- the learned gate probabilities, from the GateBias providers of Apply Masked
  Cross-Attention (their ``capture``, set only for this evaluation), and
- the cross-attention probabilities the site really used (an identity probability edit,
  installed last, so gates, swapping and paint-with-words are all in them).
Nothing is installed on the model that samples: sampling does not pay for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.sample
import comfy.samplers

from ..maskattn_ops.gating import GateBias
from . import patching


@dataclass
class SiteMaps:
    """One site's maps for the cond rows: (B, T, h, w) each (gates None if ungated)."""
    site: object
    attention: torch.Tensor
    gates: torch.Tensor | None = None


class _UsedAttention:
    """Identity probability edit that keeps the cond rows' probabilities, mean over heads."""

    def __init__(self):
        self.maps: dict = {}

    def __call__(self, call):
        return None

    def probs_edit(self, call):
        def record(probs):                                           # (B, heads, N, T)
            cond = ~call.is_uncond().to(probs.device)
            maps = probs[cond].mean(1).transpose(1, 2)               # (B, T, N)
            self.maps[call.site.name] = (call.site, maps.unflatten(-1, call.grid).float().cpu())
            return probs
        return record


def _gate_providers(model) -> list[GateBias]:
    replaces = model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    found = {}
    for op in replaces.values():
        for provider in getattr(op, "providers", []):
            if isinstance(provider, GateBias):
                found[id(provider)] = provider
    return list(found.values())


def capture_maps(model, positive, negative, latent: dict, cfg: float, step_percent: float, seed: int) -> list[SiteMaps]:
    """One evaluation of ``model`` at ``step_percent`` of the schedule over ``latent``
    (noised with ``seed``): the maps of every cross-attention site, in UNet order."""
    probe = _UsedAttention()
    probed = patching.install_bias(model, probe, "all")
    gates = _gate_providers(probed)
    sampling = model.get_model_object("model_sampling")
    sigma = max(float(sampling.percent_to_sigma(step_percent)), float(sampling.sigma_min))
    sigmas = torch.tensor([sigma, 0.0])
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed)

    def one_evaluation(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        return x

    captured = {}
    for provider in gates:
        provider.capture = []
    try:
        comfy.sample.sample_custom(probed, noise, cfg, comfy.samplers.KSAMPLER(one_evaluation), sigmas,
                                   positive, negative, samples, noise_mask=latent.get("noise_mask"), seed=seed)
        for provider in gates:
            for call, logits in provider.capture:
                cond = ~call.is_uncond().to(logits.device)
                captured[call.site.name] = torch.sigmoid(logits[cond].float()).cpu()
    finally:
        for provider in gates:
            provider.capture = None
    return [SiteMaps(site, attention, captured.get(name)) for name, (site, attention) in probe.maps.items()]
