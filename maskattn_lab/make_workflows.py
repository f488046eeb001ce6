"""Writes the UI-format workflow templates in example_workflows/ (what ComfyUI's template
browser lists under this pack), each graph in two forms:

- SDXL: Load Checkpoint at 1024 px, 25 steps: pick your SDXL checkpoint;
- demo: Load MaskAttn Demo Model (the shapes model that ships in weights/) at 128 px,
  16 steps, the shipped heads: runs as loaded, with no file to find.

The browser shows a custom pack's template by its file name (title, and again as the
description with - and _ as spaces; ComfyUI 0.3.64's frontend reads no index for packs),
so the names are written to be read. The graphs are code, so links and slots stay right;
the JSON files are committed. Regenerate after changing a graph:
    .venv/bin/python scripts/make_workflows.py
The main job (scripts/main.sh) runs them and writes each one's thumbnail (<name>.jpg).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import cli

OUT = Path(__file__).resolve().parents[1] / "example_workflows"
PROMPT = "a red circle and a blue square"   # also what the shapes demo model knows
NEGATIVE = ""
SEED = 7


@dataclass(frozen=True)
class Form:
    """What differs between a template's two forms."""
    label: str          # the end of the file name
    size: int           # image side, pixels
    steps: int


# Heads are made for one model, and the only heads this pack can ship are the demo
# model's: the SDXL form names them too (a file that exists), and its Note says to train
# heads for the checkpoint; Apply Masked Cross-Attention's error then names the files that fit.
DEMO_HEADS = "shapes_sdxl_heads_masksup.safetensors"
SDXL = Form("SDXL", 1024, 25)
DEMO = Form("demo model, runs as loaded", 128, 16)
FORMS = (SDXL, DEMO)
CKPT = "sd_xl_base_1.0.safetensors"


def file_name(title: str, form: Form) -> str:
    return f"{title} ({form.label})"


class Graph:
    def __init__(self, title: str, form: Form):
        self.title, self.form = title, form
        self.name = file_name(title, form)
        self.nodes, self.links = [], []

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

    def note(self, pos, text, size=(400, 220)):
        """A Note, with the form's own paragraph after the graph's text."""
        twin = file_name(self.title, DEMO)
        if self.form is SDXL:
            text += (f"\n\nSDXL form: pick your SDXL checkpoint in Load Checkpoint. No checkpoint at hand? "
                     f"Open the twin template '{twin}': the same graph on the small demo model that ships "
                     f"with this pack, which runs as loaded.")
        else:
            text += ("\n\nDemo form: Load MaskAttn Demo Model is a small SDXL-architecture model trained on "
                     "rendered shapes (128 px; colours red, green, blue, yellow, purple, orange; circles, "
                     "squares, triangles). Queue it as it is.")
        return self.node("Note", pos, [text], size=size)

    def write(self):
        workflow = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, self.name)), "revision": 0,
                    "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                    "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [40, 40]}},
                    "version": 0.4}
        (OUT / f"{self.name}.json").write_text(json.dumps(workflow, indent=1) + "\n")


def px(g: Graph, value: int) -> int:
    """A length given for the 1024-px image, in this form's pixels."""
    return value * g.form.size // SDXL.size


def loader_and_prompts(g: Graph):
    """The model loader (checkpoint or demo model), Region Prompt, negative prompt, empty
    latent: column x 0-330 and 360-760."""
    if g.form is SDXL:
        model = g.node("CheckpointLoaderSimple", (0, 0), [CKPT], ["MODEL", "CLIP", "VAE"], size=(330, 100))
    else:
        model = g.node("MaskAttnLoadDemoModel", (0, 0), ["shapes-sdxl", 0], ["MODEL", "CLIP", "VAE"], size=(330, 110))
    pos = g.node("MaskAttnEncodeRegionPrompt", (360, 0), [PROMPT], ["CONDITIONING", "MASKATTN_PROMPT"], size=(400, 150))
    neg = g.node("CLIPTextEncode", (360, 190), [NEGATIVE], ["CONDITIONING"], title="Negative prompt", size=(400, 110))
    g.connect(model, 1, pos, "clip")
    g.connect(model, 1, neg, "clip")
    return model, pos, neg


def empty_latent(g: Graph, pos_xy):
    return g.node("EmptyLatentImage", pos_xy, [g.form.size, g.form.size, 1], ["LATENT"], size=(320, 110))


def sampler(g: Graph, pos_xy, model, positive, negative, latent, vae, prefix, denoise=1.0, title=None):
    """KSampler -> VAE Decode -> Save Image in a row 1210 px wide."""
    ks = g.node("KSampler", pos_xy, [SEED, "fixed", g.form.steps, 6.0, "euler", "normal", denoise], ["LATENT"],
                size=(320, 270), title=title)
    g.connect(model[0], model[1], ks, "model")
    g.connect(positive, 0, ks, "positive")
    g.connect(negative, 0, ks, "negative")
    g.connect(latent[0], latent[1], ks, "latent_image")
    dec = g.node("VAEDecode", (pos_xy[0] + 350, pos_xy[1]), [], ["IMAGE"], size=(210, 50))
    g.connect(ks, 0, dec, "samples")
    g.connect(vae, 2, dec, "vae")
    save = g.node("SaveImage", (pos_xy[0] + 590, pos_xy[1]), [prefix], [], size=(280, 300))
    g.connect(dec, 0, save, "images")
    return ks, dec


def half_masks(g: Graph, x, y):
    """Left and right halves of the image, from core mask nodes: 670 px wide, 330 tall."""
    size = g.form.size
    empty = g.node("SolidMask", (x, y), [0.0, size, size], ["MASK"], title="Empty canvas", size=(300, 110))
    half = g.node("SolidMask", (x, y + 150), [1.0, size // 2, size], ["MASK"], title="Half", size=(300, 110))
    masks = []
    for i, (title, offset) in enumerate((("Left half", 0), ("Right half", size // 2))):
        comp = g.node("MaskComposite", (x + 340, y + 170 * i), [offset, 0, "add"], ["MASK"], title=title, size=(300, 130))
        g.connect(empty, 0, comp, "destination")
        g.connect(half, 0, comp, "source")
        masks.append(comp)
    return masks


def bind(g: Graph, pos_xy, prompt, words, mask=None, regions=None, box=(0, 0, 512, 512)):
    """Bind Region to Words: 320 x 310. A box is given in the 1024-px image's pixels."""
    size = g.form.size
    b = g.node("MaskAttnBindRegion", pos_xy, [words, 1.0, *(px(g, v) for v in box), size, size], ["MASKATTN_REGIONS"],
               size=(320, 310))
    g.connect(prompt, 1, b, "prompt")
    if mask is not None:
        g.connect(mask, 0, b, "mask")
    if regions is not None:
        g.connect(regions, 0, b, "regions")
    return b


def guidance_node(g, pos_xy, model, regions, mode, title=None):
    """Region Mask Guidance with Endo's settings: 330 x 290."""
    n = g.node("MaskAttnRegionGuidance", pos_xy, [mode, 0.08, 0.5, 0.3, 0.0, 0.3, "all", ""], ["MODEL"],
               title=title, size=(330, 290))
    g.connect(model, 0, n, "model")
    g.connect(regions, 0, n, "regions")
    return n


def gated_sampling(g: Graph, apply_xy, model, heads, prompt, negative, latent, image_prefix, gates_prefix):
    """Apply Masked Cross-Attention with ``heads`` (node, slot) at ``apply_xy`` (330 x 240),
    the sampler row at (800, 0), and Visualize Gates over its image with its Save Image
    at (800, 340)."""
    apply_ = g.node("MaskAttnApplyMaskedCrossAttention", apply_xy, [0.5, "hard", 0.0, 1.0, True, False], ["MODEL"],
                    size=(330, 240))
    g.connect(model, 0, apply_, "model")
    g.connect(heads[0], heads[1], apply_, "heads")
    ks, dec = sampler(g, (800, 0), (apply_, 0), prompt, negative, (latent, 0), model, image_prefix)
    vis = g.node("MaskAttnVisualizeGates", (800, 340), ["red circle, blue square", "gate probability", "per level",
                                                        "mid-resolution", 0.5, 0.5, 6.0, 0], ["IMAGE"], size=(340, 420))
    for src, slot, name in ((apply_, 0, "model"), (prompt, 0, "positive"), (negative, 0, "negative"), (ks, 0, "latent"),
                            (prompt, 1, "prompt"), (dec, 0, "image")):
        g.connect(src, slot, vis, name)
    save = g.node("SaveImage", (1180, 340), [gates_prefix], [], size=(300, 320))
    g.connect(vis, 0, save, "images")


def gating(form: Form):
    g = Graph("Learned gating with Visualize Gates", form)
    model, pos, neg = loader_and_prompts(g)
    latent = empty_latent(g, (360, 340))
    heads = g.node("MaskAttnLoadHeads", (0, 160), [DEMO_HEADS], ["MASKATTN_HEADS"], size=(330, 80))
    gated_sampling(g, (0, 280), model, (heads, 0), pos, neg, latent, "maskattn/gating", "maskattn/gates")
    g.note((0, 560), "MaskAttn-SDXL learned gating (arXiv 2509.15357). Load MaskAttn Heads reads gate heads made "
                     "for one model (models/maskattn; this pack ships the demo model's). Apply Masked "
                     "Cross-Attention adds each token's binary gate (0 keep, -inf suppress; the start token is "
                     "always kept) to the cross-attention logits at the mid-resolution sites. Visualize Gates "
                     "shows where each word may act, over the result."
                     + ("\n\nFor SDXL, heads trained for your checkpoint are needed (the template 'Train gate heads "
                        "for your model', or scripts/train_heads.py); with the "
                        "demo model's heads, Apply Masked Cross-Attention refuses and lists the files that fit."
                        if form is SDXL else ""), size=(330, 330))
    g.write()


def two_regions(form: Form):
    g = Graph("Two-region guidance", form)
    model, pos, neg = loader_and_prompts(g)
    latent = empty_latent(g, (360, 340))
    left, right = half_masks(g, 0, 500)
    red = bind(g, (720, 380), pos, "red circle", mask=left)
    blue = bind(g, (720, 730), pos, "blue square", mask=right, regions=red)
    guided = guidance_node(g, (1080, 380), model, blue, "guidance")
    sampler(g, (800, 0), (guided, 0), pos, neg, (latent, 0), model, "maskattn/two_regions")
    g.note((0, 880), "Masked-attention guidance (Endo, Sec. 3.2): 'red circle' is bound to the left half, 'blue "
                     "square' to the right (masks from Solid Mask + Mask Composite; any MASK works, e.g. from Load "
                     "Image). For the first 30% of steps the latent moves so these words' cross-attention grows "
                     "inside their region (alpha 0.08) and shrinks outside (lambda 0.5).", size=(660, 230))
    g.write()


def side_by_side(form: Form):
    g = Graph("Guidance vs swapping vs paint-with-words", form)
    model, pos, neg = loader_and_prompts(g)
    latent = empty_latent(g, (360, 340))
    red = bind(g, (0, 500), pos, "red circle", box=(0, 256, 512, 512))
    blue = bind(g, (0, 850), pos, "blue square", regions=red, box=(512, 256, 512, 512))
    sampler(g, (800, 0), (model, 0), pos, neg, (latent, 0), model, "maskattn/compare_none", title="KSampler: no control")
    for i, mode in enumerate(("guidance", "swapping", "paint-with-words")):
        steered = guidance_node(g, (380, 500 + 330 * i), model, blue, mode, title=f"Region Mask Guidance: {mode}")
        sampler(g, (800, 340 * (i + 1)), (steered, 0), pos, neg, (latent, 0), model,
                f"maskattn/compare_{mode.replace('-', '_')}", title=f"KSampler: {mode}")
    g.note((0, 1200), "The same prompt, seed and boxes four ways: no control, masked-attention guidance (Endo's "
                      f"method), masked-attention swapping and paint-with-words (the baselines of Endo's Table 1, "
                      f"w' = 0.3). Boxes are in pixels of the {form.size}x{form.size} image; their boxes' widgets "
                      "are used because no mask is connected.", size=(330, 300))
    g.write()


def inpainting(form: Form):
    g = Graph("Inpainting with guidance", form)
    model, pos, neg = loader_and_prompts(g)
    image = g.node("EmptyImage", (0, 340), [form.size, form.size, 1, 0xF0F0F0], ["IMAGE"],
                   title="Image to edit (replace with Load Image)", size=(330, 150))
    encode = g.node("VAEEncode", (360, 340), [], ["LATENT"], size=(210, 50))
    g.connect(image, 0, encode, "pixels")
    g.connect(model, 2, encode, "vae")
    left, _ = half_masks(g, 0, 530)
    masked = g.node("SetLatentNoiseMask", (360, 430), [], ["LATENT"], size=(230, 50))
    g.connect(encode, 0, masked, "samples")
    g.connect(left, 0, masked, "mask")
    red = bind(g, (720, 380), pos, "red circle", mask=left)
    guided = guidance_node(g, (1080, 380), model, red, "guidance")
    sampler(g, (800, 0), (guided, 0), pos, neg, (masked, 0), model, "maskattn/inpainting")
    g.note((0, 900), "Inpainting with guidance (Endo's Blended Latent Diffusion result): only the masked half is "
                     "regenerated (Set Latent Noise Mask), and the guidance puts the red circle inside it; the rest of "
                     "the image is kept.", size=(660, 200))
    g.write()


# Train MaskAttn Heads per form: the training set folder (the SDXL form's is the user's,
# under input/), and name, steps, batch size, learning rate, resolution, seed, mode,
# sites, mask weight, gradient checkpointing, resume (its widgets in order).
TRAINING = {SDXL: ("maskattn_training_pairs", ["sdxl_maskattn_heads", 2000, 2, 1e-3, 1024, 0, "hard",
                                                "mid-resolution", 0.0, True, True]),
            DEMO: ("[demo] shapes", ["shapes_demo_heads", 100, 4, 1e-3, 128, 0, "hard",
                                     "mid-resolution", 0.0, True, True])}


def training(form: Form):
    g = Graph("Train gate heads for your model", form)
    model, pos, neg = loader_and_prompts(g)
    latent = empty_latent(g, (360, 340))
    folder, widgets = TRAINING[form]
    data = g.node("MaskAttnLoadTrainingSet", (0, 160), [folder], ["MASKATTN_TRAINING_SET"], size=(330, 80))
    train = g.node("MaskAttnTrainHeads", (0, 280), widgets, ["MASKATTN_HEADS", "LOSS_MAP", "INT"], size=(330, 420))
    for src, slot, name in ((model, 0, "model"), (model, 1, "clip"), (model, 2, "vae"), (data, 0, "training_set")):
        g.connect(src, slot, train, name)
    plot = g.node("LossGraphNode", (360, 480), ["maskattn_heads_loss"], [], size=(400, 300))
    g.connect(train, 1, plot, "loss")
    gated_sampling(g, (360, 820), model, (train, 0), pos, neg, latent, "maskattn/trained_gating",
                   "maskattn/trained_gates")
    data_text = ("Load MaskAttn Training Set reads '[demo] shapes': 64 rendered scenes that ship with this pack. "
                 if form is DEMO else
                 "Put your pairs in ComfyUI/input/maskattn_training_pairs/: x.png with its caption in x.txt "
                 "(optionally x.masks.json: {\"phrase\": \"mask.png\"} for mask supervision), then pick that "
                 "folder in Load MaskAttn Training Set. ")
    g.note((0, 740), "Heads for any checkpoint, trained in ComfyUI (MaskAttn-SDXL, arXiv 2509.15357): the model "
                     "stays frozen and only the small gate heads learn, with the diffusion loss. " + data_text +
                     "Train MaskAttn Heads shows its progress, saves models/maskattn/<heads_name>.safetensors (for "
                     "Load MaskAttn Heads later) and passes the heads straight on; Plot Loss Graph draws the loss. "
                     "Cancel at any time: queueing again with resume on continues where it stopped. Estimate for "
                     "SDXL on a 24 GB GPU: see the README (Training heads).", size=(330, 360))
    g.write()


TEMPLATES = (two_regions, side_by_side, inpainting, gating, training)


def main(argv=None) -> int:
    cli.parser(__doc__).parse_args(argv)
    OUT.mkdir(exist_ok=True)
    for stale in OUT.glob("*.json"):
        stale.unlink()
    for make in TEMPLATES:
        for form in FORMS:
            make(form)
    print("\n".join(sorted(p.name for p in OUT.glob("*.json"))))
    return 0
