#!/usr/bin/env bash
# Set up everything this extension needs on a fresh machine, idempotently:
#   a venv with the pinned torch, the pinned ComfyUI host and its requirements,
#   this repo linked into the host's custom_nodes/ and importable in the venv
#   (comfyui_maskattn, maskattn_lab), and the test tools (pytest;
#   Debian's chromium and npm's playwright-core for the browser test).
# A second run only checks stamps and returns in a second or two.
#
# Environment (all optional):
#   MASKATTN_VENV   where the venv lives            (default: <repo>/.venv)
#   COMFYUI_PATH    an existing ComfyUI to use      (default: <repo>/.host/ComfyUI)
#   COMFYUI_TARBALL the pinned host's source tarball (default: ../shared/host/...)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MASKATTN_VENV:-$REPO/.venv}"
HOST="${COMFYUI_PATH:-$REPO/.host/ComfyUI}"
HOST_COMMIT="a125cd84"   # ComfyUI v0.3.64, 2025-10-12: the host we test against
HOST_REPO_URL="https://github.com/Comfy-Org/ComfyUI.git"
TARBALL="${COMFYUI_TARBALL:-$REPO/../shared/host/ComfyUI-$HOST_COMMIT.tar.gz}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# requests: the host's requirements lack it, and without it a core extra-nodes module
# and the server fail to import. pytest: the test runner.
EXTRA_PINS=(requests pytest)
PACKAGE_NAME="comfyui_maskattn"   # the folder name under custom_nodes/ (an importable name)

log() { printf '[setup] %s\n' "$*"; }

# 1. venv ---------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() {
  # This machine's pip config lists local package folders that may be absent; pip warns
  # once per package about each. Keep pip's real output and exit status.
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

# 2. host ---------------------------------------------------------------------
if [ ! -f "$HOST/comfyui_version.py" ]; then
  mkdir -p "$(dirname "$HOST")"
  if [ -f "$TARBALL" ]; then
    log "unpacking the pinned host from $TARBALL"
    tar -xzf "$TARBALL" -C "$(dirname "$HOST")"
    [ "$(dirname "$HOST")/ComfyUI" = "$HOST" ] || mv "$(dirname "$HOST")/ComfyUI" "$HOST"
  else
    log "cloning ComfyUI at $HOST_COMMIT from $HOST_REPO_URL"
    git clone -q "$HOST_REPO_URL" "$HOST"
    git -C "$HOST" checkout -q "$HOST_COMMIT"
  fi
fi

# 3. Python packages, re-run only when the pins or the host's requirements change --
STAMP="$VENV/.maskattn-setup-stamp"
WANT="$(printf '%s\n' "${TORCH_PINS[@]}" "${EXTRA_PINS[@]}" | cat - "$HOST/requirements.txt" "$REPO/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "installing ${TORCH_PINS[*]} (first: the host's requirements must not pull another torch)"
  pip_install "${TORCH_PINS[@]}"
  log "installing the host's requirements, ours, and the test tools"
  pip_install -r "$HOST/requirements.txt" -r "$REPO/requirements.txt" "${TORCH_PINS[@]}" "${EXTRA_PINS[@]}"
  echo "$WANT" > "$STAMP"
fi

# 4. link this repo into the host's custom_nodes/ ------------------------------
LINK="$HOST/custom_nodes/$PACKAGE_NAME"
case "$REPO" in
  "$HOST/custom_nodes/"*) ;;   # already cloned inside custom_nodes/: nothing to link
  *)
    if [ "$(readlink -f "$LINK" 2>/dev/null)" != "$REPO" ]; then
      log "linking $LINK -> $REPO"
      rm -rf "$LINK"
      ln -s "$REPO" "$LINK"
    fi
    ;;
esac

# 5. this repo importable in the venv as the package comfyui_maskattn, and its lab as
# maskattn_lab, through a path file (never the repo root on sys.path: its nodes/ would
# shadow the host's top-level nodes module) --------------------------------------
IMPORTS="$VENV/maskattn-imports"
mkdir -p "$IMPORTS"
for pair in "$PACKAGE_NAME:$REPO" "maskattn_lab:$REPO/maskattn_lab"; do
  name="${pair%%:*}" target="${pair#*:}"
  if [ "$(readlink -f "$IMPORTS/$name" 2>/dev/null)" != "$target" ]; then
    rm -rf "${IMPORTS:?}/$name"
    ln -s "$target" "$IMPORTS/$name"
  fi
done
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$IMPORTS" > "$SITE/maskattn.pth"

# 6. the browser test's tools: Debian's Chromium and npm's playwright-core -------
# (no browser download: playwright-core drives /usr/bin/chromium)
if [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium (for the browser test of the workflow templates)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
BROWSER="$REPO/tests/browser"
NPM_STAMP="$BROWSER/node_modules/.maskattn-stamp"
NPM_WANT="$(sha256sum "$BROWSER/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$NPM_STAMP" 2>/dev/null)" != "$NPM_WANT" ]; then
  log "installing playwright-core for the browser test"
  (cd "$BROWSER" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$NPM_WANT" > "$NPM_STAMP"
fi

log "ready: venv $VENV, host $HOST"
