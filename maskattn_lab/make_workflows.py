"""Writes the UI-format workflow templates in workflows/ (what ComfyUI's menu opens).

The graphs are written here as code, so links and slots stay right; the JSON files are
committed. Regenerate after changing a graph:  .venv/bin/python scripts/make_workflows.py
Templates load the standard checkpoint loader (users pick their SDXL checkpoint) at
1024 px; `scripts/main.sh` runs them on the demo model (see run_workflows.py).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "workflows"
PROMPT = "a red circle and a blue square"   # also what the shapes demo model knows
NEGATIVE = ""
CKPT = "sd_xl_base_1.0.safetensors"
HEADS = "maskattn_sdxl_heads.safetensors"
SIZE = 1024


class Graph:
    def __init__(self, name: str):
        self.name, self.nodes, self.links = name, [], []

    def node(self, type_, pos, widgets=(), outputs=(), title=None, size=(320, 130)):
        n = {"id": len(self.nodes) + 1, "type": type_, "pos": list(pos), "size": list(size), "flags": {},
             "order": len(self.nodes), "mode": 0, "inputs": [],
             "outputs": [{"name": o, "type": o, "links": [], "slot_index": i} for i, o in enumerate(outputs)],
             "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets)}
        if title:
            n["title"] = title
        self.nodes.append(n)
        return n

    def connect(self, src, slot: int, dst, input_name: str):
        link_id = len(self.links) + 1
        type_ = src["outputs"][slot]["type"]
        self.links.append([link_id, src["id"], slot, dst["id"], len(dst["inputs"]), type_])
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"].append({"name": input_name, "type": type_, "link": link_id})

    def note(self, pos, text, size=(420, 200)):
        return self.node("Note", pos, [text], size=size)

    def write(self):
        workflow = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.name)), "revision": 0,
                    "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                    "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                    "version": 0.4}
        (OUT / f"{self.name}.json").write_text(json.dumps(workflow, indent=1) + "\n")


def common(g: Graph, x0=0):
    """Checkpoint, Region Prompt, negative prompt, empty latent."""
    ckpt = g.node("CheckpointLoaderSimple", (x0, 100), [CKPT], ["MODEL", "CLIP", "VAE"])
    pos = g.node("MaskAttnEncodeRegionPrompt", (x0 + 360, 0), [PROMPT], ["CONDITIONING", "MASKATTN_PROMPT"], size=(400, 160))
    neg = g.node("CLIPTextEncode", (x0 + 360, 200), [NEGATIVE], ["CONDITIONING"], title="Negative prompt", size=(400, 120))
    g.connect(ckpt, 1, pos, "clip")
    g.connect(ckpt, 1, neg, "clip")
    latent = g.node("EmptyLatentImage", (x0 + 360, 360), [SIZE, SIZE, 1], ["LATENT"])
    return ckpt, pos, neg, latent


def sampler(g: Graph, pos_xy, model, positive, negative, latent, vae, prefix, seed=7, denoise=1.0):
    ks = g.node("KSampler", pos_xy, [seed, "fixed", 25, 6.0, "euler", "normal", denoise], ["LATENT"], size=(320, 270))
    g.connect(model[0], model[1], ks, "model")
    g.connect(positive, 0, ks, "positive")
    g.connect(negative, 0, ks, "negative")
    g.connect(latent[0], latent[1], ks, "latent_image")
    dec = g.node("VAEDecode", (pos_xy[0] + 350, pos_xy[1]), [], ["IMAGE"], size=(210, 50))
    g.connect(ks, 0, dec, "samples")
    g.connect(vae, 2, dec, "vae")
    save = g.node("SaveImage", (pos_xy[0] + 590, pos_xy[1]), [prefix], [], size=(300, 320))
    g.connect(dec, 0, save, "images")
    return ks, dec


def half_masks(g: Graph, x, y):
    """Left and right halves of the image, from core mask nodes."""
    empty = g.node("SolidMask", (x, y), [0.0, SIZE, SIZE], ["MASK"], title="Empty canvas")
    half = g.node("SolidMask", (x, y + 160), [1.0, SIZE // 2, SIZE], ["MASK"], title="Half")
    masks = []
    for i, (title, offset) in enumerate((("Left half", 0), ("Right half", SIZE // 2))):
        comp = g.node("MaskComposite", (x + 340, y + 170 * i), [offset, 0, "add"], ["MASK"], title=title)
        g.connect(empty, 0, comp, "destination")
        g.connect(half, 0, comp, "source")
        masks.append(comp)
    return masks


def bind(g: Graph, pos_xy, prompt, words, mask=None, regions=None, box=(0, 0, 512, 512)):
    b = g.node("MaskAttnBindRegion", pos_xy, [words, 1.0, *box, SIZE, SIZE], ["MASKATTN_REGIONS"], size=(320, 300))
    g.connect(prompt, 1, b, "prompt")
    if mask is not None:
        g.connect(mask, 0, b, "mask")
    if regions is not None:
        g.connect(regions, 0, b, "regions")
    return b


def guidance_node(g, pos_xy, model, regions, mode, title=None):
    n = g.node("MaskAttnRegionGuidance", pos_xy, [mode, 0.08, 0.5, 0.3, 0.0, 0.3, "all", ""], ["MODEL"],
               title=title, size=(330, 280))
    g.connect(model, 0, n, "model")
    g.connect(regions, 0, n, "regions")
    return n


def gating():
    g = Graph("maskattn_gating_txt2img")
    ckpt, pos, neg, latent = common(g)
    heads = g.node("MaskAttnLoadHeads", (0, 320), [HEADS], ["MASKATTN_HEADS"])
    apply_ = g.node("MaskAttnApplyMaskedCrossAttention", (0, 480), [0.5, "hard", 0.0, 1.0, True, False], ["MODEL"], size=(330, 230))
    g.connect(ckpt, 0, apply_, "model")
    g.connect(heads, 0, apply_, "heads")
    ks, dec = sampler(g, (820, 0), (apply_, 0), pos, neg, (latent, 0), ckpt, "maskattn/gating")
    vis = g.node("MaskAttnVisualizeGates", (820, 360), ["red circle, blue square", "gate probability", "per level",
                                                         "mid-resolution", 0.5, 0.5, 6.0, 0], ["IMAGE"], size=(340, 420))
    for src, slot, name in ((apply_, 0, "model"), (pos, 0, "positive"), (neg, 0, "negative"), (ks, 0, "latent"),
                            (pos, 1, "prompt"), (dec, 0, "image")):
        g.connect(src, slot, vis, name)
    save = g.node("SaveImage", (1200, 360), ["maskattn/gates"], [], size=(360, 360))
    g.connect(vis, 0, save, "images")
    g.note((0, 760), "MaskAttn-SDXL learned gating (arXiv 2509.15357). Load MaskAttn Heads reads heads trained "
                     "for your checkpoint (models/maskattn, scripts/train_heads.py); Apply Masked Cross-Attention adds "
                     "each token's binary gate to the cross-attention logits at the mid-resolution sites. "
                     "Visualize Gates shows where each word may act, over the result.")
    g.write()


def two_regions():
    g = Graph("maskattn_two_region_guidance")
    ckpt, pos, neg, latent = common(g)
    left, right = half_masks(g, 0, 540)
    red = bind(g, (800, 420), pos, "red circle", mask=left)
    blue = bind(g, (800, 760), pos, "blue square", mask=right, regions=red)
    guided = guidance_node(g, (1160, 420), ckpt, blue, "guidance")
    sampler(g, (820, 0), (guided, 0), pos, neg, (latent, 0), ckpt, "maskattn/two_regions")
    g.note((0, 900), "Masked-attention guidance (Endo, Sec. 3.2): 'red circle' is bound to the left half, 'blue "
                     "square' to the right (masks from SolidMask + MaskComposite). For the first 30% of steps the latent "
                     "moves so these words' cross-attention grows inside their region (alpha 0.08) and shrinks outside "
                     "(lambda 0.5).")
    g.write()


def side_by_side():
    g = Graph("maskattn_guidance_vs_swapping_vs_pww")
    ckpt, pos, neg, latent = common(g)
    red = bind(g, (0, 520), pos, "red circle", box=(0, 256, 512, 512))
    blue = bind(g, (0, 860), pos, "blue square", regions=red, box=(512, 256, 512, 512))
    sampler(g, (820, 0), (ckpt, 0), pos, neg, (latent, 0), ckpt, "maskattn/compare_none")
    for i, mode in enumerate(("guidance", "swapping", "paint-with-words")):
        steered = guidance_node(g, (400, 1200 + 320 * i), ckpt, blue, mode, title=f"Region Mask Guidance: {mode}")
        sampler(g, (820, 380 * (i + 1)), (steered, 0), pos, neg, (latent, 0), ckpt, f"maskattn/compare_{mode.replace('-', '_')}")
    g.note((0, 1200), "The same prompt, seed and boxes four ways: no control, masked-attention guidance (Endo's "
                      "method), masked-attention swapping and paint-with-words (the baselines of Endo's Table 1, "
                      "w' = 0.3). Boxes are in pixels of the 1024x1024 image.")
    g.write()


def inpainting():
    g = Graph("maskattn_inpainting_guidance")
    ckpt, pos, neg, _ = common(g)
    image = g.node("EmptyImage", (0, 540), [SIZE, SIZE, 1, 0xF0F0F0], ["IMAGE"], title="Image to edit (replace with Load Image)")
    encode = g.node("VAEEncode", (360, 540), [], ["LATENT"], size=(210, 50))
    g.connect(image, 0, encode, "pixels")
    g.connect(ckpt, 2, encode, "vae")
    left, _ = half_masks(g, 0, 700)
    masked = g.node("SetLatentNoiseMask", (600, 540), [], ["LATENT"], size=(230, 50))
    g.connect(encode, 0, masked, "samples")
    g.connect(left, 0, masked, "mask")
    red = bind(g, (800, 700), pos, "red circle", mask=left)
    guided = guidance_node(g, (1160, 700), ckpt, red, "guidance")
    sampler(g, (820, 0), (guided, 0), pos, neg, (masked, 0), ckpt, "maskattn/inpainting")
    g.note((0, 1100), "Inpainting with guidance (Endo's Blended Latent Diffusion result): only the masked half is "
                      "regenerated (Set Latent Noise Mask), and the guidance puts the red circle inside it; the rest of "
                      "the image is kept.")
    g.write()


def main() -> int:
    for make in (gating, two_regions, side_by_side, inpainting):
        make()
    print("\n".join(sorted(p.name for p in OUT.glob("*.json"))))
    return 0
