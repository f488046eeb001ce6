"""Train the shapes demo model from scratch on rendered shapes.

Thin CLI over the lab: the options are in maskattn_lab/train_shapes_model.py (`--help` lists them with
their defaults). Runs in the project's venv (scripts/setup.sh), where `maskattn_lab` and
this repo's package are importable.
"""
import sys

from maskattn_lab.train_shapes_model import main

if __name__ == "__main__":
    sys.exit(main())
