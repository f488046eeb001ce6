"""Write rendered shapes scenes as image + caption + masks pairs for train_heads.py.

    python scripts/make_shapes_pairs.py --out data/shapes_pairs --count 4000

Seeds start at the shapes model's training base (shapes.TRAIN_SEED_BASE): the evaluation's scenes
(small seeds) are never among them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_env  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=4000)
    args = p.parse_args(argv)
    host_env.load_package()
    from comfyui_maskattn.evaluation import shapes
    written = shapes.write_pairs(args.out, range(shapes.TRAIN_SEED_BASE, shapes.TRAIN_SEED_BASE + args.count))
    print(f"wrote {written} pairs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
