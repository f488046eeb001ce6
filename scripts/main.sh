#!/usr/bin/env bash
# Set up (idempotent), start the real ComfyUI headless with this extension loaded, run
# every shipped template in example_workflows/ (thumbnails beside them), and write the PNGs to
# output/ (or the folder given). `--serve` instead serves the ComfyUI UI on localhost.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
exec "${MASKATTN_VENV:-$REPO/.venv}/bin/python" "$REPO/scripts/run_workflows.py" "$@"
