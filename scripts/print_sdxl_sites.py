"""Print the cross-attention sites of the real SDXL UNet, as the host builds it (on the
meta device: no weights, no memory). Compare with the table in ../shared/DESIGN.md.

    .venv/bin/python scripts/print_sdxl_sites.py
"""
import sys

from maskattn_lab.sdxl_sites import main

if __name__ == "__main__":
    sys.exit(main())
