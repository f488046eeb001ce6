"""The one module of this extension that touches ModelPatcher.

Everything our nodes do to a model goes through here: find the UNet's cross-attention
sites, clone the patcher, and install one attn2 replace per chosen site
(``transformer_options["patches_replace"]["attn2"][(block, id, block_index)]``, see
comfy/ldm/modules/attention.py, BasicTransformerBlock.forward). The replace receives the
PROJECTED q, k, v and returns the attention output before ``to_out``.

A site's replace (``SiteAttention``) asks each of its providers for an additive logit
bias (and, for swapping, a probability edit) for this call and runs
``maskattn_ops.attention``. Stacked nodes of ours add providers to the same object; a
replace from another pack at the same site is chained, not dropped: one installed
before ours at install time, one installed after ours at each run
(``restore_overwritten_sites``); IPAdapter-style packs ``add()`` their term to ours.
Self-attention (attn1) replaces work the same way.

Also here: the per-sampling-run state (an OUTER_SAMPLE wrapper), masked-attention
guidance's hold on the sampler's latent (SAMPLER_SAMPLE and CALC_COND_BATCH wrappers and
the one scoped, restored swap of a host name, see below), the demo model's size warning,
and the queries that other
modules need instead of reading ``model_options`` themselves (``providers``,
``map_providers``, ``with_captures``, ``without_latent_guidance``, ``latent_guidance``,
``FrozenModel``, ``model_fingerprint``).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import re
from typing import Callable, Iterable, Protocol

import torch
import torch.utils.checkpoint

import comfy.k_diffusion.sampling as k_diffusion_sampling
import comfy.ldm.modules.attention as host_attention
import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import comfy_execution.utils
import server
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample
from comfy.model_patcher import ModelPatcher

from ..maskattn_ops.attention import biased_attention, reference_attention
from ..maskattn_ops.guidance import GuidanceForwardDone, GuidancePass
from ..maskattn_ops.fingerprint import FINGERPRINT_WEIGHTS, ModelFingerprint
from ..maskattn_ops.run_state import Captures, RunState
from ..maskattn_ops.sites import Site, SiteCall, select_sites, token_grid

log = logging.getLogger(__name__)

# transformer_options keys: the per-sampling-run state (see with_run_state), a request to
# record captures in it (see with_captures), Region Mask Guidance's latent step
RUN_STATE_KEY = "maskattn_run"
CAPTURES_KEY = "maskattn_captures"
GUIDANCE_KEY = "maskattn_guidance"
# our replaces by (layer, site key), beside patches_replace: a pack that installs its own
# replace at one of our keys AFTER us overwrites ours there, and each run puts ours back
# in front of it (see restore_overwritten_sites)
SITES_KEY = "maskattn_sites"
ATTENTION_LAYERS = ("attn1", "attn2")   # self-attention, cross-attention


class BiasProvider(Protocol):
    """A patch's contribution at a site: an additive logit bias broadcastable to
    (B, heads, N, T), or None to leave this call alone. May also define
    ``logits_edit(call)`` and ``probs_edit(call)``, each -> (tensor -> tensor) | None: for
    calls where one returns an edit, the site runs the explicit-softmax path and lets the
    edit change the scaled QK^T (paint-with-words) or the probabilities (masked-attention
    swapping); and ``to(device)`` and ``models()``."""

    def __call__(self, call: SiteCall) -> torch.Tensor | None: ...


def site_call(site: Site, q: torch.Tensor, k: torch.Tensor, extra_options: dict) -> SiteCall:
    """Reads a site call's layout from the host's extra_options."""
    cond_or_uncond = tuple(extra_options.get("cond_or_uncond", (0,)))
    if q.shape[0] % len(cond_or_uncond):
        raise RuntimeError(f"MaskAttn: batch {q.shape[0]} at site {site.name} does not split into "
                           f"{len(cond_or_uncond)} cond/uncond chunks")
    sigmas = extra_options.get("sigmas")
    if sigmas is None:
        sigmas = torch.zeros(q.shape[0] // len(cond_or_uncond))
    return SiteCall(
        site=site,
        # The host reports the site's feature map as activations_shape (B, C, h, w), set
        # by SpatialTransformer.forward: exact for non-square latents, unlike sqrt(N).
        grid=token_grid(extra_options["activations_shape"], q.shape[1]),
        batch=q.shape[0],
        tokens=k.shape[1],
        cond_or_uncond=cond_or_uncond,
        sigmas=sigmas,
        q=q,
        k=k,
        run=extra_options.get(RUN_STATE_KEY),
    )


@functools.lru_cache(maxsize=16)
def _takes_transformer_options(attention: Callable) -> bool:
    """Hosts since 0.3.60 pass transformer_options to their attention (its override hook)."""
    try:
        params = inspect.signature(attention).parameters
    except (TypeError, ValueError):
        return False
    return "transformer_options" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def host_attention_op(q, k, v, extra_options) -> torch.Tensor:
    """The attention the host itself would have run here (its chosen backend and, on
    hosts that have it, any ``optimized_attention_override``), read at call time since
    the host picks it late."""
    attention = host_attention.optimized_attention
    options = {"transformer_options": extra_options} if _takes_transformer_options(attention) else {}
    return attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"), **options)


class SiteAttention:
    """The attention replace (attn2, or attn1 for self-attention) at one site: plain
    attention plus the providers' biases.

    ``chained`` is a replace that another pack had installed at this site (e.g.
    IPAdapter's, which is plain attention plus its own terms). It still runs, and the
    change our bias makes to plain attention is added to its output, so both apply.
    """

    def __init__(self, site: Site, providers: Iterable[BiasProvider] = (), chained: Callable | None = None,
                 addons: Iterable[tuple[Callable, dict]] = ()):
        self.site = site
        self.providers = list(providers)
        self.chained = chained
        self.addons = list(addons)

    def with_provider(self, provider: BiasProvider) -> "SiteAttention":
        """A new replace with one more provider (the installed one stays as it was)."""
        return SiteAttention(self.site, [*self.providers, provider], self.chained, self.addons)

    def in_front_of(self, other: Callable) -> "SiteAttention":
        """This replace with ``other`` (a pack's replace that overwrote it) chained."""
        return SiteAttention(self.site, self.providers, other, self.addons)

    def add(self, callback: Callable, **kwargs) -> None:
        """The Attn2Replace protocol of IPAdapter_plus, PuLID and InstantID: a pack that
        finds a replace at its key calls ``add`` instead of installing its own. Its
        callback's term is added to our output within its sigma window, as their own
        replace would add it to plain attention's."""
        self.addons.append((callback, kwargs))

    def _add_addons(self, out, q, k, v, extra_options):
        if not self.addons:
            return out
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else float("inf")
        for callback, kwargs in self.addons:
            if kwargs.get("sigma_start", float("inf")) >= sigma >= kwargs.get("sigma_end", 0.0):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out

    def bias(self, call: SiteCall) -> torch.Tensor | None:
        biases = [b for b in (p(call) for p in self.providers) if b is not None]
        if not biases:
            return None
        return sum(biases[1:], biases[0])

    def edit(self, call: SiteCall, kind: str):
        """The providers' edits of one kind ("logits_edit", "probs_edit") for this call,
        composed, or None."""
        edits = [e for e in (getattr(p, kind)(call) for p in self.providers if hasattr(p, kind)) if e is not None]
        if not edits:
            return None

        def run(tensor):
            for edit in edits:
                tensor = edit(tensor)
            return tensor
        return run

    def attention(self, q, k, v, heads: int, bias, edits):
        if edits == (None, None):
            return biased_attention(q, k, v, heads, bias)
        logits_edit, probs_edit = edits
        return reference_attention(q, k, v, heads, bias, probs_edit, logits_edit)[0]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        call = site_call(self.site, q, k, extra_options)
        bias, edits = self.bias(call), (self.edit(call, "logits_edit"), self.edit(call, "probs_edit"))
        heads = extra_options["n_heads"]
        changed = bias is not None or edits != (None, None)
        if self.chained is None:
            out = self.attention(q, k, v, heads, bias, edits) if changed else host_attention_op(q, k, v, extra_options)
        else:
            out = self.chained(q, k, v, extra_options)
            if changed:
                out = out + (self.attention(q, k, v, heads, bias, edits) - biased_attention(q, k, v, heads))
        return self._add_addons(out, q, k, v, extra_options)

    # The host deep-copies model_options on every clone(): share the providers (they
    # may hold weights) and copy only the lists, so clones stay independent and cheap.
    def __deepcopy__(self, memo):
        return SiteAttention(self.site, self.providers, copy.deepcopy(self.chained, memo), self.addons)

    def to(self, device):
        """Called by the host when the model moves; providers move in place."""
        for p in self.providers:
            if hasattr(p, "to"):
                p.to(device)
        if hasattr(self.chained, "to"):
            self.chained.to(device)         # moved in place, as the host moves its own patches
        return self

    def models(self) -> list:
        """ModelPatchers that the providers hold, for the host to load with the UNet."""
        return [m for p in [*self.providers, self.chained] if hasattr(p, "models") for m in p.models()]


def _is_resampler(module: torch.nn.Module, kind: type) -> bool:
    # SDXL resamples with Downsample/Upsample modules; resblock_updown UNets do it
    # inside a ResBlock (h_upd).
    return isinstance(module, kind) or (getattr(module, "updown", False) and isinstance(module.h_upd, kind))


def discover_sites(model: ModelPatcher) -> list[Site]:
    """Every cross-attention site of the model's UNet, in execution order, with its
    token-grid downsampling read from the module tree (not assumed from a config)."""
    unet = model.get_model_object("diffusion_model")
    if not hasattr(unet, "input_blocks"):
        raise TypeError(f"MaskAttn supports UNet models (SDXL, SD1.x, SD2.x families); this model's "
                        f"diffusion model is {type(unet).__name__} (DiT models such as Flux and SD3: not yet, "
                        f"docs/dit.md)")
    sites: list[Site] = []
    factor = 1

    def visit(block_name: str, block_id: int, block: torch.nn.Module) -> None:
        nonlocal factor
        for module in block:
            if isinstance(module, host_attention.SpatialTransformer):
                for index, tb in enumerate(module.transformer_blocks):
                    if tb.attn2 is None:
                        continue
                    sites.append(Site(
                        key=(block_name, block_id, index), downsample=factor,
                        channels=tb.attn2.to_q.in_features, heads=tb.attn2.heads,
                        dim_head=tb.attn2.dim_head, context_dim=tb.attn2.to_k.in_features))
            elif _is_resampler(module, Downsample):
                factor *= 2
            elif _is_resampler(module, Upsample):
                factor //= 2

    for block_id, block in enumerate(unet.input_blocks):
        visit("input", block_id, block)
    if unet.middle_block is not None:
        visit("middle", 0, unet.middle_block)
    for block_id, block in enumerate(unet.output_blocks):
        visit("output", block_id, block)
    return sites


def sigma_window(model: ModelPatcher, start_percent: float, end_percent: float, node: str) -> dict:
    """A node's start/end percent of sampling as the providers' sigma bounds (sigmas fall
    as sampling proceeds), via the model's own schedule."""
    if start_percent > end_percent:
        raise ValueError(f"{node}: start_percent {start_percent} is after end_percent {end_percent}")
    sampling = model.get_model_object("model_sampling")
    return {"sigma_start": sampling.percent_to_sigma(start_percent), "sigma_end": sampling.percent_to_sigma(end_percent)}


def install_bias(model: ModelPatcher, provider: BiasProvider, sites: str | Iterable[str] = "mid-resolution",
                 layer: str = "attn2") -> ModelPatcher:
    """A clone of ``model`` whose chosen sites add ``provider``'s bias to their
    cross-attention (``layer`` "attn2") or self-attention ("attn1"); ``model`` itself is
    left untouched. ``sites``: "mid-resolution", "all", or site names ("input.4.0")."""
    if layer not in ATTENTION_LAYERS:
        raise ValueError(f"layer must be one of {ATTENTION_LAYERS}, got {layer!r}")
    patched = with_run_state(model.clone())
    options = patched.model_options["transformer_options"]
    replaces = options.get("patches_replace", {}).get(layer, {})
    ours = dict(options.get(SITES_KEY, {}))          # a new dict: clones may share the old one
    for site in select_sites(discover_sites(model), sites):
        # The host tries (block, id, index) before (block, id): chain whichever it would run.
        existing = replaces.get(site.key, replaces.get(site.key[:2]))
        if isinstance(existing, SiteAttention) and existing.site == site:
            op = existing.with_provider(provider)
        else:
            op = SiteAttention(site, [provider], chained=existing)
        patched.set_model_patch_replace(op, layer, *site.key)
        ours[(layer, site.key)] = op
    # (not into `options`: set_model_patch_replace may have put a new dict in its place)
    patched.model_options["transformer_options"][SITES_KEY] = ours
    return patched


def restore_overwritten_sites(transformer_options: dict) -> list[str]:
    """Puts our replaces back in front of what other packs installed at our sites AFTER
    us, in this run's options (a copy): a replace at our (block, id, index) key overwrote
    ours, and one at the (block, id) key never runs while ours holds the longer key (the
    host prefers it). Theirs is chained behind ours, so both act, as when they came first.
    Edits ``transformer_options`` in place: pass the run's own copy (the host's
    create_model_options_clone copies every nested dict). Returns the sites changed."""
    restored = []
    replaces = transformer_options.get("patches_replace", {})
    for (layer, key), ours in transformer_options.get(SITES_KEY, {}).items():
        at_layer = replaces.get(layer, {})
        current, short = at_layer.get(key), at_layer.get(key[:2])
        if current is not None and not isinstance(current, SiteAttention):
            theirs = current            # it overwrote ours at our key
        elif current is ours and short is not None and ours.chained is None:
            theirs = short              # at the short key, after ours (before ours, we chained it)
        else:
            continue
        at_layer[key] = ours.in_front_of(theirs)
        restored.append(f"{layer} {ours.site.name}")
    return restored


def _run_state_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE: a fresh RunState for this sampling run (providers pass data from one
    site call to a later one through it), dropped when the run ends, however it ends; and
    our replaces back in front of any another pack installed after them."""
    guider = executor.class_obj
    original = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    options = guider.model_options["transformer_options"]
    options[RUN_STATE_KEY] = RunState(captures=options.get(CAPTURES_KEY))
    restored = restore_overwritten_sites(options)
    if restored:
        log.info("MaskAttn: another pack's attention replace came after ours at %d site(s) (%s, ...); "
                 "ours runs in front of it, both act", len(restored), restored[0])
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original


def with_run_state(model: ModelPatcher) -> ModelPatcher:
    """Gives ``model`` (a clone of ours) a per-run state, visible to providers as
    ``SiteCall.run``. Idempotent."""
    if not model.get_wrappers(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, RUN_STATE_KEY):
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, RUN_STATE_KEY, _run_state_wrapper)
    return model


# --- The demo model's trained size --------------------------------------------------------

LATENT_FACTOR = 8     # image pixels per latent cell (SDXL's VAE, and the demo models' TAESD)
TRAINED_SIZE_KEY = "maskattn_trained_size"


def tell_user(text: str) -> None:
    """Logs ``text`` and, when a server runs and a node is executing, shows it on that
    node in the UI (the host's progress-text message; the sampler's node while sampling)."""
    log.warning(text)
    prompt_server = getattr(server.PromptServer, "instance", None)
    context = comfy_execution.utils.get_executing_context()
    if prompt_server is not None and context is not None:
        prompt_server.send_progress_text(text, context.node_id)


def _trained_size_wrapper(trained: tuple[int, int], model_name: str, executor, noise, latent_image, *args, **kwargs):
    """OUTER_SAMPLE: says when the latent is not the size the model was trained at
    (a model that small draws noise elsewhere, and a large latent is slow on it)."""
    height, width = (int(n) * LATENT_FACTOR for n in latent_image.shape[-2:])
    if (height, width) != trained:
        tell_user(f"{model_name} was trained at {trained[1]}x{trained[0]} px and is sampling at {width}x{height} px: "
                  f"expect shapeless colour, and about {height * width / (trained[0] * trained[1]):.0f}x the time "
                  f"per step. Set the latent to {trained[1]}x{trained[0]} (Empty Latent Image).")
    return executor(noise, latent_image, *args, **kwargs)


def with_trained_size(model: ModelPatcher, height: int, width: int, model_name: str) -> ModelPatcher:
    """A clone of ``model`` that warns (log and UI) when sampled at another image size."""
    patched = model.clone()
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, TRAINED_SIZE_KEY,
                                 functools.partial(_trained_size_wrapper, (height, width), model_name))
    return patched


# --- Masked-attention guidance: moving the sampler's own latent (Endo Eq. 3) ------------
#
# The sampler owns its latent x. On a guided step's FIRST model evaluation we compute
# dL/dx from a cond-only forward and shift x in place before the step uses it, which is
# "z_t <- z_t - alpha dL/dz_t, then step". How we get there (see ../shared/DESIGN.md):
# - a SAMPLER_SAMPLE wrapper hands the sampler a proxy of its model function (it still
#   sees the inpainting blend, so with a denoise mask the shift is zero where the mask
#   keeps the image), restored in finally;
# - "first evaluation of a step": no hook says it. Every k-diffusion sampler loops
#   `for i in trange(...)`, so for the duration of the call the `trange` name of
#   comfy.k_diffusion.sampling is swapped for one that marks each step's start: the one
#   scoped, restored swap of a host name in this extension.

# Samplers whose model sees a temporary or that have no fixed steps: refused.
UNGUIDABLE_SAMPLERS = {"sample_sa_solver", "sample_sa_solver_pece"}


class StepMarker:
    """Set at each step's start by the swapped trange; taken by the first evaluation."""

    def __init__(self):
        self.pending = False
        self.steps = 0

    def take(self) -> bool:
        first, self.pending = self.pending, False
        return first


@contextlib.contextmanager
def marked_steps(marker: StepMarker):
    original = k_diffusion_sampling.trange

    def marking_trange(*args, **kwargs):
        for i in original(*args, **kwargs):
            marker.pending = True
            marker.steps += 1
            yield i

    k_diffusion_sampling.trange = marking_trange
    try:
        yield marker
    finally:
        k_diffusion_sampling.trange = original


def _grad_ready(model: torch.nn.Module) -> None:
    """Loader nodes run under inference_mode, so weights are inference tensors, which
    autograd cannot save for backward. Replace each once by a normal tensor (same
    values, no grad, the old one freed): idempotent and about memory-neutral."""
    with torch.inference_mode(False):
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and p.is_inference():
                    module._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
            for name, b in list(module._buffers.items()):
                if b is not None and b.is_inference():
                    module._buffers[name] = b.clone()


class LatentGuidance:
    """Region Mask Guidance's latent shift, held by the patched model."""

    def __init__(self, regions, sites: list[str], alpha: float):
        self.regions, self.sites, self.alpha = regions, sites, alpha

    def __deepcopy__(self, memo):
        return self     # immutable; the host deep-copies model_options on every clone

    def loss(self, model_k, x_leaf, sigma, kwargs) -> torch.Tensor:
        """The guidance pass: the positive prompt's forward from ``x_leaf``, ended at the
        last guided site, and its masked-attention loss (autograd on)."""
        run = kwargs["model_options"]["transformer_options"][RUN_STATE_KEY]
        kw = dict(kwargs)
        if kw.get("denoise_mask") is not None:
            kw["denoise_mask"] = kw["denoise_mask"].clone()
        guidance = GuidancePass(set(self.sites))
        run.guidance_pass = guidance
        try:
            model_k(x_leaf, sigma, **kw)
        except GuidanceForwardDone:
            pass
        finally:
            run.guidance_pass = None
        return guidance.loss()

    def shift(self, model_k, base_model, x, sigma, kwargs) -> None:
        """x <- x - alpha * s^2 * dL/dx in place, s = 1 / c_in: the paper's step on
        z = x * c_in (ComfyUI's state is x = z * sqrt(1 + sigma^2) for EPS models)."""
        with torch.inference_mode(False), torch.enable_grad():
            _grad_ready(base_model)
            x_leaf = x.detach().clone().requires_grad_(True)
            loss = self.loss(model_k, x_leaf, sigma, kwargs)
            if not loss.requires_grad:
                raise RuntimeError(
                    "Region Mask Guidance: the host ran the guidance pass without gradients, so the latent "
                    "cannot be guided (ComfyUI's multi-GPU cond batching evaluates in worker threads under "
                    "torch.no_grad(), and so may another pack's wrapper). Sample guidance on one device, or "
                    "use the swapping / paint-with-words modes.")
            (grad,) = torch.autograd.grad(loss, x_leaf)
        c_in = base_model.model_sampling.calculate_input(sigma, torch.ones_like(x))
        x.sub_(self.alpha * grad.to(x.dtype) / c_in.pow(2))


class GuidedModelFunction:
    """The sampler's model function (KSamplerX0Inpaint), with the guidance shift on each
    guided step's first evaluation. Attribute lookups go to the real one (lcm and the
    cfg_pp samplers read model.inner_model)."""

    def __init__(self, model_k, guidance: LatentGuidance, marker: StepMarker, base_model):
        self._model_k, self._guidance, self._marker, self._base = model_k, guidance, marker, base_model
        self.guided_steps = 0

    def __getattr__(self, name):
        return getattr(self._model_k, name)

    def __call__(self, x, sigma, **kwargs):
        if self._marker.take() and self._guidance.regions.active_sigma(float(sigma.max())):
            self._guidance.shift(self._model_k, self._base, x, sigma, kwargs)
            self.guided_steps += 1
        return self._model_k(x, sigma, **kwargs)


def _sampler_name(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", type(sampler).__name__)


def _guided_sampler_wrapper(executor, guider, sigmas, extra_args, callback, noise, latent, denoise_mask, disable_pbar):
    """SAMPLER_SAMPLE: run the sampler with the proxy model function and step markers."""
    sampler = executor.class_obj
    fn = getattr(sampler, "sampler_function", None)
    if fn is None or fn.__module__ != k_diffusion_sampling.__name__ or fn.__name__ in UNGUIDABLE_SAMPLERS:
        raise ValueError(
            f"Region Mask Guidance: sampler '{_sampler_name(sampler)}' cannot be guided (its model sees a "
            f"temporary latent, or it has no fixed steps). Use euler, euler_ancestral, dpmpp_2m, dpmpp_2m_sde, "
            f"heun, ddim, lcm or another k-diffusion sampler, or the swapping / paint-with-words modes.")
    guidance = guider.model_options["transformer_options"][GUIDANCE_KEY]
    marker = StepMarker()
    base_model = guider.model_patcher.model
    proxies: list[GuidedModelFunction] = []

    def guided_function(model_k, *args, **kwargs):
        proxies.append(GuidedModelFunction(model_k, guidance, marker, base_model))
        return fn(proxies[-1], *args, **kwargs)

    sampler.sampler_function = guided_function
    try:
        with marked_steps(marker):
            out = executor(guider, sigmas, extra_args, callback, noise, latent, denoise_mask, disable_pbar)
    finally:
        sampler.sampler_function = fn
    guided = sum(p.guided_steps for p in proxies)
    if marker.steps == 0:
        log.warning("Region Mask Guidance: sampler '%s' reported no steps, so no step was guided",
                    _sampler_name(sampler))
    else:
        log.info("Region Mask Guidance: guided %d of %d steps", guided, marker.steps)
    return out


def _cond_only_in_guidance_pass(executor, model, conds, x, timestep, model_options):
    """CALC_COND_BATCH: the guidance pass needs the positive prompt's forward only."""
    run = model_options["transformer_options"].get(RUN_STATE_KEY)
    if run is not None and run.guidance_pass is not None:
        conds = [conds[0]] + [None] * (len(conds) - 1)
    return executor(model, conds, x, timestep, model_options)


# The guidance pass's backward needs the activations of the whole UNet up to its last
# guided site. On SDXL at 1024 px with every site guided they outgrow the weights and a
# 24 GiB machine (docs/speed.md). Kept instead: the inputs of the UNet's heavy parts
# (each ResBlock, each transformer block's self-attention and feed-forward), whose insides
# are recomputed in the backward (torch.utils.checkpoint). The cross-attention sites
# themselves, where the loss is read, run once. Installed with the host's object patches
# (applied while the model is loaded, restored when it unloads); recomputation happens
# only when autograd records, i.e. in the guidance pass: the sampling evaluations, under
# inference mode, call the original forward.
RECOMPUTED_PARTS = ("attn1", "ff")


class RecomputedInBackward:
    """A module's forward that, when autograd records, keeps only its inputs for the
    backward and recomputes the rest there."""

    def __init__(self, forward: Callable):
        self.forward = forward

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(self.forward, *args, use_reentrant=False, **kwargs)


def with_recomputed_activations(model: ModelPatcher) -> ModelPatcher:
    """Adds to ``model`` (a clone of ours) the object patches that make the guidance
    pass recompute activations (see RECOMPUTED_PARTS). A part whose forward another pack
    already patched keeps that forward, recomputed; parts already done are left alone."""
    unet = model.get_model_object("diffusion_model")
    for name, module in unet.named_modules():
        if not (isinstance(module, ResBlock) or name.rsplit(".", 1)[-1] in RECOMPUTED_PARTS):
            continue
        key = f"diffusion_model.{name}.forward"
        current = model.object_patches.get(key)
        if isinstance(current, RecomputedInBackward):
            continue
        # the class's forward, not the instance attribute: while a clone is loaded its
        # object patches sit on the module itself
        model.add_object_patch(key, RecomputedInBackward(current or type(module).forward.__get__(module)))
    return model


def keeping_activations(model: ModelPatcher) -> ModelPatcher:
    """A clone of a guided ``model`` whose guidance pass keeps every activation for its
    backward instead (no recomputation): what the benchmark and the tests compare with."""
    patched = model.clone()
    patched.object_patches = {k: v for k, v in patched.object_patches.items()
                              if not isinstance(v, RecomputedInBackward)}
    return patched


def install_latent_guidance(model: ModelPatcher, guidance: LatentGuidance) -> ModelPatcher:
    """A clone of ``model`` whose sampler's latent is guided (the capture provider must
    already be installed at ``guidance.sites``), its guidance pass recomputing
    activations in the backward instead of keeping them."""
    patched = with_recomputed_activations(with_run_state(model.clone()))
    patched.model_options["transformer_options"][GUIDANCE_KEY] = guidance
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, GUIDANCE_KEY, _guided_sampler_wrapper)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, GUIDANCE_KEY, _cond_only_in_guidance_pass)
    return patched


def without_latent_guidance(model: ModelPatcher) -> ModelPatcher:
    """A clone of ``model`` whose sampling no longer moves the latent (its attention
    patches stay): for a single evaluation that is not a sampling run (Visualize Gates)."""
    patched = model.clone()
    for kind in (comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, comfy.patcher_extension.WrappersMP.CALC_COND_BATCH):
        patched.remove_wrappers_with_key(kind, GUIDANCE_KEY)
    patched.model_options["transformer_options"].pop(GUIDANCE_KEY, None)
    return patched


def latent_guidance(model: ModelPatcher) -> LatentGuidance | None:
    """The latent step Region Mask Guidance installed on ``model``, if any."""
    return model.model_options["transformer_options"].get(GUIDANCE_KEY)


# --- Queries for the rest of the extension and the lab -----------------------------------

def _replaces(model: ModelPatcher, layer: str) -> dict:
    return model.model_options["transformer_options"].get("patches_replace", {}).get(layer, {})


def providers(model: ModelPatcher, kind: type, layer: str = "attn2") -> list:
    """The distinct providers of type ``kind`` installed at ``layer`` of ``model``."""
    found: dict[int, object] = {}
    for op in _replaces(model, layer).values():
        if isinstance(op, SiteAttention):
            for provider in op.providers:
                if isinstance(provider, kind):
                    found.setdefault(id(provider), provider)
    return list(found.values())


def map_providers(model: ModelPatcher, change: Callable, layer: str = "attn2") -> ModelPatcher:
    """A clone of ``model`` whose providers at ``layer`` are ``change(provider)``, in new
    replace objects (the installed ones are shared with ``model`` and stay as they were)."""
    patched = model.clone()
    for key, op in list(_replaces(patched, layer).items()):
        if isinstance(op, SiteAttention):
            patched.set_model_patch_replace(
                SiteAttention(op.site, [change(p) for p in op.providers], op.chained), layer, *key)
    return patched


class _SharedCaptures(Captures):
    """Captures placed in model_options: the host deep-copies model_options on clone at
    0.3.64, and the caller must read back the very object the run wrote to."""

    def __deepcopy__(self, memo):
        return self


def with_captures(model: ModelPatcher) -> tuple[ModelPatcher, Captures]:
    """A clone of ``model`` whose sampling runs record captures (gate logits, and what
    attention probes write), and the Captures object they record into."""
    captures = _SharedCaptures()
    patched = with_run_state(model.clone())
    patched.model_options["transformer_options"][CAPTURES_KEY] = captures
    return patched, captures


class FrozenModel:
    """A patched model evaluated directly, outside any sampler (the heads trainer): the
    host's ``apply_model`` with the patches of ``patched`` and a RunState of the caller's.
    The backbone's parameters are frozen (requires_grad off)."""

    def __init__(self, patched: ModelPatcher):
        self.patched = patched
        self._base = patched.model
        self._options = patched.model_options["transformer_options"]
        for p in self._base.parameters():
            p.requires_grad_(False)

    def load(self) -> None:
        """Loads the patched model whole (its object patches applied) and makes its
        weights ones autograd can save (a loader node made them under inference mode)."""
        comfy.model_management.load_models_gpu([self.patched], force_full_load=True)
        _grad_ready(self._base)

    @property
    def model_sampling(self):
        return self._base.model_sampling

    def __call__(self, x, sigma, context, y, run: RunState) -> torch.Tensor:
        """The denoised latent for noised ``x`` at ``sigma`` (one cond chunk per sample)."""
        options = {**self._options, "cond_or_uncond": [0], "sigmas": sigma, RUN_STATE_KEY: run}
        return self._base.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options=options)


# --- Which model heads were made for ------------------------------------------------------

_SITE_ATTN2 = re.compile(r"diffusion_model\.(?:(input|output)_blocks\.(\d+)|(middle)_block)\.\d+"
                         r"\.transformer_blocks\.(\d+)\.attn2$")


def _effective_weight(model: ModelPatcher, key: str) -> torch.Tensor:
    """The weight at state-dict ``key`` as ``model`` samples with it: the unpatched
    weight (the host's backup while weight patches are applied) with the patcher's weight
    patches (LoRAs) at that key computed on it, so the answer does not depend on whether
    the model is loaded right now."""
    backup = getattr(model, "backup", {}).get(key)
    weight = backup.weight if backup is not None else comfy.utils.get_attr(model.model, key)
    patches = getattr(model, "patches", {}).get(key)
    if patches:
        weight = comfy.lora.calculate_weight(patches, weight.to(torch.float32, copy=True), key).to(weight.dtype)
    return weight


def model_fingerprint(model: ModelPatcher, site_names: Iterable[str]) -> ModelFingerprint:
    """The fingerprint of ``model`` at these sites (maskattn_ops.fingerprint.ModelFingerprint):
    16 values of each site's attn2 to_q and to_k weights, LoRAs included."""
    wanted = set(site_names)
    weights = {}
    for name, module in model.model.named_modules():
        found = _SITE_ATTN2.fullmatch(name)
        if found is None:
            continue
        block, block_id, middle, index = found.groups()
        site = f"middle.0.{index}" if middle else f"{block}.{block_id}.{index}"
        if site in wanted:
            for weight in FINGERPRINT_WEIGHTS:
                weights[f"{site}.{weight}"] = _effective_weight(model, f"{name}.{weight}.weight")
    missing = wanted - {key.rsplit(".", 1)[0] for key in weights}
    if missing:
        raise ValueError(f"MaskAttn: no cross-attention weights found for site(s) {sorted(missing)}")
    return ModelFingerprint.of(weights)
