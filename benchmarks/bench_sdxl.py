"""Speed and peak memory of every mode, patched / plain side by side in one run.

Thin CLI over the lab: what is measured and the options are in maskattn_lab/bench_sdxl.py
(`--help` lists them with their defaults).

    .venv/bin/python benchmarks/bench_sdxl.py [--sizes 512,1024] [--repeats 3] [--variants ...]
"""
import sys

from maskattn_lab.bench_sdxl import main

if __name__ == "__main__":
    sys.exit(main())
