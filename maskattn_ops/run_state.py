"""Per-sampling-run state: what one site call leaves for a later one within a run.

A fresh ``RunState`` is made for every sampling run (nodes/patching.py, an OUTER_SAMPLE
wrapper) and dropped when the run ends, however it ends; providers see it as
``SiteCall.run``. It is deliberately a plain object, not a dict: the host copies every
nested dict (and list) of transformer_options for each model evaluation
(comfy/patcher_extension.py, copy_nested_dicts / merge_nested_dicts), so state kept in a
dict would be a fresh copy per call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .guidance import GuidancePass


@dataclass(frozen=True)
class GateRecord:
    """A site's latest hard gates, for self-attention gating at the next evaluation."""
    cond_or_uncond: tuple[int, ...]   # the batch layout they were made for
    active: torch.Tensor              # (B, T, h, w) bool: token t kept at a location


@dataclass
class Captures:
    """What an inspection asked a run to record (Visualize Gates, the heads trainer's mask
    supervision); providers only append to it."""
    # (SiteCall, head logits (B, T, h, w)) of every gated call, in call order
    gate_logits: list[tuple[object, torch.Tensor]] = field(default_factory=list)
    # site name -> (Site, the cond rows' attention probabilities, mean over heads, (B, T, h, w))
    attention: dict[str, tuple[object, torch.Tensor]] = field(default_factory=dict)


@dataclass(eq=False)
class RunState:
    """Everything a sampling run carries between site calls."""
    # set for the length of one guidance forward (Region Mask Guidance)
    guidance_pass: "GuidancePass | None" = None
    # site name -> latest hard gates (Apply Masked Cross-Attention, self_attention_gating)
    gates: dict[str, GateRecord] = field(default_factory=dict)
    # present when the run was started to record maps (see Captures)
    captures: Captures | None = None
