"""Speed and peak memory of one heads training step, with and without gradient
checkpointing, beside a plain sampling forward, in one run.

Thin CLI over the lab: what is measured and the options are in maskattn_lab/bench_training.py
(`--help` lists them with their defaults).

    .venv/bin/python benchmarks/bench_training.py [--model sdxl] [--size 512] [--batch 1]
"""
import sys

from maskattn_lab.bench_training import main

if __name__ == "__main__":
    sys.exit(main())
