"""Which UNet family a MODEL belongs to, read from the host's own model config.

Heads record the family they were trained on (maskattn_ops/heads.py) so that heads for
SDXL are refused on an SD1.x model with both named, before any width is compared. The
family is the host's supported_models class the checkpoint was detected as (or the one
it derives from: SSD-1B, Vega and KOALA are SDXL; the SD2.x unCLIP models are SD2.x).
"""
from __future__ import annotations

import comfy.supported_models

# None of these derives from another, so a config class matches at most one of them.
_HOST_FAMILIES = (
    (comfy.supported_models.SDXL, "sdxl"),
    (comfy.supported_models.SDXLRefiner, "sdxl-refiner"),
    (comfy.supported_models.SD20, "sd2"),
    (comfy.supported_models.SD15, "sd1"),
)


def family_of(model) -> str:
    """"sdxl", "sd1", "sd2", "sdxl-refiner", or the host's config class name in lower case
    for any other UNet model (heads trained on it record that)."""
    config = model.model.model_config
    for host_class, family in _HOST_FAMILIES:
        if isinstance(config, host_class):
            return family
    return type(config).__name__.lower()
