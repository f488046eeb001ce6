"""Region control of cross-attention from user masks and words (Endo, "Masked-Attention
Diffusion Guidance for Spatially Controlling Text-to-Image Generation"), and the
paint-with-words baseline (eDiff-I), as pure tensor ops at one attention site.

A region is a mask over the site's token grid, (B|1, N) in [0, 1] (area-resized, so a
location half inside counts half), and the context positions of its words. The
integration with the sampler lives elsewhere; these functions only see one site call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SiteRegion:
    """One region at one site: the mask on the site's grid and its words' positions."""
    mask: torch.Tensor          # (B|1, N) in [0, 1]
    positions: tuple[int, ...]  # context positions of the region's words (C_i)
    strength: float = 1.0


def mask_to_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) mask of any size -> (B, h * w) by area (the fraction of each grid cell
    the mask covers), so masks of any resolution and aspect land on any site's grid."""
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W), got shape {tuple(mask.shape)}")
    cells = nn.functional.adaptive_avg_pool2d(mask[:, None].float(), grid)   # (B, 1, h, w)
    return cells.flatten(1)


def masked_attention_loss(probs: torch.Tensor, regions: list[SiteRegion], lam: float = 0.5) -> torch.Tensor:
    """Endo Eq. 2 at one site, per sample: (B,).

    L = sum_i sum_{w in C_i} ( -sum_{p in S_i} M[p, w] + lam * sum_{p not in S_i} M[p, w] )
    with M the cross-attention probabilities (B, heads, N, T), summed over heads (the
    authors' code sums raw values over every layer and head; scaling is the caller's).
    """
    loss = probs.new_zeros(probs.shape[0])
    for region in regions:
        attn = probs[..., list(region.positions)].sum(dim=(1, 3))    # (B, N): heads and words summed
        inside = region.mask.to(attn)
        loss = loss + region.strength * (-(attn * inside).sum(-1) + lam * (attn * (1 - inside)).sum(-1))
    return loss


def swap_attention(probs: torch.Tensor, regions: list[SiteRegion]) -> torch.Tensor:
    """Masked-attention swapping (Endo Sec. 3.1): the probabilities of the words in C_i
    become 1/|C_i| inside S_i and 0 outside; other words keep theirs. (B, heads, N, T)."""
    swapped = probs.clone()
    for region in regions:
        constant = region.mask.to(probs) / len(region.positions)           # (B|1, N)
        blend = region.strength
        for position in region.positions:
            swapped[..., position] = blend * constant[:, None, :] + (1 - blend) * probs[..., position]
    return swapped


def paint_with_words_bias(logits: torch.Tensor, regions: list[SiteRegion], weight: float, sigma: float) -> torch.Tensor:
    """eDiff-I's paint-with-words: w' * log(1 + sigma) * max(QK^T) added to the logits of
    the words in C_i inside S_i (Endo's baseline used w' = 0.3). ``logits`` (B, heads, N,
    T) are the scaled QK^T; the max is taken per sample and head. Returns the bias."""
    scale = weight * math.log(1.0 + sigma) * logits.amax(dim=(-2, -1), keepdim=True)   # (B, heads, 1, 1)
    bias = torch.zeros_like(logits)
    for region in regions:
        inside = region.mask.to(logits)[:, None, :, None]                             # (B|1, 1, N, 1)
        bias[..., list(region.positions)] += region.strength * scale * inside
    return bias
