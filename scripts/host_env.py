"""Find the ComfyUI host and import it in-process, the way its own main.py does.

Used by the tests and the headless scripts. The host is looked up in this order:
``COMFYUI_PATH``; the ComfyUI that holds this repo in its ``custom_nodes/``; the
project's own ``.host/ComfyUI`` (what scripts/setup.sh installs). No host is an error
that says how to get one, never a silent skip.
"""
from __future__ import annotations

import importlib.util
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


def load_package():
    """This repo as the package ``comfyui_maskattn`` (never with the repo root on
    sys.path: its ``nodes/`` would shadow the host's top-level ``nodes`` module)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def import_host(path: Path | None = None, cpu: bool | None = None, **host_args) -> Path:
    """Puts the host on sys.path and imports comfy (on the CPU when no GPU is usable, or
    when ``cpu`` says so). ``host_args`` are set on the host's command-line args first
    (e.g. use_pytorch_cross_attention=True, as ``--use-pytorch-cross-attention``); they
    act only on the first import. Idempotent."""
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
    return path
