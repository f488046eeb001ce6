"""Find the ComfyUI host and import it in-process, the way its own main.py does.

The lab's bootstrap (scripts, benchmarks, tests): lab modules that need ``comfy`` call
``import_host()`` before importing it. The host is looked up in this order:
``COMFYUI_PATH``; the ComfyUI that holds this repo in its ``custom_nodes/``; the
project's own ``.host/ComfyUI`` (what scripts/setup.sh installs). No host is an error
that says how to get one, never a silent skip.

This repo itself is importable as the package ``comfyui_maskattn`` and the lab as
``maskattn_lab`` through a path file that scripts/setup.sh puts in the venv (never the
repo root on sys.path: its ``nodes/`` would shadow the host's top-level ``nodes``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_maskattn"   # the import name of this repo (its custom_nodes/ folder name)


class HostNotFound(RuntimeError):
    pass


def find_host() -> Path:
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(("COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"])))
    if REPO.parent.name == "custom_nodes":
        candidates.append(("the custom_nodes parent", REPO.parent.parent))
    candidates.append(("the project's host folder", REPO / ".host" / "ComfyUI"))
    for _, path in candidates:
        if (path / "comfyui_version.py").is_file() and (path / "comfy").is_dir():
            return path.resolve()
    tried = "; ".join(f"{how}: {path}" for how, path in candidates)
    raise HostNotFound(f"no ComfyUI host found (tried {tried}). Run scripts/setup.sh, "
                       f"or set COMFYUI_PATH to a ComfyUI checkout at commit a125cd84.")


def import_host(path: Path | None = None, cpu: bool | None = None, **host_args) -> Path:
    """Puts the host on sys.path and imports comfy (on the CPU when no GPU is usable, or
    when ``cpu`` says so). ``host_args`` are set on the host's command-line args first
    (e.g. use_pytorch_cross_attention=True, as ``--use-pytorch-cross-attention``); they
    act only on the first import, and a later call that asks for other ones is an error.
    Idempotent."""
    global _imported
    if _imported is not None:
        if (cpu is not None and cpu != _imported[1]) or any(
                getattr(_cli_args(), k) != v for k, v in host_args.items()):
            raise RuntimeError(f"the host was already imported with other settings ({_imported}); "
                               f"import_host(cpu={cpu}, {host_args}) must come first")
        return _imported[0]
    path = path or find_host()
    # `python -m pytest` from the repo root puts the root on sys.path ("" or its path),
    # where our nodes/ would shadow the host's nodes module.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    # Must happen before comfy.model_management is imported, or the import looks for
    # an NVIDIA driver. Real users on a GPU start the host normally.
    if cpu is None:
        import torch
        cpu = not torch.cuda.is_available()
    if cpu:
        comfy.cli_args.args.cpu = True
    for name, value in host_args.items():
        if not hasattr(comfy.cli_args.args, name):
            raise AttributeError(f"the host has no command-line arg {name!r}")
        setattr(comfy.cli_args.args, name, value)
    # The host's main.py imports its `utils` package early; without that, comfy/utils.py
    # can end up as the top-level `utils` and a core node module fails to import.
    import utils.install_util  # noqa: F401
    import comfy.model_management  # noqa: F401
    _imported = (path, cpu)
    return path


_imported: tuple[Path, bool] | None = None    # (host path, on the CPU) once imported


def _cli_args():
    import comfy.cli_args
    return comfy.cli_args.args
