"""Training gate heads on a frozen model (MaskAttn-SDXL, arXiv 2509.15357, Sec. 2.3: only
the heads train, with the diffusion loss, the backbone frozen), with the optional mask
supervision term (beyond the paper). One loop for Train MaskAttn Heads and
scripts/train_heads.py (which adds processes, COCO data and its own logging).

The loss is the model's own: noise at a sigma drawn from its own discrete schedule,
the host's ``apply_model`` (which scales the input, runs the UNet with our gated
sites and returns the denoised latent for the model's prediction type), and the error
measured in the model's OUTPUT space: x0 error / c_out, where c_out is how much the
denoised latent moves per unit of model output. For an EPS model that is exactly the
epsilon MSE, for a v-prediction model the v MSE.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import comfy.model_management
import torch
from torch import nn

from ..maskattn_ops.gate_providers import GateBias
from ..maskattn_ops.heads import HeadSet
from ..maskattn_ops.mask_supervision import mask_supervision_loss
from ..maskattn_ops.run_state import Captures, RunState
from ..maskattn_ops.sites import parse_selection, select_sites
from . import patching
from .model_family import family_of
from .training_data import Encoder, Sample, epoch_order, fixed_batch_loss, noise_and_sigma


def output_scale(model_sampling, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """c_out of denoised = c_skip * x + c_out * F, read off the model's own sampling
    class (denoised of x = 0, F = 1), broadcast like the latent."""
    return model_sampling.calculate_denoised(sigma, torch.ones_like(like), torch.zeros_like(like))


class HeadTrainingStep(nn.Module):
    """forward(latent, noise, sigma, context, y, targets) -> scalar loss, gradients only
    into heads. ``targets`` (per sample: [(phrase positions, mask)]) adds
    ``mask_weight`` x the mask supervision term. ``recompute``: the backbone keeps only
    its parts' inputs for the backward and recomputes their insides (gradient
    checkpointing, as the guidance pass does), active once ``load``-ed.

    The frozen model is held outside the module tree (DDP must neither broadcast nor
    track the backbone); ``heads`` is the only registered submodule.
    """

    def __init__(self, model, heads: HeadSet, threshold: float = 0.5, mode: str = "hard",
                 mask_weight: float = 0.0, recompute: bool = False):
        super().__init__()
        self.heads = heads
        self.mask_weight = mask_weight
        gates = GateBias(heads, threshold=threshold, mode=mode, differentiable=True)
        patched = patching.install_bias(model, gates, heads.site_names)
        if recompute:
            patching.with_recomputed_activations(patched)
        self._frozen = patching.FrozenModel(patched)

    def load(self) -> None:
        """The backbone loaded (on the GPU where there is one) and ready for backward."""
        self._frozen.load()

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


@dataclass(frozen=True)
class TrainingSettings:
    """What a training run is: the same settings, data and seed give the same heads."""
    steps: int = 1000               # optimizer steps in all (also when resumed)
    batch_size: int = 4             # per process
    lr: float = 1e-3                # AdamW, no weight decay
    embed_dim: int = 32             # width D of each head's feature and token embeddings
    threshold: float = 0.5          # the paper's gate threshold
    mode: str = "hard"              # hard: binary gates, straight-through (the paper); soft: log-probability bias
    sites: str = "mid-resolution"   # "mid-resolution", "all", or site names comma-separated
    resolution: int = 1024          # pairs are cropped to this square (pixels)
    seed: int = 0                   # the heads' init, the data order, noise and sigmas
    mask_weight: float = 0.0        # the mask supervision term where masks are given (0: the paper)
    recompute: bool = False         # gradient checkpointing of the backbone
    cache_latents: bool = False     # keep each image's latent after its first encode

    # settings a resumed run must share with the run it continues (not steps: its point)
    RESUME_FIXED = ("batch_size", "lr", "embed_dim", "threshold", "mode", "sites", "resolution", "seed", "mask_weight")

    def site_choice(self) -> str | list[str]:
        return parse_selection(self.sites)


class ResumeError(ValueError):
    """A resume file that does not continue this run; the message names the file and why."""


class HeadTrainer:
    """Heads for ``model`` trained on ``pairs``: ``run`` takes optimizer steps until
    ``settings.steps``; ``resume_from`` / ``save_resume`` continue a run exactly (noise,
    sigmas and batches come from (seed, step, sample index)). ``rank`` / ``world`` /
    ``wrap`` (e.g. DistributedDataParallel) serve the CLI's processes."""

    def __init__(self, model, clip, vae, pairs: list[Sample], settings: TrainingSettings,
                 rank: int = 0, world: int = 1, wrap: Callable[[nn.Module], nn.Module] = lambda m: m):
        self.settings, self.pairs, self.rank, self.world = settings, pairs, rank, world
        self.batches_per_epoch = len(pairs) // world // settings.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(pairs)} pairs are fewer than one batch ({world} x {settings.batch_size})")
        self.device = comfy.model_management.get_torch_device()
        sites = select_sites(patching.discover_sites(model), settings.site_choice())
        # the heads' init from the seed alone, whatever the loaders drew before
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            heads = HeadSet.for_sites(sites, embed_dim=settings.embed_dim, threshold=settings.threshold,
                                      base_family=family_of(model))
        self.heads = heads.to(self.device)
        self.step_module = HeadTrainingStep(model, self.heads, threshold=settings.threshold, mode=settings.mode,
                                            mask_weight=settings.mask_weight, recompute=settings.recompute)
        self.model = model
        self.step_module.load()
        self.trainer = wrap(self.step_module)
        self.optimizer = torch.optim.AdamW(self.heads.parameters(), lr=settings.lr, weight_decay=0.0)
        self.encode = Encoder(model, clip, vae, settings.resolution, cache_latents=settings.cache_latents)
        self.sampling = model.get_model_object("model_sampling")
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.step = 0
        self.losses: list[float] = []     # per optimizer step, of this process, from step 0
        self.seconds = 0.0                # spent in steps by this run (not a resumed one's)

    def resume_from(self, path: Path) -> bool:
        """Continues the run saved at ``path``; False when there is none. A file of another
        run (other settings, another model's sites) is refused naming what differs."""
        if not Path(path).is_file():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:   # a truncated or foreign file: say which
            raise ResumeError(f"{path}: not a resume file of the heads trainer ({type(e).__name__}: {e})") from None
        saved = state.get("settings", {})
        differ = [f"{k}: {saved[k]!r} there, {getattr(self.settings, k)!r} now"
                  for k in TrainingSettings.RESUME_FIXED if k in saved and saved[k] != getattr(self.settings, k)]
        if differ:
            raise ResumeError(f"{path} was trained with other settings ({'; '.join(differ)}): "
                              "set them back, or train anew without resuming")
        try:
            self.heads.load_state_dict(state["heads"])
        except (KeyError, RuntimeError) as e:
            raise ResumeError(f"{path}: its heads do not fit this model's sites ({str(e).splitlines()[0]})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.losses = list(state.get("losses", []))[: self.step]
        return True

    def save_resume(self, path: Path) -> None:
        """Written whole, then moved in place: an interrupted write leaves the last file."""
        tmp = Path(str(path) + ".tmp")
        torch.save({"heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "losses": self.losses, "settings": dataclasses.asdict(self.settings)}, tmp)
        tmp.replace(path)

    def fixed_batch_loss(self, count: int) -> float:
        return fixed_batch_loss(self.step_module, self.encode, self.pairs, self.sampling,
                                self.settings.seed, self.device, count)

    def run(self, after_step: Callable[["HeadTrainer"], None] = lambda trainer: None) -> None:
        """Optimizer steps until ``settings.steps``; ``after_step`` after each (progress,
        logging, the resume file, interruption: it may raise)."""
        s = self.settings
        while self.step < s.steps:
            started = time.monotonic()
            epoch, b = divmod(self.step, self.batches_per_epoch)
            indices = epoch_order(len(self.pairs), epoch, s.seed, self.rank, self.world, s.batch_size)[b]
            latent, context, y, targets = self.encode([self.pairs[i] for i in indices], self.device)
            noise, sigma = noise_and_sigma(self.sampling, latent, s.seed, self.step, indices)
            with self.autocast:
                loss = self.trainer(latent, noise, sigma, context, y, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            self.losses.append(loss.item())
            self.seconds += time.monotonic() - started
            after_step(self)

    def finished_heads(self, base: str, eval_losses=(None, None)) -> HeadSet:
        """The heads with what made them: the settings, the final loss and the fingerprint
        of the model they were trained on (Apply Masked Cross-Attention warns on another)."""
        s = self.settings
        self.heads.training_summary = {
            "steps": self.step, "global_batch": s.batch_size * self.world, "lr": s.lr, "seed": s.seed,
            "resolution": s.resolution, "pairs": len(self.pairs), "sites": s.sites, "mode": s.mode,
            "mask_supervision": s.mask_weight if any(p.masks for p in self.pairs) else 0.0,
            "base": base, "final_loss": self.losses[-1] if self.losses else None,
            "fixed_batch_loss": list(eval_losses), "method": "diffusion loss, frozen backbone (arXiv 2509.15357)",
        }
        self.heads.fingerprint = patching.model_fingerprint(self.model, self.heads.site_names)
        return self.heads
