"""Regions bound to words of the prompt, and Region Mask Guidance's attention modes
(Endo: masked-attention swapping; eDiff-I: paint-with-words)."""
from __future__ import annotations

from comfy_api.latest import io

from ..maskattn_ops.guidance import GuidanceCapture
from ..maskattn_ops.region_attention import REGION_MODES, RegionAttention
from ..maskattn_ops.regions import Region, WordNotInPrompt, box_mask, check_mask
from ..maskattn_ops.sites import SITE_SETS, parse_selection, select_sites
from . import patching
from . import text as prompt_text   # (the node's input is named text)
from .widget_hints import newer_schema_fields, unused_when_linked, used_when

CATEGORY = "MaskAttn/regions"
Prompt = io.Custom("MASKATTN_PROMPT")
Regions = io.Custom("MASKATTN_REGIONS")


class MaskAttnEncodeRegionPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnEncodeRegionPrompt",
            display_name="Region Prompt (CLIP Text Encode)",
            category=CATEGORY,
            description=(
                "Encodes the prompt exactly as CLIP Text Encode does, and also outputs the prompt's "
                "tokens so Bind Region to Words finds each word where the conditioning has it "
                "(multi-token words, repeated words, long prompts; SDXL's two encoders, SD1.x's and SD2.x's one)."),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP model to encode with."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt."),
            ],
            outputs=[
                io.Conditioning.Output(tooltip="The prompt's conditioning, for the sampler's positive input."),
                Prompt.Output(display_name="PROMPT", tooltip="The prompt's tokens, for Bind Region to Words."),
            ],
        )

    @classmethod
    def execute(cls, clip, text: str) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("Region Prompt (clip): no CLIP model; does the checkpoint have a text encoder?")
        conditioning, prompt = prompt_text.encode(clip, text)
        return io.NodeOutput(conditioning, prompt)


class MaskAttnBindRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnBindRegion",
            display_name="Bind Region to Words",
            category=CATEGORY,
            description=(
                "Says where words of the prompt should appear: a MASK (any size; resized to each "
                "attention layer by area) or, with no mask connected, a box in image pixels. Chain "
                "several to bind several regions."),
            inputs=[
                Prompt.Input("prompt", tooltip="From Region Prompt: the prompt the words are in."),
                io.String.Input("words", default="", tooltip="Words of the prompt this region means; "
                                "commas separate several (e.g. 'red circle, ball')."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of this region in the guidance."),
                *(unused_when_linked(box, "mask") for box in (
                    io.Int.Input("x", default=0, min=0, max=16384, step=8, tooltip="Box left edge, in pixels."),
                    io.Int.Input("y", default=0, min=0, max=16384, step=8, tooltip="Box top edge, in pixels."),
                    io.Int.Input("width", default=512, min=0, max=16384, step=8, tooltip="Box width, in pixels."),
                    io.Int.Input("height", default=512, min=0, max=16384, step=8, tooltip="Box height, in pixels."),
                    io.Int.Input("image_width", default=1024, min=8, max=16384, step=8,
                                 tooltip="Width of the image the box is in (a box for another image shape is refused)."),
                    io.Int.Input("image_height", default=1024, min=8, max=16384, step=8,
                                 tooltip="Height of the image the box is in."))),
                io.Mask.Input("mask", optional=True, tooltip="The region (any size, values 0 to 1); when connected, "
                                                             "the box widgets are ignored (greyed out)."),
                Regions.Input("regions", optional=True, tooltip="Regions bound so far, to add this one to."),
            ],
            outputs=[Regions.Output(display_name="REGIONS", tooltip="The regions, for Region Mask Guidance.")],
            **newer_schema_fields(search_aliases=["region mask", "regional prompt", "mask to words", "box"]),
        )

    @classmethod
    def execute(cls, prompt: prompt_text.RegionPrompt, words: str, strength: float, x: int, y: int, width: int,
                height: int, image_width: int, image_height: int, mask=None, regions=None) -> io.NodeOutput:
        try:
            positions = prompt.positions(words)
            region_mask = (check_mask(mask, words) if mask is not None
                           else box_mask(x, y, width, height, image_width, image_height, words))
        except (WordNotInPrompt, ValueError) as e:
            raise ValueError(f"Bind Region to Words: {e}") from None
        region = Region(region_mask, tuple(positions), prompt.context_tokens, words, strength)
        if regions and regions[0].prompt_tokens != region.prompt_tokens:
            raise ValueError("Bind Region to Words: the chained regions were bound to another prompt")
        return io.NodeOutput((*(regions or ()), region))


class MaskAttnRegionGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnRegionGuidance",
            display_name="Region Mask Guidance",
            category=CATEGORY,
            description=(
                "Steers where bound words appear, at the chosen cross-attention sites, between "
                "start_percent and end_percent of sampling. paint-and-suppress (the default, the "
                "closest to the regions in this pack's measurements): w' * log(1 + sigma) * max(QK^T) "
                "is added to the words' attention logits inside their region and lambda times that "
                "taken away outside (less for a region under 5% of the image, so a tiny object "
                "is not lost), for the whole run. guidance (Endo Sec. 3.2): on each guided step "
                "the latent moves down the gradient of a loss that rewards the words' attention inside "
                "their region and penalises it outside (lambda), by alpha, in the first 30% of steps "
                "(set end_percent to 0.3). swapping (Endo Sec. 3.1): the words' attention becomes "
                "1/|words| inside their region and 0 outside. paint-with-words (eDiff-I): the inside "
                "term of paint-and-suppress alone."),
            inputs=[
                io.Model.Input("model", tooltip="The model to steer."),
                Regions.Input("regions", tooltip="From Bind Region to Words."),
                io.Combo.Input("mode", options=list(REGION_MODES), default="paint-and-suppress",
                               tooltip="How the regions act: paint-and-suppress (closest to the regions, no backward "
                                       "pass), guidance (Endo's method), swapping or paint-with-words (the baselines "
                                       "Endo compares with)."),
                used_when(io.Float.Input("alpha", default=0.08, min=0.0, max=10.0, step=0.01,
                                         tooltip="Guidance step size (Endo: 0.08). The loss is rescaled so alpha "
                                                 "means the same at any resolution and layer count."),
                          "mode", "guidance"),
                used_when(io.Float.Input("lam", default=0.5, min=0.0, max=10.0, step=0.05, display_name="lambda",
                                         tooltip="Weight of what acts outside the region against what acts inside: "
                                                 "guidance's penalty (Endo's lambda: 0.5), paint-and-suppress's "
                                                 "push down (scaled by share / 5% for a region under 5% "
                                                 "of the image)."),
                          "mode", "guidance", "paint-and-suppress"),
                used_when(io.Float.Input("weight", default=1.0, min=0.0, max=5.0, step=0.05,
                                         tooltip="w' of paint-with-words and paint-and-suppress (eDiff-I and Endo "
                                                 "used 0.3; 1.0 follows the regions more closely on the shapes model)."),
                          "mode", "paint-with-words", "paint-and-suppress"),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which the regions start to act."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Sampling progress at which they stop (paint-and-suppress: the whole run; "
                                       "Endo's guidance and its baselines: the first 30%, 0.3)."),
                io.Combo.Input("sites", options=list(SITE_SETS), default="all",
                               tooltip="Cross-attention sites to act at (Endo: all). encoder: the input blocks' "
                                       "sites only, the cheapest guidance (its pass stops after them)."),
                io.String.Input("site_list", default="", optional=True,
                                tooltip="Instead of 'sites': site names, comma-separated (e.g. input.4.0, output.3.1)."),
            ],
            outputs=[io.Model.Output(tooltip="The steered model.")],
            **newer_schema_fields(search_aliases=[
                "region guidance", "masked attention guidance", "regional prompting", "attention mask",
                "layout guidance", "masked-attention swapping", "paint with words", "paint and suppress"]),
        )

    @classmethod
    def execute(cls, model, regions, mode: str, alpha: float, lam: float, weight: float, start_percent: float,
                end_percent: float, sites: str, site_list: str = "") -> io.NodeOutput:
        if not regions:
            raise ValueError("Region Mask Guidance (regions): no regions bound")
        window = patching.sigma_window(model, start_percent, end_percent, "Region Mask Guidance")
        chosen = parse_selection(site_list) if site_list.strip() else sites
        provider = RegionAttention(tuple(regions), mode=mode, weight=weight, outside=lam, **window)
        try:
            names = [s.name for s in select_sites(patching.discover_sites(model), chosen)]
        except ValueError as e:
            raise ValueError(f"Region Mask Guidance (sites): {e}") from None
        if mode != "guidance":
            return io.NodeOutput(patching.install_bias(model, provider, names))
        captured = patching.install_bias(model, GuidanceCapture(provider, lam), names)
        return io.NodeOutput(patching.install_latent_guidance(captured, patching.LatentGuidance(provider, names, alpha)))
