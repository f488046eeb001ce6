"""One training step of the gate heads on a frozen model, as an nn.Module so that
DistributedDataParallel can wrap it (MaskAttn-SDXL, arXiv 2509.15357, Sec. 2.3: only
the heads train, with the diffusion loss, the backbone frozen).

The loss is the model's own: noise at a sigma drawn from its own discrete schedule,
the host's ``apply_model`` (which scales the input, runs the UNet with our gated
sites and returns the denoised latent for the model's prediction type), and the error
measured in the model's OUTPUT space: x0 error / c_out, where c_out is how much the
denoised latent moves per unit of model output. For an EPS model that is exactly the
epsilon MSE, for a v-prediction model the v MSE.
"""
from __future__ import annotations

import torch
from torch import nn

from ..maskattn_ops.gates import mask_supervision_loss
from ..maskattn_ops.gating import GateBias
from ..maskattn_ops.heads import HeadSet
from . import patching


def output_scale(model_sampling, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """c_out of denoised = c_skip * x + c_out * F, read off the model's own sampling
    class (denoised of x = 0, F = 1), broadcast like the latent."""
    return model_sampling.calculate_denoised(sigma, torch.ones_like(like), torch.zeros_like(like))


class HeadTrainingStep(nn.Module):
    """forward(latent, noise, sigma, context, y, targets) -> scalar loss, gradients only
    into heads. ``targets`` (per sample: [(phrase positions, mask)]) adds
    ``mask_weight`` x the mask supervision term (beyond the paper, see gates.py).

    The frozen ModelPatcher is held outside the module tree (DDP must neither broadcast
    nor track the backbone); ``heads`` is the only registered submodule.
    """

    def __init__(self, model, heads: HeadSet, threshold: float = 0.5, mode: str = "hard", mask_weight: float = 0.0):
        super().__init__()
        self.heads = heads
        self.mask_weight = mask_weight
        self._gates = GateBias(heads, threshold=threshold, mode=mode, differentiable=True)
        patched = patching.install_bias(model, self._gates, heads.site_names)
        self._frozen = {"base": patched.model, "options": patched.model_options["transformer_options"]}
        for p in patched.model.parameters():
            p.requires_grad_(False)

    def diffusion_loss(self, latent, noise, sigma, context, y, capture: bool = False):
        """-> (the diffusion loss, the gated sites' head logits [(B, T, h, w)] if ``capture``)."""
        base = self._frozen["base"]
        sampling = base.model_sampling
        x = sampling.noise_scaling(sigma, noise, latent)
        options = {**self._frozen["options"], "cond_or_uncond": [0], "sigmas": sigma}
        self._gates.capture = [] if capture else None
        try:
            denoised = base.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options=options)
            error = (denoised - latent) / output_scale(sampling, sigma, latent)
            return error.pow(2).mean(), [logits for _, logits in self._gates.capture or []]
        finally:
            self._gates.capture = None

    def forward(self, latent, noise, sigma, context, y, targets=None):
        supervise = self.mask_weight > 0 and targets is not None and any(targets)
        loss, site_logits = self.diffusion_loss(latent, noise, sigma, context, y, capture=supervise)
        if supervise:
            loss = loss + self.mask_weight * mask_supervision_loss(site_logits, targets)
        return loss
