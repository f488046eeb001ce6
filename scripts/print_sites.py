"""Print the cross-attention sites of a full-size SDXL, SD1.x or SD2.x UNet, as the host
builds it (on the meta device: no weights, no memory). Compare SDXL's with the table in
../shared/DESIGN.md.

    .venv/bin/python scripts/print_sites.py [--family sdxl|sd1|sd2]
"""
import sys

from maskattn_lab.unet_sites import main

if __name__ == "__main__":
    sys.exit(main())
