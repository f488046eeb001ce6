"""Train MaskAttn-SDXL gate heads on a frozen checkpoint or a demo model (arXiv 2509.15357, Sec. 2.3).

Thin CLI over the lab: the options are in maskattn_lab/train_heads.py (`--help` lists them with
their defaults). Runs in the project's venv (scripts/setup.sh), where `maskattn_lab` and
this repo's package are importable.
"""
import sys

from maskattn_lab.train_heads import main

if __name__ == "__main__":
    sys.exit(main())
