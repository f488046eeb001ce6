"""Run the SDXL templates through Load Checkpoint on a checkpoint file in the real
ComfyUI server, and print each one's time per step and peak memory (see
maskattn_lab/checkpoint_run.py).

    .venv/bin/python scripts/run_on_checkpoint.py CHECKPOINT [--heads FILE] [--size 1024] [--steps 2]
"""
import sys

from maskattn_lab.checkpoint_run import main

if __name__ == "__main__":
    sys.exit(main())
