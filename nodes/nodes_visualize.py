"""Visualize Gates: where each word of the prompt may act (learned gates), or where it
does act (cross-attention), as labelled heatmaps."""
from __future__ import annotations

import itertools

import torch
from comfy_api.latest import io

from ..maskattn_ops import heatmaps
from ..maskattn_ops.regions import WordNotInPrompt
from ..maskattn_ops.sites import SITE_SETS, select_sites
from .nodes_regions import Prompt, Regions
from .patching import discover_sites
from .visualize import capture_maps
from .widget_hints import newer_schema_fields, used_when

CATEGORY = "MaskAttn"
SHOW = ("gate probability", "gate (hard)", "attention")
LAYOUTS = ("per level", "each site")
TILE_WIDTH = 192


def word_maps(site_maps, words: dict[str, list[int]], show: str, threshold: float, layout: str):
    """[(word, [(column label, (B, h, w) map in [0, 1])])] for each word."""
    if layout == "each site":
        groups = [(m.site.name, [m]) for m in site_maps]
    else:
        key = lambda m: m.site.downsample                                   # noqa: E731
        groups = [(f"latent/{factor}", list(ms)) for factor, ms in itertools.groupby(sorted(site_maps, key=key), key)]
    out = []
    for word, positions in words.items():
        columns = []
        for label, group in groups:
            per_site = []
            for m in group:
                if show == "attention":
                    mass = m.attention[:, positions].sum(1)                  # (B, h, w)
                    per_site.append(mass / mass.flatten(1).amax(1).clamp(min=1e-12)[:, None, None])
                elif m.gates is None:
                    raise ValueError(f"Visualize Gates (show): site {m.site.name} has no learned gates; connect a "
                                     f"MODEL from Apply Masked Cross-Attention, or show 'attention'")
                else:
                    probs = m.gates[:, positions]                           # (B, words' tokens, h, w)
                    per_site.append((probs >= threshold).float().mean(1) if show == "gate (hard)" else probs.mean(1))
            columns.append((label, torch.stack(per_site).mean(0)))
        out.append((word, columns))
    return out


class MaskAttnVisualizeGates(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MaskAttnVisualizeGates",
            display_name="Visualize Gates",
            category=CATEGORY,
            description=(
                "Shows where each word may act (the learned gates of Apply Masked Cross-Attention) or "
                "where it does act (the cross-attention the sites use, for any model), from one "
                "evaluation of the MODEL at step_percent over the latent. Tiles are labelled word | "
                "site or level | step; optionally over an image, with bound regions outlined. Costs "
                "one model evaluation when it runs and nothing in sampling."),
            inputs=[
                io.Model.Input("model", tooltip="The model to look into (patched by our nodes or not)."),
                io.Conditioning.Input("positive", tooltip="The positive conditioning (from Region Prompt)."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning."),
                io.Latent.Input("latent", tooltip="The latent to evaluate at (e.g. the sampler's output, or an empty latent)."),
                Prompt.Input("prompt", tooltip="From Region Prompt: finds the words."),
                io.String.Input("words", default="", tooltip="Words of the prompt to show, commas between them."),
                io.Combo.Input("show", options=list(SHOW), default="gate probability",
                               tooltip="Learned gate (probability or hard at the threshold), or cross-attention."),
                io.Combo.Input("layout", options=list(LAYOUTS), default="per level",
                               tooltip="One tile per resolution level (sites averaged), or one per site."),
                io.Combo.Input("sites", options=list(SITE_SETS), default="mid-resolution", tooltip="Which sites to show."),
                io.Float.Input("step_percent", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Where in the schedule to evaluate (the latent is noised to that sigma)."),
                used_when(io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                                         tooltip="Gate probability at which a token counts as kept."),
                          "show", "gate (hard)"),
                io.Float.Input("cfg", default=5.0, min=1.0, max=30.0, step=0.1, tooltip="CFG of the evaluation."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=False,
                             tooltip="Noise seed of the evaluation."),
                io.Image.Input("image", optional=True, tooltip="Drawn under the heatmaps (e.g. the decoded result)."),
                Regions.Input("regions", optional=True, tooltip="Bound regions, outlined on every tile."),
            ],
            outputs=[io.Image.Output(tooltip="One image per latent batch item: rows of words, columns of sites or levels.")],
            **newer_schema_fields(search_aliases=["attention map", "cross-attention heatmap", "gate map", "maskattn"]),
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, prompt, words: str, show: str, layout: str, sites: str,
                step_percent: float, threshold: float, cfg: float, seed: int, image=None, regions=None) -> io.NodeOutput:
        phrases = [w.strip() for w in words.split(",") if w.strip()]
        if not phrases:
            raise ValueError("Visualize Gates (words): name at least one word of the prompt")
        try:
            positions = {w: prompt.positions(w) for w in phrases}
        except WordNotInPrompt as e:
            raise ValueError(f"Visualize Gates (words): {e}") from None
        keep = {s.name for s in select_sites(discover_sites(model), sites)}
        site_maps = [m for m in capture_maps(model, positive, negative, latent, cfg, step_percent, seed)
                     if m.site.name in keep]
        rows_maps = word_maps(site_maps, positions, show, threshold, layout)
        h, w = latent["samples"].shape[-2:]
        size = (max(1, round(TILE_WIDTH * h / w)), TILE_WIDTH)
        outlines = [r.mask for r in regions or ()]
        rows = [[heatmaps.tile(m, f"{word} | {label} | {step_percent:.0%}", size, image, outlines) for label, m in columns]
                for word, columns in rows_maps]
        return io.NodeOutput(heatmaps.grid(rows))
