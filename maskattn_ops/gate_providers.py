"""The learned-gate bias providers that Apply Masked Cross-Attention installs at each
gated site: the cross-attention gate (MaskAttn-SDXL, arXiv 2509.15357, Sec. 2.2) and the
optional self-attention gate (the paper's open question, our design)."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from einops import rearrange

from .attention import suppress
from .gate_head import gate_bias, gated_probs, start_tokens
from .heads import HeadSet
from .run_state import GateRecord
from .sites import SiteCall

# What a site can compute in; fp8 (storage only) weights compute in their manual-cast dtype.
COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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

    Precision: ``heads`` are the master weights, shared by every clone and by every model
    the same HEADS went to, and never converted by the host (``to`` ignores dtypes). A
    sampling call computes in its own compute dtype (that of q: the model's, or its
    manual-cast dtype for fp8 weights) with a cast copy of the heads, made once per
    (device, dtype) and remade when the master weights change; so a bf16 model and an
    fp32 model sharing heads each get what they would get alone. Training computes with
    the master weights themselves, so that gradients reach them.
    """
    heads: HeadSet           # master weights, shared by every clone; never converted
    threshold: float = 0.5
    mode: str = "hard"
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    apply_to_uncond: bool = True
    # Keep each site's latest hard gate in the run state, for SelfAttentionGate.
    share_gates: bool = False
    differentiable: bool = False
    # (device, dtype) -> (the master's parameter versions when copied, the cast copy)
    _copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def active(self, sigmas: torch.Tensor) -> bool:
        sigma = float(sigmas.max())
        return self.sigma_end <= sigma <= self.sigma_start

    def gate(self, call: SiteCall) -> tuple[torch.Tensor, torch.Tensor] | None:
        """-> (bias (B, 1, N, T), gate (B, T, h, w)) for this call, or None outside the window."""
        if not self.active(call.sigmas):
            return None
        dtype = call.q.dtype if call.q.dtype in COMPUTE_DTYPES else torch.float32
        head = self.heads_for(call.q.device, dtype).head(call.site.name)
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

    def heads_for(self, device: torch.device, dtype: torch.dtype) -> HeadSet:
        """The heads to compute with on ``device`` in ``dtype``: the master weights when
        training, or when they already are there in that dtype; else the cast copy."""
        master = next(self.heads.parameters())
        if self.differentiable or (master.device == device and master.dtype == dtype):
            return self.heads
        # Inference tensors (heads a loader node made) keep no version: nothing trains them.
        versions = tuple(0 if p.is_inference() else p._version for p in self.heads.parameters())
        cached = self._copies.get((device, dtype))
        if cached is None or cached[0] != versions:
            with torch.no_grad():
                cast = copy.deepcopy(self.heads).to(device=device, dtype=dtype)
            self._copies[(device, dtype)] = cached = (versions, cast)
        return cached[1]

    def to(self, device_or_dtype):
        """The host calls this with the load/offload device and with the model's dtype.
        A dtype is ignored (the master weights stay as they are, see above); a device
        drops the cast copies held elsewhere (an offload frees the GPU's)."""
        if not isinstance(device_or_dtype, torch.dtype):
            device = torch.device(device_or_dtype)
            self._copies = {key: value for key, value in self._copies.items() if key[0] == device}
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
