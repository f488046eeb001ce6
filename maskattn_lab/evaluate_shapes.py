"""Measure region control on the shapes model, the way the papers measure it on SDXL.

    python scripts/evaluate_shapes.py --sets 200 --heads gates=weights/x.safetensors ...
    python scripts/evaluate_shapes.py --quality 100          # the model's own prompt following
    python scripts/evaluate_shapes.py --rescore --heads ...  # score the kept images again

Each set is a held-out scene (2 to 4 objects; seeds from shapes.EVAL_SEED_BASE, never trained
on): its caption is the prompt and each object's mask (or bounding box) is the region
for the object's words. Every image goes through the host's KSampler (common_ksampler)
with our nodes' own execute(): Region Prompt, Bind Region to Words, Region Mask
Guidance, Apply Masked Cross-Attention. Images are segmented by colour
(maskattn_lab/scoring.py) and scored by mIoU between each region and its colour's pixels
(Endo, Table 1) and by object precision/recall and attribute binding (MaskAttn-SDXL).
Rows run one after another, each set with the same seed in every row; results are
appended per set to benchmarks/results/shapes_eval/<row>.jsonl (a stopped run resumes),
then summarised with 95% bootstrap intervals into shapes_eval.md, and a grid PNG. Every
image is kept in data/shapes_eval_images/<row>/ (git-ignored) so that a change to the
scorer is a --rescore, not a rerun.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import cli, host, odd_layouts, peer_densediffusion, scoring, shapes

host.import_host()
import nodes as host_nodes  # noqa: E402  (the host's core nodes: KSampler's common_ksampler, VAE Decode)

from comfyui_maskattn.maskattn_ops.attention import suppress  # noqa: E402
from comfyui_maskattn.maskattn_ops.heads import load_heads  # noqa: E402
from comfyui_maskattn.maskattn_ops.regions import box_mask  # noqa: E402
from comfyui_maskattn.nodes import demo_models, patching  # noqa: E402
from comfyui_maskattn.nodes.nodes_gating import MaskAttnApplyMaskedCrossAttention  # noqa: E402
from comfyui_maskattn.nodes.nodes_regions import (  # noqa: E402
    MaskAttnBindRegion, MaskAttnEncodeRegionPrompt, MaskAttnRegionGuidance)

from . import modulation  # noqa: E402  (imports our package's ops)
from .eval_records import IMAGES, RESULTS, kept, slug  # noqa: E402
from .shapes_model import image_through_vae, through_vae  # noqa: E402

log = logging.getLogger(__name__)
GRID_SETS = 6                       # sets per row kept as PNGs for the grid
PEER_COMMIT = "densediffusion_commit.txt"   # beside the rows' records: the peer pack's commit
PAIRED_AGAINST = ("none", "guidance a=0.04", "DenseDiffusion (peer)")
# the rows of the README's picture grid (shapes_eval*_featured.png)
FEATURED = ("none", "guidance a=0.04", "DenseDiffusion (peer)", "paint-and-suppress w'=1.0 lambda 0.5")


@dataclass
class Row:
    name: str
    mode: str | None = None         # Region Mask Guidance mode(s), "+" between stacked nodes, or None
    alpha: float = 0.08
    weight: float = 0.3
    lam: float = 0.5                # guidance's and paint-and-suppress's lambda
    self_weight: float = 0.3        # modulation's w at self-attention (lab: maskattn_lab/modulation.py)
    end: float | tuple = 0.3        # end_percent, or one per stacked mode
    boxes: bool = False             # regions as bounding boxes instead of the shapes' masks
    heads: str | None = None        # name given with --heads
    gate_start: float = 0.0         # gates act from this share of the steps on
    suppress: str | None = None     # ablation: the objects' words switched off at these sites
    reference: bool = False         # no sampling: the scene's own rendering through the VAE
    peer: bool = False              # DenseDiffusion's own pack (--densediffusion), not our nodes
    extra: dict = field(default_factory=dict)


def rows_for(heads: dict[str, Path]) -> list[Row]:
    # the scorer's ceiling: what a perfect generator scores once the VAE has blurred it
    rows = [Row("rendered scene through the VAE", reference=True),
            Row("none"),
            Row("DenseDiffusion (peer)", peer=True),
            *[Row(f"paint-with-words w'={w}", mode="paint-with-words", weight=w) for w in (0.1, 0.3, 1.0)],
            Row("swapping", mode="swapping"),
            *[Row(f"guidance a={a}", mode="guidance", alpha=a) for a in (0.01, 0.04, 0.08, 0.16)],
            Row("guidance a=0.08, boxes", mode="guidance", alpha=0.08, boxes=True),
            Row("swapping, boxes", mode="swapping", boxes=True),
            # DenseDiffusion's own attention modulation (Kim et al. 2023; its defaults w 1.0 / 0.3, first 30%)
            *[Row(f"modulation w={w}/{ws}", mode="modulation", weight=w, self_weight=ws) for w, ws in ((1.0, 0.3), (4.0, 1.0))],
            Row("guidance a=0.04 + modulation w=1.0/0.3", mode="guidance+modulation", alpha=0.04, weight=1.0),
            # the baselines for the whole run
            Row("swapping to 100%", mode="swapping", end=1.0),
            Row("paint-with-words w'=1.0 to 100%", mode="paint-with-words", weight=1.0, end=1.0),
            # paint-and-suppress (the node's default: w' 1.0, lambda 0.5, the whole run)
            *[Row(f"paint-and-suppress w'={w} lambda {lam}", mode="paint-and-suppress", weight=w, lam=lam, end=1.0)
              for w, lam in ((1.0, 0.5), (1.0, 0.25), (1.0, 1.0), (2.0, 0.5))],
            Row("paint-and-suppress w'=1.0 lambda 0.5 to 30%", mode="paint-and-suppress", weight=1.0, lam=0.5),
            Row("paint-and-suppress w'=1.0 lambda 0.5, boxes", mode="paint-and-suppress", weight=1.0, lam=0.5,
                end=1.0, boxes=True),
            # ablation: do the colours come from the object words at these sites (gates act on them)?
            *[Row(f"object words off at {sites} sites", suppress=sites) for sites in ("mid-resolution", "all")]]
    for name in heads:
        rows.append(Row(f"gates {name}", heads=name))
        # once the layout exists: at high noise a head cannot know where objects will be
        rows.append(Row(f"gates {name}, from 30%", heads=name, gate_start=0.3))
        rows.append(Row(f"gates {name} + guidance a=0.08", mode="guidance", heads=name))
    return rows


@dataclass
class SuppressWords:
    """A bias provider that switches the given context positions off at every location."""
    positions: list[int]

    def __call__(self, call) -> torch.Tensor:
        keep = torch.ones(call.tokens, dtype=torch.bool)
        keep[self.positions] = False
        return suppress(keep)[None, None, None]             # (1, 1, 1, T)


class Generator:
    """One image per (row, scene), through the nodes and the host's sampler."""

    def __init__(self, model, clip, vae, heads: dict[str, Path], args):
        self.model, self.clip, self.vae, self.args = model, clip, vae, args
        self.heads = {name: load_heads(path) for name, path in heads.items()}
        self.negative = host_nodes.CLIPTextEncode().encode(clip, "")[0]
        self.densediffusion = None
        if getattr(args, "densediffusion", None):
            self.densediffusion, self.densediffusion_commit = peer_densediffusion.load(args.densediffusion)

    def reference(self, scene) -> np.ndarray:
        return through_vae(self.vae, scene)

    def regions(self, prompt, scene, masks, boxes: bool):
        bound = None
        for shape in scene.shapes:
            mask = None if boxes else torch.from_numpy(masks[shape.words]).float()[None]
            bound = MaskAttnBindRegion.execute(prompt, shape.words, 1.0, *shape.xywh,
                                               scene.size, scene.size, mask=mask, regions=bound).result[0]
        return bound

    def patched(self, row: Row, prompt, scene, masks):
        model = self.model
        if row.suppress:
            words = prompt.positions(", ".join(shape.words for shape in scene.shapes))
            model = patching.install_bias(model, SuppressWords(words), row.suppress)
        if row.heads:
            model = MaskAttnApplyMaskedCrossAttention.execute(model, self.heads[row.heads], 0.5, "hard",
                                                              row.gate_start, 1.0, True).result[0]
        if row.mode:
            regions = self.regions(prompt, scene, masks, row.boxes)
            modes = row.mode.split("+")
            ends = row.end if isinstance(row.end, tuple) else (row.end,) * len(modes)
            for mode, end in zip(modes, ends):
                if mode == "modulation":
                    model = modulation.install(model, regions, row.weight, row.self_weight, end)
                else:
                    model = MaskAttnRegionGuidance.execute(model, regions, mode, row.alpha, row.lam, row.weight,
                                                           0.0, end, "all").result[0]
        return model

    def peer(self, scene, masks):
        """(MODEL, positive) from DenseDiffusion's pack: each object's phrase as the caption
        writes it ("a red circle") with its mask, and the caption."""
        if self.densediffusion is None:
            raise SystemExit("the DenseDiffusion row needs --densediffusion PATH (a checkout of the pack)")
        objects = [(f"a {s.words}", torch.from_numpy(masks[s.words]).float()[None]) for s in scene.shapes]
        return peer_densediffusion.patched(self.densediffusion, self.model,
                                           lambda text: host_nodes.CLIPTextEncode().encode(self.clip, text)[0],
                                           objects, scene.caption)

    def __call__(self, row: Row, seed: int, scene, masks, truth=None) -> np.ndarray:
        """One image; ``truth`` is the perfect image for the reference row (default: the
        scene's rendering)."""
        if row.reference:
            return self.reference(scene) if truth is None else image_through_vae(self.vae, truth)
        if row.peer:
            model, positive = self.peer(scene, masks)
        else:
            positive, prompt = MaskAttnEncodeRegionPrompt.execute(self.clip, scene.caption).result
            model = self.patched(row, prompt, scene, masks)
        latent = {"samples": torch.zeros(1, 4, scene.size // 8, scene.size // 8)}
        with torch.inference_mode():
            out = host_nodes.common_ksampler(model, seed, self.args.steps, self.args.cfg, self.args.sampler,
                                                  self.args.scheduler, positive, self.negative, latent)[0]
            image = host_nodes.VAEDecode().decode(self.vae, out)[0]
        return (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def region_of(shape, masks, boxes: bool, size: int) -> np.ndarray:
    """The region the method was given for ``shape``, as the scorer takes it."""
    if not boxes:
        return masks[shape.words]
    return box_mask(*shape.xywh, size, size, shape.words)[0].bool().numpy()


def score(image: np.ndarray, scene, masks, boxes: bool) -> dict[str, float]:
    regions = {s.words: region_of(s, masks, boxes, scene.size) for s in scene.shapes}
    precision, recall, binding = scoring.precision_recall_binding(image, [(s.color, s.kind) for s in scene.shapes])
    return {"miou": scoring.region_miou(image, regions), "precision": precision, "recall": recall,
            "binding": binding}


def odd_score(image: np.ndarray, odd: odd_layouts.OddLayout) -> dict[str, float]:
    """A layout of odd_layouts: mIoU against the regions as they should show (the top one
    where two overlap), precision and recall of the named colours, the odd region's own
    IoU, and for a ring the share of its hole that took the ring's colour. (No binding:
    a ring or a band has no kind to read.)"""
    ious = scoring.region_ious(image, odd.scored)
    precision, recall, _ = scoring.precision_recall_binding(image, [(s.color, s.kind) for s in odd.scene.shapes])
    record = {"category": odd.category, "miou": float(np.mean(list(ious.values()))), "precision": precision,
              "recall": recall, "odd_iou": ious[odd.odd]}
    if odd.hole is not None:
        record["hole_filled"] = float(scoring.colour_of(scoring.segment(image), odd.odd)[odd.hole].mean())
    return record


def evaluation_sets(layouts: str, sets: int, boxes: bool):
    """(seed, scene, the masks the method is given, the perfect image or None, scorer) per set."""
    if layouts == "odd":
        for seed, odd in odd_layouts.held_out(sets):
            yield seed, odd.scene, odd.given, odd_layouts.render(odd), functools.partial(odd_score, odd=odd)
        return
    for seed, scene in shapes.held_out(sets, (2, 4)):
        _, masks = shapes.render(scene)
        yield seed, scene, masks, None, functools.partial(score, scene=scene, masks=masks, boxes=boxes)


def run_row(row: Row, generate: Generator, sets: int, results: Path, images: Path, layouts: str = "objects") -> None:
    """Every image is kept (lossless PNG) under ``images`` so that --rescore can score
    them again without sampling; the first GRID_SETS also beside the results, for the grid."""
    path = results / f"{slug(row.name)}.jsonl"
    done = {json.loads(line)["seed"] for line in path.read_text().splitlines()} if path.exists() else set()
    (images / slug(row.name)).mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for index, (seed, scene, masks, truth, scorer) in enumerate(evaluation_sets(layouts, sets, row.boxes)):
            if seed in done:
                continue
            started = time.perf_counter()
            image = generate(row, seed, scene, masks, truth)
            seconds = time.perf_counter() - started
            record = {"seed": seed, **scorer(image), "seconds": seconds}
            f.write(json.dumps(record) + "\n")
            f.flush()
            Image.fromarray(image).save(images / slug(row.name) / f"{seed}.png")
            if index < GRID_SETS:
                Image.fromarray(image).save(results / f"{slug(row.name)}.{seed}.png")
            log.info("%s: set %d/%d mIoU %.3f (%.2f s)", row.name, index + 1, sets, record["miou"], seconds)


def rescore(row: Row, results: Path, images: Path) -> None:
    """Score a finished row's kept images again (after a change to maskattn_lab/scoring.py);
    each record keeps its sampling time."""
    out = [{**record, **score(image, scene, shapes.render(scene)[1], row.boxes)}
           for record, scene, image in kept(row.name, results, images)]
    (results / f"{slug(row.name)}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))


def bootstrap(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(rounds, len(v)))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


MEASURES = {"objects": ("miou", "precision", "recall", "binding"),
            "odd": ("miou", "precision", "recall")}


def records_of(row: Row, sets: int, results: Path) -> list[dict] | None:
    path = results / f"{slug(row.name)}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()][:sets] if path.exists() else None


def summarize(rows: list[Row], sets: int, results: Path, layouts: str = "objects") -> str:
    measures = MEASURES[layouts]
    extra = [f"{c} IoU" for c in odd_layouts.CATEGORIES] + ["ring hole filled"] if layouts == "odd" else []
    columns = ["row", "sets", *[m if m != "miou" else "mIoU" for m in measures], *extra, "s / image"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        records = records_of(row, sets, results)
        if records is None:
            continue
        cells = []
        for key in measures:
            mean, lo, hi = bootstrap([r[key] for r in records])
            cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
        if layouts == "odd":
            for category in odd_layouts.CATEGORIES:
                cells.append(f"{np.mean([r['odd_iou'] for r in records if r['category'] == category]):.3f}")
            cells.append(f"{np.mean([r['hole_filled'] for r in records if 'hole_filled' in r]):.3f}")
        seconds = float(np.median([r["seconds"] for r in records]))
        lines.append(f"| {row.name} | {len(records)} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    return "\n".join(lines)


def paired(rows: list[Row], against: list[str], sets: int, results: Path, layouts: str = "objects") -> str:
    """Each row minus each row of ``against``, set by set (same seeds): mean difference
    and its 95% bootstrap interval, per measure."""
    by_name = {r.name: r for r in rows}
    lines = ["| row | minus | " + " | ".join(MEASURES[layouts]) + " |", "|---|---|" + "---|" * len(MEASURES[layouts])]
    for base_name in against:
        base = records_of(by_name[base_name], sets, results) if base_name in by_name else None
        if base is None:
            continue
        base_by_seed = {r["seed"]: r for r in base}
        for row in rows:
            records = records_of(row, sets, results)
            if records is None or row.name in (base_name, "none") or row.reference:
                continue
            pairs = [(r, base_by_seed[r["seed"]]) for r in records if r["seed"] in base_by_seed]
            cells = []
            for key in MEASURES[layouts]:
                mean, lo, hi = bootstrap([a[key] - b[key] for a, b in pairs])
                cells.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
            lines.append(f"| {row.name} | {base_name} ({len(pairs)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid(rows: list[Row], results: Path, out: Path, layouts: str = "objects") -> None:
    """The first GRID_SETS sets of every row, regions outlined in their colours."""
    sets = [(seed, scene, truth if truth is not None else shapes.render(scene)[0])
            for seed, scene, _, truth, _ in itertools.islice(evaluation_sets(layouts, GRID_SETS, False), GRID_SETS)]
    cell, label = 128, 250
    present = [r for r in rows if (results / f"{slug(r.name)}.{sets[0][0]}.png").exists()]
    canvas = Image.new("RGB", (label + cell * len(sets), cell * (len(present) + 1)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (_, _, truth) in enumerate(sets):              # first line: the regions asked for
        canvas.paste(truth, (label + j * cell, 0))
    draw.text((4, cell // 2), "regions (ground truth)", fill="black")
    for i, row in enumerate(present, start=1):
        draw.text((4, i * cell + cell // 2), row.name, fill="black")
        for j, (seed, scene, _) in enumerate(sets):
            path = results / f"{slug(row.name)}.{seed}.png"
            if path.exists():
                canvas.paste(Image.open(path), (label + j * cell, i * cell))
            for s in scene.shapes:
                x0, y0, x1, y1 = s.box
                draw.rectangle((label + j * cell + x0, i * cell + y0, label + j * cell + x1, i * cell + y1),
                               outline=shapes.COLORS[s.color])
    canvas.save(out)


def quality(generate: Generator, count: int) -> str:
    """The model's own prompt following: how often single-object prompts give the named
    colour with the named kind, and two-object prompts show both colours; beside each,
    what the scene's own rendering scores once through the model's VAE (the ceiling)."""
    row = Row("none")

    def reading(image, scene) -> tuple[float, float]:
        """(every named colour present, every named colour in its named kind)"""
        found = scoring.objects(image)
        return (float(all(s.color in found for s in scene.shapes)),
                float(all(found.get(s.color) == s.kind for s in scene.shapes)))

    lines = []
    for objects in (1, 2):
        sampled, rendered = [], []
        for seed, scene in shapes.held_out(count, (objects, objects)):
            sampled.append(reading(generate(row, seed, scene, None), scene))
            rendered.append(reading(generate.reference(scene), scene))
        measures = [(1, "named colour with the named kind")] if objects == 1 else \
            [(0, "both named colours present"), (1, "both with the named kind")]
        for column, what in measures:
            mean, lo, hi = bootstrap([r[column] for r in sampled])
            ceiling = np.mean([r[column] for r in rendered])
            lines.append(f"{objects}-object prompts, {what}: {mean:.2f} [{lo:.2f}, {hi:.2f}] of {len(sampled)}"
                         f" (rendered scenes through the VAE: {ceiling:.2f})")
    return "\n".join(lines)


def trained(path: Path) -> str:
    """The model file and how long it trained: each --steps target of its runs."""
    train = demo_models.read_config(path).train
    targets = train.get("step_targets") or ([train["steps"]] if "steps" in train else [])
    return f"{path.name}, diffusion steps {' -> '.join(map(str, targets))}" if targets else f"{path.name}, untrained"


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--model", type=Path, default=None, help="shapes model file (default: the shipped one)")
    p.add_argument("--heads", action="append", default=[], metavar="NAME=PATH", help="gate heads to evaluate")
    p.add_argument("--sets", type=int, default=200, help="held-out scenes per row")
    p.add_argument("--rows", default="", help="row names to run, separated by ';' (names have commas; default: all)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--sampler", default="euler", help="the host's sampler name")
    p.add_argument("--scheduler", default="normal", help="the host's scheduler name")
    p.add_argument("--quality", type=int, default=0, help="instead: N single- and N two-object prompts, no control")
    p.add_argument("--summary-only", action="store_true", help="only rebuild the table and grid from the results")
    p.add_argument("--layouts", choices=("objects", "odd"), default="objects",
                   help="objects: held-out scenes, regions the objects' masks; odd: regions of shapes the model "
                        "never drew (maskattn_lab/odd_layouts.py)")
    p.add_argument("--densediffusion", type=Path, default=None,
                   help="a checkout of huchenlei/ComfyUI_densediffusion, for the DenseDiffusion row (never copied here)")
    p.add_argument("--results", type=Path, default=None, help="folder of the per-row results (default: "
                   "benchmarks/results/shapes_eval, or shapes_eval_odd)")
    p.add_argument("--images", type=Path, default=None, help="folder of every generated image (for --rescore)")
    p.add_argument("--rescore", action="store_true",
                   help="score the rows' kept images again instead of sampling, then summarise")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); on 2 cores two 1-thread runs over different --rows "
                        "beat one 2-thread run")
    args = p.parse_args(argv)
    # records, tables and grids of another family's shapes model beside the SDXL one's
    family = demo_models.read_config(args.model or demo_models.SHIPPED).family
    family_tag = "" if family == "sdxl" else f"_{family}"
    suffix = family_tag + ("" if args.layouts == "objects" else "_odd")
    results = args.results or RESULTS.with_name(RESULTS.name + suffix)
    args.images = args.images or IMAGES.with_name(IMAGES.name.replace("shapes_eval", "shapes_eval" + suffix))
    cli.setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)

    heads = {name: Path(path) for name, path in (h.split("=", 1) for h in args.heads)}
    rows = rows_for(heads)
    if args.rows:
        wanted = {r.strip() for r in args.rows.split(";")}
        unknown = wanted - {r.name for r in rows}
        if unknown:
            p.error(f"--rows: no row named {sorted(unknown)}; rows are {[r.name for r in rows]}")
        rows = [r for r in rows if r.name in wanted]
    results.mkdir(parents=True, exist_ok=True)
    if args.rescore:
        if args.layouts != "objects":
            p.error("--rescore reads the object scenes' images; rerun odd layouts instead")
        for row in rows:
            if (results / f"{slug(row.name)}.jsonl").exists():
                rescore(row, results, args.images)
    elif not args.summary_only:
        model, clip, vae = demo_models.load_shapes_model(args.model or demo_models.SHIPPED)
        generate = Generator(model, clip, vae, heads, args)
        if args.quality:
            report = quality(generate, args.quality)
            (results.parent / f"shapes_quality{family_tag}.md").write_text(
                f"model: {trained(args.model or demo_models.SHIPPED)}\n"
                f"settings: {args.sampler}/{args.scheduler}, {args.steps} steps, cfg {args.cfg}\n\n{report}\n")
            print(report)
            return 0
        for row in rows:
            run_row(row, generate, args.sets, results, args.images, args.layouts)
            if row.peer:
                (results / PEER_COMMIT).write_text(f"huchenlei/ComfyUI_densediffusion {generate.densediffusion_commit}\n")
    table = summarize(rows, args.sets, results, args.layouts)
    differences = paired(rows, PAIRED_AGAINST, args.sets, results, args.layouts)
    settings = (f"{args.sets} sets ({args.layouts} layouts), {args.sampler}/{args.scheduler}, {args.steps} steps, "
                f"cfg {args.cfg}; regions at all sites, in the first 30% of steps unless the row says otherwise")
    peer = (results / PEER_COMMIT).read_text().strip() if (results / PEER_COMMIT).exists() else "not run"
    report = (f"{settings}\nDenseDiffusion row: {peer}\n\n{table}\n\n"
              f"Paired differences (same seeds), mean [95% bootstrap interval]:\n\n{differences}\n")
    (results.parent / f"shapes_eval{suffix}.md").write_text(report)
    grid(rows, results, results.parent / f"shapes_eval{suffix}_grid.png", args.layouts)
    grid([r for r in rows_for({}) if r.name in FEATURED], results, results.parent / f"shapes_eval{suffix}_featured.png",
         args.layouts)
    print(report)
    return 0

