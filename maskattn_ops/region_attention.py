"""Regions acting on a site's attention directly: masked-attention swapping (Endo,
"Masked-Attention Diffusion Guidance for Spatially Controlling Text-to-Image
Generation", Sec. 3.1) and paint-with-words (eDiff-I, Endo's other baseline), and the
regions as each site sees them (``RegionAttention``), which guidance reads as well.

A region at a site is a mask over the site's token grid, (B|1, N) in [0, 1] (area-resized,
so a location half inside counts half), and the context positions of its words.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .regions import mask_to_grid


# paint-and-suppress: a region smaller than this share of the image is pushed down outside
# less, in proportion to its share (measured: docs/evaluation.md, "Small regions").
SMALL_REGION = 0.05


@dataclass(frozen=True)
class SiteRegion:
    """One region at one site: the mask on the site's grid and its words' positions."""
    mask: torch.Tensor          # (B|1, N) in [0, 1]
    positions: tuple[int, ...]  # context positions of the region's words (C_i)
    strength: float = 1.0

    def outside_share(self) -> torch.Tensor:
        """(B|1,) how much of paint-and-suppress's push down outside this region gets:
        1 for a region of SMALL_REGION of the grid or more, its share / SMALL_REGION below.
        Why: outside a tiny region is nearly the whole image, and pushing the words down
        there at full strength lost the object (recall, docs/evaluation.md)."""
        return (self.mask.float().mean(dim=-1) / SMALL_REGION).clamp(max=1.0)


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
                     sigma: float | torch.Tensor, max_of: torch.Tensor | None = None,
                     outside: float = 0.0) -> torch.Tensor:
    """eDiff-I's paint-with-words: adds w' * log(1 + sigma) * max(QK^T) to the logits of
    the words in C_i inside S_i (Endo's baseline used w' = 0.3), IN PLACE, and returns
    ``logits``. ``logits`` (B, heads, N, T) are the scaled QK^T; the max is taken per
    sample and head, of ``max_of`` when given (the same values, kept unchanged for
    autograd); ``sigma`` is one value or one per sample. Only the words' columns are
    written: the bias is zero everywhere else, so no dense bias is built. ``outside`` > 0
    also SUBTRACTS outside * (the same term) outside S_i (0: eDiff-I's as published),
    scaled down for regions under SMALL_REGION of the grid (``SiteRegion.outside_share``)."""
    log_sigma = torch.log1p(torch.as_tensor(sigma, dtype=logits.dtype, device=logits.device)).reshape(-1, 1, 1, 1)
    source = logits if max_of is None else max_of
    scale = weight * log_sigma * source.amax(dim=(-2, -1), keepdim=True)               # (B, heads, 1, 1)
    for region in regions:
        inside = region.mask.to(logits)[:, None, :, None]                             # (B|1, 1, N, 1)
        push_down = outside * region.outside_share().to(logits)[:, None, None, None]  # (B|1, 1, 1, 1)
        columns = list(region.positions)
        logits[..., columns] += region.strength * scale * (inside - push_down * (1 - inside))
    return logits


REGION_MODES = ("guidance", "swapping", "paint-with-words", "paint-and-suppress")
PAINTING_MODES = ("paint-with-words", "paint-and-suppress")     # the modes that edit the logits


def check_aspect(region, grid: tuple[int, int]) -> None:
    """A region is resized to each site's grid by area: one drawn for an image of another
    shape would be stretched, so its aspect must match the grid's, to a grid cell (the
    latent and the grids round the image size down or up)."""
    height, width = region.mask.shape[-2:]
    h, w = grid
    if abs(height * w / width - h) > 1:
        raise ValueError(f"Region Mask Guidance: the region for {region.words!r} is {width}x{height} but the image "
                         f"being sampled has another shape (a {w}x{h} grid at this layer): bind the mask or box "
                         f"at the image's own size (Bind Region to Words' image_width and image_height)")


@dataclass
class RegionAttention:
    """The regions at the sites, on the cond rows only (the negative prompt has no bound
    words), inside a sigma window; as a site provider it acts in the attention modes:

    swapping: the bound words' probabilities become the constant maps (Endo Sec. 3.1).
    paint-with-words: w' * log(1 + sigma) * max(QK^T) added to their logits in region.
    paint-and-suppress: the same inside, and ``outside`` times it SUBTRACTED outside the
    region (this project's mode, issue 25: docs/evaluation.md, "Region fidelity").
    """
    regions: tuple            # maskattn_ops.regions.Region
    mode: str = "swapping"
    weight: float = 0.3       # w' of paint-with-words and paint-and-suppress
    outside: float = 0.5      # paint-and-suppress: the push down outside, relative to w'
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

    def grid_masks(self, call) -> list[torch.Tensor]:
        """Each region's mask on the call's grid, (B|1, N), on the call's device."""
        out = []
        for index, region in enumerate(self.regions):
            key = (index, call.grid)
            if key not in self._grids:
                check_aspect(region, call.grid)
                self._grids[key] = mask_to_grid(region.mask, call.grid)               # (B|1, N)
            grid_mask = self._grids[key].to(call.q.device)
            if grid_mask.shape[0] not in (1, call.chunk_size):
                raise ValueError(f"Region Mask Guidance: the mask for {region.words!r} has batch "
                                 f"{grid_mask.shape[0]}, the latent batch is {call.chunk_size}: give Bind "
                                 f"Region to Words (mask) one mask, or one per latent")
            out.append(grid_mask)
        return out

    def site_regions(self, call) -> tuple[list[slice], list[SiteRegion]]:
        """(the cond chunks' batch rows, regions with masks for one chunk on the call's
        grid): every cond chunk holds the same latents, so one set of masks serves all."""
        out = [SiteRegion(mask, tuple(region.positions_for(call.tokens)), region.strength)
               for region, mask in zip(self.regions, self.grid_masks(call))]
        return call.cond_chunks(), out

    def __call__(self, call) -> None:
        return None                 # no additive bias: the modes edit the explicit path

    def _acting(self, call, modes: tuple[str, ...]):
        """(cond chunks, their regions) when one of ``modes`` acts on this call, else None."""
        if self.mode not in modes or not self.active(call):
            return None
        chunks, regions = self.site_regions(call)
        return (chunks, regions) if chunks else None

    def logits_edit(self, call):
        """paint-with-words or paint-and-suppress, in place on the site's own QK^T
        (computed once, not again for a bias; only the words' columns of the cond rows
        are written)."""
        acting = self._acting(call, PAINTING_MODES)
        if acting is None:
            return None
        chunks, regions = acting
        outside = self.outside if self.mode == "paint-and-suppress" else 0.0
        sigmas = call.sigmas.to(call.q.device)                                          # one per latent

        def edit(logits):
            source = logits
            if logits.requires_grad:      # a guidance pass: autograd needs them as they were
                logits = logits.clone()
            for rows in chunks:
                paint_with_words_(logits[rows], regions, self.weight, sigmas, max_of=source[rows], outside=outside)
            return logits
        return edit

    def probs_edit(self, call):
        """swapping, in place on the site's own probabilities (the cond rows' word columns)."""
        acting = self._acting(call, ("swapping",))
        if acting is None:
            return None
        chunks, regions = acting

        def edit(probs):
            if probs.requires_grad:       # a guidance pass: softmax's backward needs its output
                probs = probs.clone()
            for rows in chunks:
                swap_attention_(probs[rows], regions)
            return probs
        return edit
