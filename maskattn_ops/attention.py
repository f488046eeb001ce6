"""Cross-attention with an additive bias over the keys.

The one attention op every mode of this extension runs at a patched site:
MaskAttn-SDXL (arXiv 2509.15357, Sec. 2) adds a binary gate to the logits before the
softmax (0 keeps token t at a location, a large negative suppresses it); swapping and
paint-with-words (Endo, Sec. 3.1 and 4) also act on the logits or the probabilities.

Two paths that must agree:
- ``biased_attention``: the fast path, PyTorch's fused ``scaled_dot_product_attention``
  with the bias as its float ``attn_mask``.
- ``reference_attention``: explicit logits and softmax in fp32, returning the
  probabilities too, for captures, losses and tests.

Conventions (lucidrains/x-transformers ``attend.py``): a large FINITE negative instead of
-inf, since -inf + -inf sums and all -inf rows turn into NaN (in fp16 above all); a row in
which every key is suppressed keeps the start token, as the gating paper implies.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

# Large enough that exp(NEG + any realistic logit) is 0 in fp32, small enough that the
# sum of two stays finite in fp16 (max 65504).
NEG = -1.0e4
# A logit bias at or below this counts as "suppressed" when looking for empty rows.
SUPPRESSED = NEG / 2
START_TOKEN = 0


def suppress(mask: torch.Tensor) -> torch.Tensor:
    """Boolean keep-mask (True keeps) -> additive bias: 0 where kept, NEG where not."""
    return torch.where(mask, 0.0, NEG).to(torch.float32)


def guard_bias(bias: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Checks that ``bias`` broadcasts to ``shape`` (B, heads, N, T), clamps it at NEG,
    and re-opens the start token in every row where all keys are suppressed."""
    if bias.dim() != 4:
        raise ValueError(f"attention bias must have 4 dims (B, heads, N, T), got shape {tuple(bias.shape)}")
    try:
        torch.broadcast_shapes(tuple(bias.shape), shape)
    except RuntimeError:
        raise ValueError(
            f"attention bias of shape {tuple(bias.shape)} does not broadcast to (B, heads, N, T) = {shape}"
        ) from None
    if bias.shape[-1] != shape[-1]:
        # A bias broadcast over keys would suppress every key at once: always a bug.
        raise ValueError(f"attention bias has {bias.shape[-1]} keys, the context has {shape[-1]}")
    bias = bias.clamp(min=NEG)
    empty_row = (bias <= SUPPRESSED).all(dim=-1)  # (B|1, heads|1, N|1)
    if empty_row.any():
        bias = bias.clone()
        bias[..., START_TOKEN] = torch.where(empty_row, 0.0, bias[..., START_TOKEN])
    return bias


def _split_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int):
    # (B, N, heads*d) -> (B, heads, N, d); the same for keys and values over T.
    if q.shape[-1] % heads:
        raise ValueError(f"query width {q.shape[-1]} is not divisible by {heads} heads")
    return (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fast path. q (B, N, heads*d), k and v (B, T, heads*d), bias broadcastable to
    (B, heads, N, T) or None; returns (B, N, heads*d) in q's dtype."""
    qh, kh, vh = _split_heads(q, k, v, heads)
    mask = None
    if bias is not None:
        shape = (q.shape[0], heads, q.shape[1], k.shape[1])
        mask = guard_bias(bias, shape).to(device=q.device, dtype=q.dtype)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)  # (B, heads, N, d)
    return rearrange(out, "b h n d -> b n (h d)")


def attention_logits(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled QK^T in fp32: (B, heads, N, T)."""
    qh, kh, _ = (t.float() for t in _split_heads(q, k, k, heads))
    return torch.einsum("bhnd,bhtd->bhnt", qh, kh) * qh.shape[-1] ** -0.5


Edit = Callable[[torch.Tensor], torch.Tensor]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        bias: torch.Tensor | None = None, edit: Edit | None = None,
                        logits_edit: Edit | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: logits and softmax in fp32. ``logits_edit`` may change the scaled
    QK^T before the bias is added (paint-with-words reads their max), ``edit`` the
    probabilities before they weight the values (masked-attention swapping); both get
    this function's own temporaries, so they may work in place. Returns (out (B, N,
    heads*d) in q's dtype, the probabilities used (B, heads, N, T) in fp32)."""
    logits = attention_logits(q, k, heads)                                   # (B, heads, N, T)
    if logits_edit is not None:
        logits = logits_edit(logits)
    if bias is not None:
        logits = logits + guard_bias(bias, tuple(logits.shape)).to(logits.device)
    probs = logits.softmax(dim=-1)
    if edit is not None:
        probs = edit(probs)
    vh = rearrange(v.float(), "b t (h d) -> b h t d", h=heads)
    out = torch.einsum("bhnt,bhtd->bhnd", probs, vh)
    return rearrange(out, "b h n d -> b n (h d)").to(q.dtype), probs
