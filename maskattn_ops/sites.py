"""Cross-attention sites of an SDXL-pattern UNet, and the named sets users pick from.

A site is one cross-attention layer (attn2 of one transformer block), keyed the way
ComfyUI keys attention replaces: ``(block_name, block_id, block_index)`` with block_name
"input" / "middle" / "output" and block_index the depth inside that block's transformer
stack. ``downsample`` is the latent-to-token-grid factor at the site (1, 2, 4 for SDXL's
three levels), so at a 1024px image (128x128 latent) the SDXL mid-resolution sites
(MaskAttn-SDXL, Sec. 2) are the ones with ``downsample == 2``: a 64x64 token grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch

if TYPE_CHECKING:
    from .run_state import RunState

SiteKey = tuple[str, int, int]

# "encoder": the input blocks' sites only. Guidance there is cheapest: its forward pass
# ends at the last guided site, and its backward runs through the encoder alone.
SITE_SETS = ("mid-resolution", "all", "encoder")
# SDXL's 64x64 level at 1024px: half the latent grid (its 128x128 level has no sites).
MID_RESOLUTION_DOWNSAMPLE = 2


@dataclass(frozen=True)
class Site:
    """One cross-attention layer and the widths a patch there must match."""
    key: SiteKey
    downsample: int    # token grid = latent grid / downsample
    channels: int      # query width (feature map channels at the site)
    heads: int
    dim_head: int
    context_dim: int   # width of the text tokens (keys and values before projection)

    @property
    def name(self) -> str:
        """The key as a readable string, e.g. "input.4.1" (used in weight keys and labels)."""
        block, block_id, index = self.key
        return f"{block}.{block_id}.{index}"


def select_sites(sites: list[Site], selection: str | Iterable[str]) -> list[Site]:
    """Sites named by a set name ("mid-resolution", "all") or by a list of site names
    ("input.4.0", ...). Unknown names are an error that lists what exists."""
    if isinstance(selection, str) and selection in SITE_SETS:
        if selection == "all":
            return list(sites)
        if selection == "encoder":
            return [s for s in sites if s.key[0] == "input"]
        chosen = [s for s in sites if s.downsample == MID_RESOLUTION_DOWNSAMPLE]
        if not chosen:
            levels = sorted({s.downsample for s in sites})
            raise ValueError(f"this model has no cross-attention at the mid-resolution level "
                             f"(latent/{MID_RESOLUTION_DOWNSAMPLE}); its sites are at latent/{levels}")
        return chosen
    names = [selection] if isinstance(selection, str) else list(selection)
    by_name = {s.name: s for s in sites}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(
            f"unknown cross-attention site(s) {unknown}; this model has: {', '.join(by_name)}"
            f" (or use one of {SITE_SETS})"
        )
    return [by_name[n] for n in names]


def parse_selection(text: str) -> str | list[str]:
    """What a user typed for ``select_sites``: a set name or one site name as it is,
    several comma-separated site names as a list."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names[0] if len(names) == 1 else names


def token_grid(activations_shape: list[int] | tuple[int, ...], tokens: int) -> tuple[int, int]:
    """(h, w) of the token grid at a site, from the feature map shape (B, C, h, w) that
    the host reports for the site, checked against the number of query tokens."""
    h, w = int(activations_shape[-2]), int(activations_shape[-1])
    if h * w != tokens:
        raise ValueError(f"site feature map {h}x{w} does not match {tokens} query tokens")
    return h, w


@dataclass(frozen=True)
class SiteCall:
    """What a bias provider knows about one call of one site."""
    site: Site
    grid: tuple[int, int]          # (h, w) token grid; N = h * w query tokens
    batch: int                     # B of q: len(cond_or_uncond) chunks of equal size
    tokens: int                    # T context tokens (k.shape[1]); k*77 for long prompts
    cond_or_uncond: tuple[int, ...]  # per chunk: 0 = cond, 1 = uncond (order varies!)
    sigmas: torch.Tensor           # (B // chunks,) sigma of each latent in the batch
    q: torch.Tensor                # (B, N, heads*dim_head) projected queries
    k: torch.Tensor                # (B, T, heads*dim_head) projected keys
    run: "RunState | None" = None  # per-sampling-run state, when the patch asked for one

    @property
    def chunk_size(self) -> int:
        """Rows per cond/uncond chunk: the latent batch."""
        return self.batch // len(self.cond_or_uncond)

    def is_uncond(self) -> torch.Tensor:
        """(B,) bool: which rows of q belong to an uncond chunk."""
        flags = torch.tensor(self.cond_or_uncond, dtype=torch.bool)
        return flags.repeat_interleave(self.chunk_size)

    def cond_chunks(self) -> list[slice]:
        """The batch rows of each cond chunk, as slices: views of q (or of anything laid
        out by batch) that in-place edits write through, with no gather or scatter."""
        size = self.chunk_size
        return [slice(i * size, (i + 1) * size) for i, flag in enumerate(self.cond_or_uncond) if flag == 0]
