"""Visualize Gates: maps of where each word may act, from one UNet evaluation.

The node runs the (patched or plain) model once, at a chosen point of the schedule over
the given latent, through the host's own sampling machinery (a one-evaluation sampler
function, so conds, devices and model loading are the host's), on a clone that records
into that run's captures (``RunState.captures``), per site:
- the learned gate probabilities, which Apply Masked Cross-Attention's gates record
  whenever a run asks for captures, and
- the cross-attention probabilities the site really used (an identity probability edit,
  installed last, so gates, swapping and paint-with-words are all in them).
Nothing is installed on the model that samples: sampling does not pay for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.sample
import comfy.samplers

from . import patching


@dataclass
class SiteMaps:
    """One site's maps for the cond rows: (B, T, h, w) each (gates None if ungated)."""
    site: object
    attention: torch.Tensor
    gates: torch.Tensor | None = None


class AttentionProbe:
    """Identity probability edit: records the cond rows' probabilities, mean over heads,
    in the run's captures (installed last, so it sees every other provider's edit)."""

    def __call__(self, call):
        return None

    def probs_edit(self, call):
        if call.run is None or call.run.captures is None:
            return None
        attention = call.run.captures.attention

        def record(probs):                                           # (B, heads, N, T)
            cond = ~call.is_uncond().to(probs.device)
            maps = probs[cond].mean(1).transpose(1, 2)               # (B, T, N)
            attention[call.site.name] = (call.site, maps.unflatten(-1, call.grid).float().cpu())
            return probs
        return record


def capture_maps(model, positive, negative, latent: dict, cfg: float, step_percent: float, seed: int) -> list[SiteMaps]:
    """One evaluation of ``model`` at ``step_percent`` of the schedule over ``latent``
    (noised with ``seed``): the maps of every cross-attention site, in UNet order."""
    # One evaluation, not a sampling run: Region Mask Guidance's latent step stays out of it.
    plain_sampling = patching.without_latent_guidance(model)
    probed, captures = patching.with_captures(patching.install_bias(plain_sampling, AttentionProbe(), "all"))
    sampling = model.get_model_object("model_sampling")
    sigma = max(float(sampling.percent_to_sigma(step_percent)), float(sampling.sigma_min))
    sigmas = torch.tensor([sigma, 0.0])
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed)

    def one_evaluation(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        return x

    comfy.sample.sample_custom(probed, noise, cfg, comfy.samplers.KSAMPLER(one_evaluation), sigmas,
                               positive, negative, samples, noise_mask=latent.get("noise_mask"), seed=seed)
    gates = {}
    for call, logits in captures.gate_logits:
        cond = ~call.is_uncond().to(logits.device)
        gates[call.site.name] = torch.sigmoid(logits[cond].float()).cpu()
    return [SiteMaps(site, attention, gates.get(name)) for name, (site, attention) in captures.attention.items()]
