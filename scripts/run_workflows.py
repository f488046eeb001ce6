"""The main job: the shipped workflows on the demo model in a real, headless ComfyUI.

Thin CLI over the lab: the options are in maskattn_lab/run_workflows.py (`--help` lists them with
their defaults). Runs in the project's venv (scripts/setup.sh), where `maskattn_lab` and
this repo's package are importable.
"""
import sys

from maskattn_lab.run_workflows import main

if __name__ == "__main__":
    sys.exit(main())
