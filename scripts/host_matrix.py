"""Run the test suite against other ComfyUI releases and print a compatibility table.

Thin CLI over the lab: the options are in maskattn_lab/host_matrix.py (`--help` lists
them with their defaults). Runs in the project's venv (scripts/setup.sh).
"""
import sys

from maskattn_lab.host_matrix import main

if __name__ == "__main__":
    sys.exit(main())
