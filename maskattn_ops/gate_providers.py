"""The learned-gate bias providers that Apply Masked Cross-Attention installs at each
gated site: the cross-attention gate (MaskAttn-SDXL, arXiv 2509.15357, Sec. 2.2) and the
optional self-attention gate (the paper's open question, our design)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from einops import rearrange

from .attention import suppress
from .gate_head import gate_bias, gated_probs, start_tokens
from .heads import HeadSet
from .run_state import GateRecord
from .sites import SiteCall


@dataclass
class GateBias:
    """Runs the site's head on the call's q and k and gates the call's attention. When
    the run records captures (``RunState.captures``), the head's logits go there.

    ``sigma_start`` >= sigma >= ``sigma_end`` is the active window (sigmas fall as
    sampling proceeds). With ``apply_to_uncond`` off, the uncond rows are not gated, so
    the negative prompt's attention stays as the frozen model has it.

    Sampling (``differentiable`` off): the gate is the logit bias of the fused attention,
    computed without autograd: a binary gate has no useful derivative with respect to the
    latent, and masked-attention guidance backpropagates to the latent through every
    site (through the straight-through path its gradient was scaled by 1e4).
    Training (on): the gate is applied as a renormalized product on the probabilities
    (``gated_probs``), which gives the same forward values and gradients that reach
    suppressed locations too.
    """
    heads: HeadSet           # shared by every clone; moved in place by to()
    threshold: float = 0.5
    mode: str = "hard"
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    apply_to_uncond: bool = True
    # Keep each site's latest hard gate in the run state, for SelfAttentionGate.
    share_gates: bool = False
    differentiable: bool = False

    def active(self, sigmas: torch.Tensor) -> bool:
        sigma = float(sigmas.max())
        return self.sigma_end <= sigma <= self.sigma_start

    def gate(self, call: SiteCall) -> tuple[torch.Tensor, torch.Tensor] | None:
        """-> (bias (B, 1, N, T), gate (B, T, h, w)) for this call, or None outside the window."""
        if not self.active(call.sigmas):
            return None
        head = self.heads.head(call.site.name)
        dtype = head.bias.dtype
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            logits = head(call.q.to(dtype), call.k.to(dtype), call.grid)      # (B, T, h, w)
            if call.run is not None and call.run.captures is not None:
                call.run.captures.gate_logits.append((call, logits))
            bias, gate = gate_bias(logits, self.threshold, self.mode)         # (B, 1, N, T), (B, T, h, w)
        active = gate.detach() >= self.threshold
        if not self.apply_to_uncond:
            uncond = call.is_uncond().to(bias.device)
            bias = bias.masked_fill(uncond[:, None, None, None], 0.0)
            gate = gate.masked_fill(uncond[:, None, None, None], 1.0)
            active = active | uncond[:, None, None, None]
        if self.share_gates and call.run is not None:
            call.run.gates[call.site.name] = GateRecord(call.cond_or_uncond, active)
        return bias, gate

    def __call__(self, call: SiteCall) -> torch.Tensor | None:
        if self.differentiable:
            return None                      # applied by probs_edit
        gated = self.gate(call)
        return None if gated is None else gated[0]

    def probs_edit(self, call: SiteCall):
        if not self.differentiable:
            return None
        gated = self.gate(call)
        if gated is None:
            return None
        gate = gated[1]
        return lambda probs: gated_probs(probs, gate)

    def to(self, device_or_dtype):
        """The host calls this with the load/offload device and with the model's dtype."""
        param = next(self.heads.parameters())
        current = param.dtype if isinstance(device_or_dtype, torch.dtype) else param.device
        if current != (device_or_dtype if isinstance(device_or_dtype, torch.dtype) else torch.device(device_or_dtype)):
            self.heads.to(device_or_dtype)
        return self


def self_attention_bias(active: torch.Tensor) -> torch.Tensor:
    """Hard gates (B, T, h, w) -> self-attention bias (B, 1, N, N).

    A query location may attend a key location that shares an active OBJECT token with
    it, or that no object token claims. Object tokens are the spatially selective ones:
    active somewhere but not everywhere (start tokens excluded); a token active
    everywhere (padding, style words) separates nothing. Every row keeps at least itself:
    a claimed location shares its own tokens, an unclaimed one is open to all.
    """
    gates = rearrange(active, "b t h w -> b (h w) t") & ~start_tokens(active.shape[1]).to(active.device)
    coverage = gates.float().mean(dim=1)                               # (B, T)
    objects = (coverage > 0) & (coverage < 1)
    claims = (gates & objects[:, None, :]).float()                     # (B, N, T)
    shares = torch.bmm(claims, claims.transpose(1, 2)) > 0             # (B, N, N)
    unclaimed = claims.sum(dim=-1) == 0                                # (B, N)
    return suppress(shares | unclaimed[:, None, :])[:, None]          # (B, 1, N, N)


@dataclass
class SelfAttentionGate:
    """Self-attention gating at a gated site, from the site's cross-attention gates.

    Self-attention runs before cross-attention in a transformer block, and the gate
    depends on the block's input after self-attention, so this evaluation's gate does
    not exist yet: the latest one does, from the previous evaluation with the same
    batch layout (the previous step), kept in the run state. The first evaluation of a
    run, and any with another layout, are left ungated.
    """
    source: GateBias

    def __call__(self, call: SiteCall) -> torch.Tensor | None:
        if call.run is None or not self.source.active(call.sigmas):
            return None
        stored = call.run.gates.get(call.site.name)
        if stored is None or stored.cond_or_uncond != call.cond_or_uncond or stored.active.shape[0] != call.batch:
            return None
        return self_attention_bias(stored.active)

    def to(self, device):
        self.source.to(device)
        return self
