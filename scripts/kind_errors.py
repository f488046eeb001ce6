"""Where the evaluation's wrong kinds come from, read from the images it kept.

Thin CLI over the lab: the options are in maskattn_lab/kind_errors.py (`--help` lists them with
their defaults). Runs in the project's venv (scripts/setup.sh), where `maskattn_lab` and
this repo's package are importable.
"""
import sys

from maskattn_lab.kind_errors import main

if __name__ == "__main__":
    sys.exit(main())
