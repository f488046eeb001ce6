"""Learned gating (MaskAttn-SDXL): Load MaskAttn Heads, Apply Masked Cross-Attention."""
from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import io

from ..maskattn_ops.gate_head import GATE_MODES
from ..maskattn_ops.gate_providers import GateBias, SelfAttentionGate
from ..maskattn_ops.heads import HeadSet, HeadsFileError, load_heads
from . import patching
from .model_family import family_of
from .model_folders import HEADS_FOLDER, heads_file_names, heads_that_fit
from .widget_hints import newer_schema_fields, used_when

log = logging.getLogger(__name__)

CATEGORY = "MaskAttn"
Heads = io.Custom("MASKATTN_HEADS")


class MaskAttnLoadHeads(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnLoadHeads",
            display_name="Load MaskAttn Heads",
            category=CATEGORY,
            description=(
                "Loads learned MaskAttn-SDXL gate heads (a .safetensors file from models/maskattn): "
                "one small head per gated cross-attention site that predicts where each prompt "
                "token may act. Heads are made for one base model; Apply Masked Cross-Attention "
                "refuses heads made for another UNet family (SDXL, SD1.x, SD2.x) or whose sites or widths "
                "differ from the MODEL's, and warns when the heads were "
                "trained on another checkpoint of the same widths."),
            inputs=[
                io.Combo.Input("heads_name", options=heads_file_names(),
                               tooltip="Heads file in models/maskattn (safetensors only); the shipped ones "
                                       "(shapes_sdxl_heads*) are made for the demo model."),
            ],
            outputs=[Heads.Output(display_name="HEADS", tooltip="The gate heads, for Apply Masked Cross-Attention.")],
            **newer_schema_fields(search_aliases=["maskattn heads", "gate heads", "masked attention"]),
        )

    @classmethod
    def execute(cls, heads_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(HEADS_FOLDER, heads_name)
        try:
            return io.NodeOutput(load_heads(path))
        except HeadsFileError as e:
            raise ValueError(f"Load MaskAttn Heads (heads_name): {e}") from None


class MaskAttnApplyMaskedCrossAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnApplyMaskedCrossAttention",
            display_name="Apply Masked Cross-Attention",
            category=CATEGORY,
            description=(
                "MaskAttn-SDXL: at each gated cross-attention site, the heads predict per prompt "
                "token where it may act, and the gate is added to the attention logits before "
                "softmax (0 keeps, a large negative suppresses; the start token is always kept). "
                "Returns a patched copy of the MODEL; the input MODEL is unchanged."),
            inputs=[
                io.Model.Input("model", tooltip="The model to gate (SDXL, SD1.x or SD2.x; the heads must be trained for its family)."),
                Heads.Input("heads", tooltip="Gate heads from Load MaskAttn Heads, made for this model."),
                used_when(io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                                         tooltip="Probability at which a token is kept. The paper uses 0.5."),
                          "mode", "hard"),
                io.Combo.Input("mode", options=list(GATE_MODES), default="hard",
                               tooltip="hard: binary gate (the paper). soft: log-probability bias, no threshold."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which gating starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which gating stops."),
                io.Boolean.Input("apply_to_uncond", default=True,
                                 tooltip="Gate the negative prompt's pass too."),
                io.Boolean.Input("self_attention_gating", default=False, optional=True,
                                 tooltip="Also gate self-attention at the same sites: a location attends only "
                                         "locations that share an object token's gate with it, or that no object "
                                         "token claims. Uses the previous step's gates (beyond the paper)."),
            ],
            outputs=[io.Model.Output(tooltip="The gated model.")],
            **newer_schema_fields(search_aliases=["masked attention", "maskattn", "cross-attention gating",
                                                  "learned gates", "attention mask"]),
        )

    @staticmethod
    def check_made_for(model, heads: HeadSet) -> None:
        """Warns (log and the node in the UI) when the MODEL is not the model the heads
        were trained on: the same widths, other weights (a fine-tune, a LoRA at the gated
        sites, another checkpoint). Not an error: heads, like LoRAs, are used on models
        near theirs. Files without a fingerprint are not checked."""
        name = heads.source or "these heads"
        if heads.fingerprint is None:
            log.info("Apply Masked Cross-Attention: %s records no model fingerprint (an older file); "
                     "not checked against this MODEL", name)
            return
        try:
            fingerprint = patching.model_fingerprint(model, heads.site_names)
        except ValueError as e:
            log.info("Apply Masked Cross-Attention: %s not checked against this MODEL: %s", name, e)
            return
        if not heads.fingerprint.same_model(fingerprint):
            made_for = heads.training_summary.get("base")
            patching.tell_user(
                f"Apply Masked Cross-Attention (heads): {name} was made for another model"
                f"{f' ({made_for})' if made_for else ''}: this MODEL's cross-attention weights at the gated "
                f"sites differ from it (another checkpoint, a fine-tune or a LoRA). The heads still apply, "
                f"but their gates may miss; heads trained on this MODEL fit it best.")

    @classmethod
    def execute(cls, model, heads: HeadSet, threshold: float, mode: str, start_percent: float,
                end_percent: float, apply_to_uncond: bool, self_attention_gating: bool = False) -> io.NodeOutput:
        window = patching.sigma_window(model, start_percent, end_percent, "Apply Masked Cross-Attention")
        sites, family = patching.discover_sites(model), family_of(model)
        try:
            heads.check_fits(sites, "this MODEL", family)
        except HeadsFileError as e:
            fitting = heads_that_fit(sites, family)
            hint = (f"heads files that fit this MODEL: {', '.join(fitting)}" if fitting else
                    "no heads file in models/maskattn fits this MODEL: train some for it (Train MaskAttn Heads)")
            raise ValueError(f"Apply Masked Cross-Attention (heads): {e}. {hint}") from None
        cls.check_made_for(model, heads)
        provider = GateBias(heads, threshold=threshold, mode=mode, **window,
                            apply_to_uncond=apply_to_uncond, share_gates=self_attention_gating)
        gated = patching.install_bias(model, provider, heads.site_names)
        if self_attention_gating:
            gated = patching.with_run_state(
                patching.install_bias(gated, SelfAttentionGate(provider), heads.site_names, layer="attn1"))
        return io.NodeOutput(gated)
