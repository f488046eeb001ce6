"""Which model a set of gate heads was made for: a fingerprint of the weights the heads
read through at their sites, cheap to take from a model of any size and precision, and
compared with a tolerance that lets the same checkpoint in another dtype pass and
another checkpoint, a fine-tune or a LoRA at those sites fail."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

import torch

# The model fingerprint: at each gated site, FINGERPRINT_SAMPLES values of the attn2
# weights the heads read through (the site's q and k projections), at fixed positions.
FINGERPRINT_WEIGHTS = ("to_q", "to_k")
FINGERPRINT_SAMPLES = 16
FINGERPRINT_TOLERANCE = 1e-3       # relative L2 distance, at least; see ModelFingerprint


def weight_samples(weight: torch.Tensor) -> torch.Tensor:
    """FINGERPRINT_SAMPLES values of ``weight`` at fixed positions spread over it, in its
    own dtype: reads 16 values, never the whole tensor."""
    flat = weight.detach().reshape(-1)
    index = torch.linspace(0, flat.numel() - 1, FINGERPRINT_SAMPLES).round().long()
    return flat[index.to(flat.device)].cpu()


def _short(value: float) -> float:
    """An fp32 value in 9 significant digits (which read back to the same fp32 value), so
    that fingerprints compare equal after a round trip through JSON."""
    return float(f"{value:.9g}")


def _coarsest(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


@dataclass(frozen=True)
class ModelFingerprint:
    """Which model a set of heads was made for: samples of the weights the heads read
    (``weight_samples`` of "<site>.to_q" / "<site>.to_k"), as fp32 values, and the
    coarsest storage dtype they came in.

    Two fingerprints are the same model when their samples lie within a relative L2
    distance of the coarser dtype's epsilon (at least FINGERPRINT_TOLERANCE): storing a
    checkpoint in fp16, bf16 or fp8, or rounding it twice (bf16 heads, an fp16 model),
    moves each value by less than a rounding step; another checkpoint, a fine-tune or a
    LoRA at the gated sites moves them more (a fine-tune lighter than fp8's step passes
    as the same model in fp8).
    """
    dtype: torch.dtype
    values: dict          # "<site>.<weight>" -> tuple of FINGERPRINT_SAMPLES floats

    @classmethod
    def of(cls, weights: dict[str, torch.Tensor]) -> "ModelFingerprint":
        """From the weights themselves, keyed "<site>.to_q" / "<site>.to_k"."""
        if not weights:
            raise ValueError("no weights to fingerprint")
        if not all(w.dtype.is_floating_point for w in weights.values()):
            raise ValueError("the weights are not floating-point (a quantized model?)")
        return cls(_coarsest(w.dtype for w in weights.values()),
                   {key: tuple(_short(v) for v in weight_samples(w).float().tolist())
                    for key, w in sorted(weights.items())})

    def to_json(self) -> str:
        return json.dumps({"dtype": str(self.dtype).replace("torch.", ""), "samples": FINGERPRINT_SAMPLES,
                           "values": {k: list(vs) for k, vs in self.values.items()}})

    @classmethod
    def from_json(cls, raw: str) -> "ModelFingerprint":
        """Parses ``to_json``'s text; anything else is a ValueError."""
        try:
            data = json.loads(raw)
            dtype = getattr(torch, data["dtype"])
            values = {str(k): tuple(float(v) for v in vs) for k, vs in data["values"].items()}
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a model fingerprint: {e}") from None
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or not values or \
                any(len(vs) != FINGERPRINT_SAMPLES for vs in values.values()):
            raise ValueError("not a model fingerprint")
        return cls(dtype, values)

    def distance(self, other: "ModelFingerprint") -> float:
        """Relative L2 distance of the samples; inf when they sample different weights."""
        if set(self.values) != set(other.values):
            return float("inf")
        mine, theirs = (torch.tensor([f.values[k] for k in sorted(f.values)]) for f in (self, other))
        return float((mine - theirs).norm() / mine.norm().clamp(min=torch.finfo(torch.float32).tiny))

    def same_model(self, other: "ModelFingerprint") -> bool:
        tolerance = max(FINGERPRINT_TOLERANCE, torch.finfo(_coarsest((self.dtype, other.dtype))).eps)
        return self.distance(other) <= tolerance
