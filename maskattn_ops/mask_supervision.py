"""Mask supervision of gate heads (beyond MaskAttn-SDXL, which trains with the diffusion
loss alone): where training pairs have instance masks (e.g. COCO instances), a BCE term
pulls the gate probabilities of a phrase's tokens toward the phrase's mask. Pure torch.
"""
from __future__ import annotations

import torch
from torch import nn

from .regions import mask_to_grid

MaskTarget = tuple  # (context positions of a phrase, mask (H, W) in [0, 1] at image size)


def balanced_weights(target: torch.Tensor) -> torch.Tensor:
    """Per-cell weights (h, w) that give the mask's inside and outside equal total weight
    (soft: a cell 30% covered counts 0.3 inside, 0.7 outside); a side with no area leaves
    the whole weight to the other. Sums to 1."""
    sides = [side / side.sum() for side in (target, 1.0 - target) if side.sum() > 0]
    return sum(sides) / len(sides)


def mask_supervision_loss(site_logits: list[torch.Tensor], targets: list[list[MaskTarget]]) -> torch.Tensor:
    """BCE between the gate probabilities of a phrase's tokens and the phrase's instance
    mask, area-resized to each site's grid, inside and outside weighted equally
    (``balanced_weights``); the mean over sites, samples, phrases and tokens.

    Beyond the paper (which trains with the diffusion loss alone): an optional term for
    data that has instance masks, e.g. COCO instances. Why balanced: objects cover a small
    share of the grid, and a plain mean is dominated by the outside, so it teaches heads
    to switch a phrase off wherever they are unsure, i.e. everywhere at high noise
    (measured on the shapes model: kept in 4% of the object's own cells at sigma 14.6,
    45% at sigma 0.03). Suppressing a word inside its object costs the image more than
    keeping it outside, which is only the frozen model's behaviour.
    """
    terms = []
    for logits in site_logits:                               # (B, T, h, w)
        h, w = logits.shape[-2:]
        for b, sample_targets in enumerate(targets):
            for positions, mask in sample_targets:
                grid = mask_to_grid(mask[None], (h, w)).view(h, w).to(logits.device)          # (h, w)
                chosen = logits[b, positions].float()                                         # (P, h, w)
                bce = nn.functional.binary_cross_entropy_with_logits(
                    chosen, grid.expand_as(chosen), reduction="none")                         # (P, h, w)
                terms.append((bce * balanced_weights(grid)).sum(dim=(-2, -1)).mean())
    if not terms:
        return site_logits[0].new_zeros(()) if site_logits else torch.zeros(())
    return torch.stack(terms).mean()
