"""Write the UI-format workflow templates in example_workflows/ (both forms of each).

Thin CLI over the lab: the options are in maskattn_lab/make_workflows.py (`--help` lists them with
their defaults). Runs in the project's venv (scripts/setup.sh), where `maskattn_lab` and
this repo's package are importable.
"""
import sys

from maskattn_lab.make_workflows import main

if __name__ == "__main__":
    sys.exit(main())
