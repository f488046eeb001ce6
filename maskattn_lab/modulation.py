"""Attention modulation (Kim et al., "Dense Text-to-Image Generation with Attention
Modulation", ICCV 2023, Sec. 4; the authors' code: gradio_app.py, ``mod_forward``), as
the evaluation measures it (issue 25): a lab method, not a node mode, since it did not
win on the shapes model (docs/evaluation.md, "Region fidelity").

Training-free, no backward pass: on the cond rows, during the first part of sampling, a
site's scaled QK^T is pushed toward each row's max where a pair should attend and toward
its min where it should not, before the softmax:

    QK' = QK + w * lambda_t * (1 - s * S_q) * (R * (max - QK) - (1 - R) * (QK - min))

- cross-attention: R[p, t] = 1 where location p is inside the region of the words at
  token t; every other (location, token) pair, the start token's and unbound words'
  included, is lowered (as the authors' code does: tokens in no segment have R = 0).
- self-attention: R[p, q] = 1 where p and q lie in the same segment, the segments being
  the regions and the background (what no region covers).
- S_q: the area (share of the grid) of query p's segment, s = 1 (smaller segments are
  modulated more); lambda_t = (t / 1000) ** 5 with t the model's timestep; w = 1.0 at
  cross-attention, 0.3 at self-attention (the authors' defaults).

Masks are soft here (area-resized to each grid): R is the product of two locations'
memberships summed over segments, which is the authors' binary R for binary masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from comfyui_maskattn.maskattn_ops.region_attention import RegionAttention, SiteRegion
from comfyui_maskattn.maskattn_ops.sites import select_sites


def modulated(logits: torch.Tensor, target: torch.Tensor, size: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """The modulated ``logits`` (B, heads, N, T), the scaled QK^T; ``target`` R (B|1, N, T)
    in [0, 1], ``size`` 1 - s * S_q (B|1, N, 1), ``strength`` w * lambda_t (B,)."""
    high = logits.amax(dim=-1, keepdim=True)                                   # (B, heads, N, 1)
    low = logits.amin(dim=-1, keepdim=True)
    scale = strength.to(logits).reshape(-1, 1, 1, 1) * size.to(logits)[:, None]   # (B, 1, N, 1)
    raise_ = target.to(logits)[:, None]                                        # (B|1, 1, N, T)
    return logits + scale * (raise_ * (high - logits) - (1 - raise_) * (logits - low))


def segments(regions: list[SiteRegion]) -> torch.Tensor:
    """(S, B|1, N): each region's mask on the grid, then the background (1 - their sum,
    clamped at 0)."""
    masks = torch.broadcast_tensors(*[r.mask for r in regions])
    stacked = torch.stack(masks)                                               # (R, B|1, N)
    background = (1 - stacked.sum(0)).clamp(min=0)
    return torch.cat([stacked, background[None]])


def self_target(regions: list[SiteRegion]) -> torch.Tensor:
    """R of self-attention: (B|1, N, N), how far two locations share a segment."""
    member = segments(regions)                                                 # (S, B|1, N)
    return torch.einsum("sbp,sbq->bpq", member, member).clamp(max=1)


def segment_size(same: torch.Tensor, size_weight: float) -> torch.Tensor:
    """1 - s * S_q: (B|1, N, 1), S_q the share of the grid in query p's segment, from
    ``same`` = self_target(regions)."""
    return 1 - size_weight * same.mean(dim=-1, keepdim=True)


def cross_target(regions: list[SiteRegion], tokens: int) -> torch.Tensor:
    """R of cross-attention: (B|1, N, T), each region's mask in its words' columns."""
    masks = torch.broadcast_tensors(*[r.mask for r in regions])
    target = masks[0].new_zeros(*masks[0].shape, tokens)                       # (B|1, N, T)
    for region, mask in zip(regions, masks):
        for position in region.positions:
            target[..., position] = torch.maximum(target[..., position], mask * min(region.strength, 1.0))
    return target


@dataclass
class AttentionModulation:
    """DenseDiffusion's modulation as a site provider at cross-attention (``layer``
    "attn2") or self-attention ("attn1"): a logits edit on the cond rows while the
    regions' sigma window is open. ``timestep`` maps sigmas to the model's timesteps
    (0..999 for SD's discrete schedules)."""
    regions: RegionAttention
    timestep: Callable[[torch.Tensor], torch.Tensor]
    layer: str = "attn2"
    weight: float = 1.0
    size_weight: float = 1.0

    def __call__(self, call) -> None:
        return None                     # no additive bias: the edit reads the logits' own max and min

    def strength(self, call) -> torch.Tensor:
        """w * (t / 1000) ** 5 per latent: (B_chunk,)."""
        t = self.timestep(call.sigmas.float()).to(call.q.device).float()
        return self.weight * (t / 1000).clamp(min=0) ** 5

    def logits_edit(self, call):
        if self.weight == 0 or not self.regions.active(call):
            return None
        chunks = call.cond_chunks()
        if not chunks:
            return None
        if self.layer == "attn2":
            _, regions = self.regions.site_regions(call)
            same = self_target(regions)                                        # (B|1, N, N), for the sizes
            target = cross_target(regions, call.tokens)
        else:       # self-attention's keys are locations, not the prompt's tokens: masks only
            regions = [SiteRegion(mask, (), region.strength)
                       for region, mask in zip(self.regions.regions, self.regions.grid_masks(call))]
            same = target = self_target(regions)
        size = segment_size(same, self.size_weight)
        strength = self.strength(call)

        def edit(logits):
            # a guidance pass: autograd needs them as they were, so write into a copy
            out = logits.clone() if logits.requires_grad else logits
            for rows in chunks:
                out[rows] = modulated(logits[rows], target, size, strength)
            return out
        return edit


def install(model, regions: tuple, weight: float, self_weight: float, end_percent: float, sites="all"):
    """A clone of ``model`` (ModelPatcher) modulated at ``sites``' cross- and
    self-attention from the start to ``end_percent`` of sampling, through our patching
    module (a site provider each: ``patching.install_bias``)."""
    from comfyui_maskattn.nodes import patching        # the host adapter: only with a host

    window = patching.sigma_window(model, 0.0, end_percent, "modulation")
    masks = RegionAttention(tuple(regions), **window)  # the regions on each grid and the window (its mode unused)
    names = [s.name for s in select_sites(patching.discover_sites(model), sites)]
    timestep = model.get_model_object("model_sampling").timestep      # sigma -> 0..999 on SD's schedules
    cross = patching.install_bias(model, AttentionModulation(masks, timestep, "attn2", weight), names)
    return patching.install_bias(cross, AttentionModulation(masks, timestep, "attn1", self_weight), names, layer="attn1")
