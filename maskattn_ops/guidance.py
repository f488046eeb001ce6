"""Region control of cross-attention from user masks and words (Endo, "Masked-Attention
Diffusion Guidance for Spatially Controlling Text-to-Image Generation"), and the
paint-with-words baseline (eDiff-I), as pure tensor ops at one attention site.

A region is a mask over the site's token grid, (B|1, N) in [0, 1] (area-resized, so a
location half inside counts half), and the context positions of its words. The
integration with the sampler lives elsewhere; these functions only see one site call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import attention_logits


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


def swap_attention_(probs: torch.Tensor, regions: list[SiteRegion]) -> torch.Tensor:
    """Masked-attention swapping (Endo Sec. 3.1): the probabilities of the words in C_i
    become 1/|C_i| inside S_i and 0 outside; other words keep theirs. IN PLACE (only the
    words' columns are written); returns ``probs`` (B, heads, N, T)."""
    for region in regions:
        constant = region.mask.to(probs)[:, None, :] / len(region.positions)   # (B|1, 1, N)
        blend = region.strength
        for position in region.positions:
            probs[..., position] = blend * constant + (1 - blend) * probs[..., position]
    return probs


def paint_with_words_(logits: torch.Tensor, regions: list[SiteRegion], weight: float,
                     sigma: float | torch.Tensor) -> torch.Tensor:
    """eDiff-I's paint-with-words: adds w' * log(1 + sigma) * max(QK^T) to the logits of
    the words in C_i inside S_i (Endo's baseline used w' = 0.3), IN PLACE, and returns
    ``logits``. ``logits`` (B, heads, N, T) are the scaled QK^T; the max is taken per
    sample and head; ``sigma`` is one value or one per sample. Only the words' columns
    are written: the bias is zero everywhere else, so no dense bias is built."""
    log_sigma = torch.log1p(torch.as_tensor(sigma, dtype=logits.dtype, device=logits.device)).reshape(-1, 1, 1, 1)
    scale = weight * log_sigma * logits.amax(dim=(-2, -1), keepdim=True)               # (B, heads, 1, 1)
    for region in regions:
        inside = region.mask.to(logits)[:, None, :, None]                             # (B|1, 1, N, 1)
        columns = list(region.positions)
        logits[..., columns] += region.strength * scale * inside
    return logits


REGION_MODES = ("guidance", "swapping", "paint-with-words")


@dataclass
class RegionAttention:
    """The regions at the sites, on the cond rows only (the negative prompt has no bound
    words), inside a sigma window; as a site provider it acts in the attention modes:

    swapping: the bound words' probabilities become the constant maps (Endo Sec. 3.1).
    paint-with-words: w' * log(1 + sigma) * max(QK^T) added to their logits in region.
    """
    regions: tuple            # maskattn_ops.regions.Region
    mode: str = "swapping"
    weight: float = 0.3       # w' of paint-with-words
    sigma_start: float = float("inf")
    sigma_end: float = 0.0

    def __post_init__(self):
        if self.mode not in REGION_MODES:
            raise ValueError(f"mode must be one of {REGION_MODES}, got {self.mode!r}")
        self._grids: dict = {}     # (region index, grid) -> mask on that grid: derived, constant

    def active_sigma(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def active(self, call) -> bool:
        return self.active_sigma(float(call.sigmas.max()))

    def site_regions(self, call) -> tuple[list[slice], list[SiteRegion]]:
        """(the cond chunks' batch rows, regions with masks for one chunk on the call's
        grid): every cond chunk holds the same latents, so one set of masks serves all."""
        out = []
        for index, region in enumerate(self.regions):
            key = (index, call.grid)
            if key not in self._grids:
                self._grids[key] = mask_to_grid(region.mask, call.grid)               # (B|1, N)
            grid_mask = self._grids[key].to(call.q.device)
            if grid_mask.shape[0] not in (1, call.chunk_size):
                raise ValueError(f"Region Mask Guidance: the mask for {region.words!r} has batch "
                                 f"{grid_mask.shape[0]}, the latent batch is {call.chunk_size}")
            out.append(SiteRegion(grid_mask, tuple(region.positions_for(call.tokens)), region.strength))
        return call.cond_chunks(), out

    def __call__(self, call) -> None:
        return None                 # no additive bias: both modes edit the explicit path

    def _acting(self, call, mode: str):
        """(cond chunks, their regions) when ``mode`` acts on this call, else None."""
        if self.mode != mode or not self.active(call):
            return None
        chunks, regions = self.site_regions(call)
        return (chunks, regions) if chunks else None

    def logits_edit(self, call):
        """paint-with-words, in place on the site's own QK^T (computed once, not again
        for a bias; only the words' columns of the cond rows are written)."""
        acting = self._acting(call, "paint-with-words")
        if acting is None:
            return None
        chunks, regions = acting
        sigmas = call.sigmas.to(call.q.device)                                          # one per latent

        def edit(logits):
            for rows in chunks:
                paint_with_words_(logits[rows], regions, self.weight, sigmas)
            return logits
        return edit

    def probs_edit(self, call):
        """swapping, in place on the site's own probabilities (the cond rows' word columns)."""
        acting = self._acting(call, "swapping")
        if acting is None:
            return None
        chunks, regions = acting

        def edit(probs):
            for rows in chunks:
                swap_attention_(probs[rows], regions)
            return probs
        return edit


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
    """At a guided site during a guidance pass (``call.run.data["guidance_pass"]``), adds
    the site's masked-attention loss from its cross-attention probabilities, and ends the
    pass after the last guided site. Changes no attention itself."""
    regions: RegionAttention
    lam: float = 0.5

    def __call__(self, call) -> None:
        guidance = call.run.data.get("guidance_pass") if call.run is not None else None
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
