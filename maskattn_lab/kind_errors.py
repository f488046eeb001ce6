"""Where the evaluation's wrong kinds come from, read from the images it kept.

    python scripts/kind_errors.py --rows "none;gates mask-supervised" --out benchmarks/results/shapes_kind_errors.md

Binding (right colour in the right kind) fails two ways: an object drawn in the kind
the caption gives another object (attributes leaking across objects, the failure
MaskAttn-SDXL's gates are meant to fix) or in a kind nobody named (the model cannot
draw it). Each named object of each set is counted once (scoring.kind_errors);
the last column is the share of wrong kinds that are another object's, beside what a
wrong kind picked at random would give on the same scenes.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import cli, scoring, shapes
from .eval_records import IMAGES, RESULTS, kept, slug


def chance(scenes) -> float:
    """Share of wrong kinds that some other object of the scene is named with, if an
    object's wrong kind were either of the two others at random."""
    hits = total = 0
    for scene in scenes:
        for i, s in enumerate(scene.shapes):
            others = {o.kind for j, o in enumerate(scene.shapes) if j != i}
            for kind in shapes.KINDS:
                if kind != s.kind:
                    total += 1
                    hits += kind in others
    return hits / total


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--rows", required=True, help="row names, separated by ';'")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the per-row results (the sets to read)")
    p.add_argument("--images", type=Path, default=IMAGES, help="folder of the kept images")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)

    lines = ["| row | objects | " + " | ".join(scoring.KIND_ERRORS) + " | wrong kinds that are another's |",
             "|---" * (len(scoring.KIND_ERRORS) + 3) + "|"]
    read = {}                                            # seed -> scene, of every row
    for name in (r.strip() for r in args.rows.split(";")):
        if not (args.results / f"{slug(name)}.jsonl").exists():
            raise SystemExit(f"--rows: no results for {name!r} in {args.results}")
        counts = Counter()
        for record, scene, image in kept(name, args.results, args.images):
            counts.update(scoring.kind_errors(scoring.objects(image), [(s.color, s.kind) for s in scene.shapes]))
            read[record["seed"]] = scene
        total = sum(counts.values())
        wrong = counts[scoring.KIND_ERRORS[1]] + counts[scoring.KIND_ERRORS[2]]
        shares = " | ".join(f"{counts[k] / total:.3f}" for k in scoring.KIND_ERRORS)
        leaked = f"{counts[scoring.KIND_ERRORS[1]] / wrong:.2f}" if wrong else "-"
        lines.append(f"| {name} | {total} | {shares} | {leaked} |")
    table = "\n".join(lines) + f"\n\nA wrong kind picked at random would be another object's in {chance(read.values()):.2f} of cases.\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0

