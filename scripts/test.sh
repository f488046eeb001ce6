#!/usr/bin/env bash
# Set up (idempotent) and run the test suite on the real host. Tiers (tests/<tier>/):
#   ops   pure torch, no host                       (seconds)
#   host  the real ComfyUI in-process, tiny models  (minutes)
#   e2e   servers, the browser, subprocess CLIs     (the rest)
# `--fast` runs ops and host only, for the inner loop; CI runs everything. Other
# arguments go to pytest (e.g. `bash scripts/test.sh --fast -k patching`).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TIERS=(tests)
if [ "${1:-}" = "--fast" ]; then
  shift
  TIERS=(tests/ops tests/host)
fi
bash "$REPO/scripts/setup.sh"
cd "$REPO"
exec "${MASKATTN_VENV:-$REPO/.venv}/bin/pytest" "${TIERS[@]}" "$@"
