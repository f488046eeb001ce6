"""Write an SDXL-layout checkpoint with random weights through the host's own save path
(and gate heads that fit it), for scripts/run_on_checkpoint.py and the suite (see
maskattn_lab/sdxl_checkpoint.py).

    .venv/bin/python scripts/write_sdxl_checkpoint.py --layout sdxl --out /tmp/sdxl.safetensors --heads /tmp/sdxl_heads.safetensors
"""
import sys

from maskattn_lab.sdxl_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
