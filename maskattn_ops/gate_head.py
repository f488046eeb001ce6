"""MaskAttn-SDXL gate heads (arXiv 2509.15357, Sec. 2.1-2.2).

At each gated cross-attention site a small head f_l predicts, for every context token t
and every location of the site's token grid, the probability that t may act there:
G^_{l,t} = sigmoid(f_l(X_l, e_t)). The gate is G^ binarized at a threshold with a
straight-through estimator (forward hard, backward the sigmoid's gradient) and turned
into an additive logit bias: 0 keeps token t at a location, NEG suppresses it (Eq. 1-4).
A soft mode uses log G^ as the bias instead (the paper's open question on soft gating).
The start token of each 77-token chunk is never suppressed, so no location is ever left
with nothing to attend.

The paper does not give the head's layers. This head reads what the attn2 replace
receives: the site's projected queries (a linear function of the normalized feature
map X_l, reshaped to its token grid) and projected keys (a linear function of the token
embeddings e_t), so it needs no extra hook and costs two small layers per site:
    features = conv3x3(SiLU(conv1x1(q)))   # (B, D, h, w): local context over the grid
    tokens   = linear(k)                    # (B, T, D)
    logit    = <features, tokens> / sqrt(D) + b
with D = ``embed_dim`` (32 by default) and b a learned scalar started at +1 with the last
conv zeroed, so a fresh head gives sigmoid(1) = 0.73 everywhere: above the 0.5 threshold,
so "keep everything", the frozen model's own attention. Not higher: the straight-through
gradient is the sigmoid's slope, 0.20 at +1 but 0.018 at +4, where heads barely learn.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from .attention import NEG

TEXT_CHUNK = 77            # CLIP's window: start token, 75 tokens, end/pad
KEEP_ALL_LOGIT = 1.0       # sigmoid(1) = 0.73: a fresh head keeps every token
GATE_MODES = ("hard", "soft")


class GateHead(nn.Module):
    """f_l for one site: (q (B, N, channels), k (B, T, key_dim), grid (h, w)) -> logits (B, T, h, w)."""

    def __init__(self, channels: int, key_dim: int, embed_dim: int = 32):
        super().__init__()
        self.channels, self.key_dim, self.embed_dim = channels, key_dim, embed_dim
        self.features = nn.Sequential(
            nn.Conv2d(channels, embed_dim, kernel_size=1),
            nn.SiLU(),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=3, padding=1),
        )
        self.tokens = nn.Linear(key_dim, embed_dim)
        self.bias = nn.Parameter(torch.tensor(KEEP_ALL_LOGIT))
        nn.init.zeros_(self.features[-1].weight)
        nn.init.zeros_(self.features[-1].bias)

    def forward(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        fmap = rearrange(q, "b (h w) c -> b c h w", h=h, w=w)
        features = self.features(fmap)                       # (B, D, h, w)
        tokens = self.tokens(k)                              # (B, T, D)
        logits = torch.einsum("bdhw,btd->bthw", features, tokens) / math.sqrt(self.embed_dim)
        return logits + self.bias                            # (B, T, h, w)


def straight_through(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Forward: (probs >= threshold) as 0/1; backward: the gradient of probs itself.

    Bracketed so the forward value is exactly 0 or 1: ``hard + probs - probs.detach()``
    rounds (1 + 0.98 - 0.98 != 1 in floating point).
    """
    hard = (probs >= threshold).to(probs.dtype)
    return hard + (probs - probs.detach())


def start_tokens(tokens: int) -> torch.Tensor:
    """(T,) bool: the start token of each CLIP chunk (or token 0 if T is not chunked)."""
    is_start = torch.zeros(tokens, dtype=torch.bool)
    is_start[:: TEXT_CHUNK if tokens % TEXT_CHUNK == 0 else tokens] = True
    return is_start


def gate_bias(logits: torch.Tensor, threshold: float = 0.5, mode: str = "hard") -> tuple[torch.Tensor, torch.Tensor]:
    """Head logits (B, T, h, w) -> (logit bias (B, 1, N, T) for biased_attention,
    gate (B, T, h, w) in [0, 1]: the hard gate, or the probability in soft mode).

    Hard: bias = (1 - gate) * NEG with gate from the straight-through estimator, so the
    forward pass is exactly 0 / NEG and training still gets the sigmoid's gradient.
    Soft: bias = log(sigmoid(logits)), clamped at NEG.
    """
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode must be one of {GATE_MODES}, got {mode!r}")
    logits = logits.float()
    is_start = start_tokens(logits.shape[1]).to(logits.device)[None, :, None, None]  # (1, T, 1, 1)
    if mode == "hard":
        gate = straight_through(torch.sigmoid(logits), threshold)
        gate = torch.where(is_start, 1.0, gate)
        bias = (1.0 - gate) * NEG
    else:
        gate = torch.where(is_start, 1.0, torch.sigmoid(logits))
        bias = torch.where(is_start, 0.0, nn.functional.logsigmoid(logits)).clamp(min=NEG)
    return rearrange(bias, "b t h w -> b 1 (h w) t"), gate


def gated_probs(probs: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The gate applied to ungated attention probabilities (B, heads, N, T) as a
    renormalized product: softmax(l + log G) = G * softmax(l) / sum_t(G * softmax(l)),
    the same probabilities ``gate_bias`` gives, for training.

    Why a second form: through the additive bias a suppressed token has probability 0,
    so its gate gets no gradient and a location once switched off can never come back
    (training then only ratchets gates off); and the bias (1 - G) * NEG scales every
    gate gradient by |NEG| = 1e4, swamping any other loss term under Adam. Through the
    product, dL/dG_t at a kept location is exactly dL/dlogit_t, and at a suppressed one
    it is what turning the token back on would do. Start tokens are kept, so no row sums
    to 0.
    """
    weighted = probs * rearrange(gate.to(probs.dtype), "b t h w -> b 1 (h w) t")
    return weighted / weighted.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(probs.dtype).tiny)
