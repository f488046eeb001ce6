"""Every host internal this extension uses, checked once when the host loads us.

Users run many ComfyUI versions. A name a version lacks would otherwise surface as a
traceback in the middle of a run; here the extension refuses to load with ONE message
that names each missing internal and the host's version. Keep this list in step with
what the modules of ``nodes/`` use (tests/host/test_host_check.py reads them).
"""
from __future__ import annotations

import importlib
import inspect

# (module, attribute path, what needs it); each exists in every supported host version.
REQUIRED = (
    ("comfy_api.latest", "ComfyExtension", "the V3 node API (every node)"),
    ("comfy_api.latest", "io.ComfyNode", "the V3 node API (every node)"),
    ("folder_paths", "add_model_folder_path", "models/maskattn"),
    ("folder_paths", "folder_names_and_paths", "models/maskattn"),
    ("folder_paths", "models_dir", "models/maskattn"),
    ("folder_paths", "get_filename_list", "Load MaskAttn Heads"),
    ("folder_paths", "get_full_path", "Load MaskAttn Heads"),
    ("folder_paths", "get_full_path_or_raise", "Load MaskAttn Heads"),
    ("comfy.model_patcher", "ModelPatcher.clone", "every patching node"),
    ("comfy.model_patcher", "ModelPatcher.set_model_patch_replace", "the attention replaces"),
    ("comfy.model_patcher", "ModelPatcher.add_wrapper_with_key", "the per-run state, guidance"),
    ("comfy.model_patcher", "ModelPatcher.get_wrappers", "the per-run state"),
    ("comfy.model_patcher", "ModelPatcher.remove_wrappers_with_key", "Visualize Gates on a guided model"),
    ("comfy.model_patcher", "ModelPatcher.add_object_patch", "Region Mask Guidance's recomputed activations"),
    ("comfy.lora", "calculate_weight", "the heads' model fingerprint (LoRAs at the gated sites)"),
    ("comfy.utils", "get_attr", "the heads' model fingerprint"),
    ("comfy.model_patcher", "create_model_options_clone", "the per-run state"),
    ("comfy.patcher_extension", "WrappersMP.OUTER_SAMPLE", "the per-run state"),
    ("comfy.patcher_extension", "WrappersMP.SAMPLER_SAMPLE", "Region Mask Guidance"),
    ("comfy.patcher_extension", "WrappersMP.CALC_COND_BATCH", "Region Mask Guidance"),
    ("comfy_execution.utils", "get_executing_context", "the demo model's size warning, on the sampler's node"),
    ("server", "PromptServer.send_progress_text", "the demo model's size warning, on the sampler's node"),
    ("comfy.k_diffusion.sampling", "trange", "Region Mask Guidance's step marker"),
    ("comfy.ldm.modules.attention", "optimized_attention", "the host's attention at unpatched calls"),
    ("comfy.ldm.modules.attention", "SpatialTransformer", "finding the sites"),
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "Downsample", "finding the sites"),
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "Upsample", "finding the sites"),
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "ResBlock", "Region Mask Guidance's recomputed activations"),
    ("comfy.sample", "sample_custom", "Visualize Gates"),
    ("comfy.sample", "prepare_noise", "Visualize Gates"),
    ("comfy.sample", "fix_empty_latent_channels", "Visualize Gates"),
    ("comfy.samplers", "KSAMPLER", "Visualize Gates"),
    ("comfy.model_management", "unet_manual_cast", "the demo models"),
    ("comfy.model_management", "get_torch_device", "the demo models"),
    ("comfy.model_management", "unet_offload_device", "the demo models"),
    ("comfy.model_management", "load_models_gpu", "Train MaskAttn Heads"),
    ("comfy.model_management", "processing_interrupted", "Train MaskAttn Heads (cancel, then resume)"),
    ("comfy.model_management", "throw_exception_if_processing_interrupted", "Train MaskAttn Heads (cancel)"),
    ("comfy.utils", "ProgressBar", "Train MaskAttn Heads"),
    ("folder_paths", "get_folder_paths", "Train MaskAttn Heads (saves into models/maskattn)"),
    ("folder_paths", "get_input_directory", "Load MaskAttn Training Set"),
    ("folder_paths", "get_input_subfolders", "Load MaskAttn Training Set"),
    ("comfy.sd", "CLIP", "the demo models"),
    ("comfy.sd", "VAE", "the demo models"),
    ("comfy.supported_models", "SDXL", "the demo models; heads' model family"),
    ("comfy.supported_models", "SD15", "the demo models; heads' model family"),
    ("comfy.supported_models", "SD20", "the demo models; heads' model family"),
    ("comfy.supported_models", "SDXLRefiner", "heads' model family"),
    ("comfy.taesd.taesd", "TAESD", "the demo models"),
)
# Keyword arguments of host functions we call with them (none today: transformer_options
# of optimized_attention, since 0.3.60, is passed only where the host takes it).
REQUIRED_ARGUMENTS: tuple = ()


class HostTooOld(ImportError):
    """The host lacks internals this extension needs; the message names each one."""


def host_version() -> str:
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "unknown"


def _lookup(module: str, path: str):
    obj = importlib.import_module(module)
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _accepts(fn, argument: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True                     # cannot tell: assume yes, as before this check
    return argument in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def missing(required=REQUIRED, arguments=REQUIRED_ARGUMENTS) -> list[str]:
    """'module.attribute (what needs it)' for each internal the running host lacks."""
    out = []
    for module, path, why in required:
        try:
            _lookup(module, path)
        except (ImportError, AttributeError):
            out.append(f"{module}.{path} ({why})")
    for module, path, argument, why in arguments:
        try:
            fn = _lookup(module, path)
        except (ImportError, AttributeError):
            continue                    # already named above
        if not _accepts(fn, argument):
            out.append(f"{module}.{path}(..., {argument}=) ({why})")
    return out


def check_host(required=REQUIRED, arguments=REQUIRED_ARGUMENTS) -> None:
    """Raises HostTooOld naming every missing internal and the host's version."""
    lacking = missing(required, arguments)
    if lacking:
        raise HostTooOld(
            f"MaskAttn cannot run on this ComfyUI (version {host_version()}): it lacks "
            + "; ".join(lacking) + ". Update ComfyUI (see docs/compatibility.md).")
