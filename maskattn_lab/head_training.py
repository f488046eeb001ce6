"""One training step of the gate heads on a frozen model, as an nn.Module so that
DistributedDataParallel can wrap it (MaskAttn-SDXL, arXiv 2509.15357, Sec. 2.3: only
the heads train, with the diffusion loss, the backbone frozen), and the optional mask
supervision term (beyond the paper).

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

from . import host

host.import_host()
from comfyui_maskattn.maskattn_ops.gate_providers import GateBias  # noqa: E402
from comfyui_maskattn.maskattn_ops.heads import HeadSet  # noqa: E402
from comfyui_maskattn.maskattn_ops.run_state import Captures, RunState  # noqa: E402
from comfyui_maskattn.nodes import patching  # noqa: E402

from .mask_supervision import mask_supervision_loss  # noqa: E402

def output_scale(model_sampling, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """c_out of denoised = c_skip * x + c_out * F, read off the model's own sampling
    class (denoised of x = 0, F = 1), broadcast like the latent."""
    return model_sampling.calculate_denoised(sigma, torch.ones_like(like), torch.zeros_like(like))


class HeadTrainingStep(nn.Module):
    """forward(latent, noise, sigma, context, y, targets) -> scalar loss, gradients only
    into heads. ``targets`` (per sample: [(phrase positions, mask)]) adds
    ``mask_weight`` x the mask supervision term.

    The frozen model is held outside the module tree (DDP must neither broadcast nor
    track the backbone); ``heads`` is the only registered submodule.
    """

    def __init__(self, model, heads: HeadSet, threshold: float = 0.5, mode: str = "hard", mask_weight: float = 0.0):
        super().__init__()
        self.heads = heads
        self.mask_weight = mask_weight
        gates = GateBias(heads, threshold=threshold, mode=mode, differentiable=True)
        self._frozen = patching.FrozenModel(patching.install_bias(model, gates, heads.site_names))

    def diffusion_loss(self, latent, noise, sigma, context, y, capture: bool = False):
        """-> (the diffusion loss, the gated sites' head logits [(B, T, h, w)] if ``capture``)."""
        sampling = self._frozen.model_sampling
        x = sampling.noise_scaling(sigma, noise, latent)
        run = RunState(captures=Captures() if capture else None)
        denoised = self._frozen(x, sigma, context, y, run)
        error = (denoised - latent) / output_scale(sampling, sigma, latent)
        logits = [logits for _, logits in run.captures.gate_logits] if capture else []
        return error.pow(2).mean(), logits

    def forward(self, latent, noise, sigma, context, y, targets=None):
        supervise = self.mask_weight > 0 and targets is not None and any(targets)
        loss, site_logits = self.diffusion_loss(latent, noise, sigma, context, y, capture=supervise)
        if supervise:
            loss = loss + self.mask_weight * mask_supervision_loss(site_logits, targets)
        return loss
