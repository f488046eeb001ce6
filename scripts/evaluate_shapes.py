"""Measure region control on the shapes model (mIoU, object precision/recall, binding).

Thin CLI over the lab: the options are in maskattn_lab/evaluate_shapes.py (`--help` lists them with
their defaults). Runs in the project's venv (scripts/setup.sh), where `maskattn_lab` and
this repo's package are importable.
"""
import sys

from maskattn_lab.evaluate_shapes import main

if __name__ == "__main__":
    sys.exit(main())
