"""What trained gate heads do, measured on pairs with instance masks they did not train on.

Thin CLI over the lab: the options are in maskattn_lab/inspect_heads.py (`--help` lists them with
their defaults). Runs in the project's venv (scripts/setup.sh), where `maskattn_lab` and
this repo's package are importable.
"""
import sys

from maskattn_lab.inspect_heads import main

if __name__ == "__main__":
    sys.exit(main())
