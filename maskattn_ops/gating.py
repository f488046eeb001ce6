"""The learned-gate bias provider: what Apply Masked Cross-Attention installs at each
gated site (MaskAttn-SDXL, arXiv 2509.15357, Sec. 2.2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .gates import gate_bias
from .heads import HeadSet
from .sites import SiteCall


@dataclass
class GateBias:
    """Runs the site's head on the call's q and k and returns the gate's logit bias.

    ``sigma_start`` >= sigma >= ``sigma_end`` is the active window (sigmas fall as
    sampling proceeds). With ``apply_to_uncond`` off, the uncond rows get no bias, so the
    negative prompt's attention stays as the frozen model has it.
    """
    heads: HeadSet           # shared by every clone; moved in place by to()
    threshold: float = 0.5
    mode: str = "hard"
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    apply_to_uncond: bool = True
    # Set by the trainer for the length of one step (mask supervision reads the logits).
    capture: list | None = None

    def active(self, sigmas: torch.Tensor) -> bool:
        sigma = float(sigmas.max())
        return self.sigma_end <= sigma <= self.sigma_start

    def __call__(self, call: SiteCall) -> torch.Tensor | None:
        if not self.active(call.sigmas):
            return None
        head = self.heads.head(call.site.name)
        dtype = head.bias.dtype
        logits = head(call.q.to(dtype), call.k.to(dtype), call.grid)       # (B, T, h, w)
        if self.capture is not None:
            self.capture.append(logits)
        bias, _ = gate_bias(logits, self.threshold, self.mode)             # (B, 1, N, T)
        if not self.apply_to_uncond:
            bias = bias.masked_fill(call.is_uncond().to(bias.device)[:, None, None, None], 0.0)
        return bias

    def to(self, device):
        self.heads.to(device)
        return self
