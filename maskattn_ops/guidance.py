"""Masked-attention guidance (Endo, "Masked-Attention Diffusion Guidance for Spatially
Controlling Text-to-Image Generation", Sec. 3.2): the loss of Eq. 2 on a site's
cross-attention probabilities, accumulated over one guidance forward. Moving the
sampler's latent down its gradient (Eq. 3) is the host adapter's part (nodes/patching.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import attention_logits
from .region_attention import RegionAttention, SiteRegion


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


# Endo's setting (SD2 at 512x512) has 180,480 (site, head, location) terms in the raw sum
# of Eq. 2: 16 sites, 5 heads x 4096 locations at 5 sites, 10 x 1024 at 5, 20 x 256 at 5,
# 20 x 64 at the middle one. The loss is the raw sum rescaled to that many terms, so it
# equals the paper's raw sum there, and alpha keeps its meaning at SDXL's 70 sites and at
# any resolution instead of growing with the number of terms.
ENDO_TERMS = 5 * 5 * 4096 + 5 * 10 * 1024 + 5 * 20 * 256 + 1 * 20 * 64


class GuidanceForwardDone(Exception):
    """Raised by the last guided site: the guidance pass needs nothing after it."""


@dataclass
class GuidancePass:
    """One guidance forward: which sites remain, and the loss accumulated so far."""
    sites_left: set
    raw_loss: torch.Tensor | None = None
    terms: int = 0

    def loss(self) -> torch.Tensor:
        """Endo Eq. 2, rescaled to ENDO_TERMS terms (see above), summed over the batch."""
        if self.raw_loss is None:
            raise RuntimeError("Region Mask Guidance: the guidance pass reached no guided site")
        return self.raw_loss * (ENDO_TERMS / self.terms)


@dataclass
class GuidanceCapture:
    """At a guided site during a guidance pass (``call.run.guidance_pass``), adds
    the site's masked-attention loss from its cross-attention probabilities, and ends the
    pass after the last guided site. Changes no attention itself."""
    regions: RegionAttention
    lam: float = 0.5

    def __call__(self, call) -> None:
        guidance = call.run.guidance_pass if call.run is not None else None
        if guidance is None or call.site.name not in guidance.sites_left:
            return None
        chunks, regions = self.regions.site_regions(call)
        for rows in chunks:
            probs = attention_logits(call.q[rows], call.k[rows], call.site.heads).softmax(-1)   # (rows, heads, N, T)
            loss = masked_attention_loss(probs, regions, self.lam).sum()
            guidance.raw_loss = loss if guidance.raw_loss is None else guidance.raw_loss + loss
        guidance.terms += call.site.heads * call.grid[0] * call.grid[1]
        guidance.sites_left.discard(call.site.name)
        if not guidance.sites_left:
            raise GuidanceForwardDone()
        return None
