"""Write rendered shapes scenes as image + caption + masks pairs for train_heads.py.

    python scripts/make_shapes_pairs.py --out data/shapes_pairs --count 4000

Seeds start at the shapes model's training base (shapes.TRAIN_SEED_BASE): the evaluation's scenes
(small seeds) are never among them.
"""
from __future__ import annotations

import sys
from pathlib import Path

from maskattn_lab import cli, shapes


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder to write the pairs to")
    p.add_argument("--count", type=int, default=4000, help="pairs (scenes) to write")
    args = p.parse_args(argv)
    written = shapes.write_pairs(args.out, range(shapes.TRAIN_SEED_BASE, shapes.TRAIN_SEED_BASE + args.count))
    print(f"wrote {written} pairs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
