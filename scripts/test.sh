#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on the real host. Extra arguments go
# to pytest (e.g. `bash scripts/test.sh -k patching`).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
cd "$REPO"
exec "${MASKATTN_VENV:-$REPO/.venv}/bin/pytest" tests "$@"
