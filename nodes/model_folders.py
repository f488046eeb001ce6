"""The models/maskattn folder, registered with the host beside the user's own paths, and
the heads files it offers."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..maskattn_ops.heads import HeadsFileError, is_heads_file, load_heads

HEADS_FOLDER = "maskattn"
HEADS_EXTENSIONS = {".safetensors"}
# The heads that ship with the extension (made for its demo model), offered out of the box.
SHIPPED_HEADS = Path(__file__).resolve().parent.parent / "weights"


def register_heads_folder() -> None:
    """Adds models/maskattn and the shipped heads' folder after any paths that
    extra_model_paths.yaml gave (those stay first). Idempotent.

    A folder name the host first hears of gets an EMPTY extension set, which lists every
    file; heads load from safetensors only, so say so.
    """
    folder_paths.add_model_folder_path(HEADS_FOLDER, os.path.join(folder_paths.models_dir, HEADS_FOLDER))
    folder_paths.add_model_folder_path(HEADS_FOLDER, str(SHIPPED_HEADS))
    folder_paths.folder_names_and_paths[HEADS_FOLDER][1].update(HEADS_EXTENSIONS)


def heads_file_names() -> list[str]:
    """The files Load MaskAttn Heads offers: the folder's safetensors files whose metadata
    says they are MaskAttn heads (a model saved into the folder, or the shipped demo
    model beside the shipped heads, is not offered)."""
    return [name for name in folder_paths.get_filename_list(HEADS_FOLDER)
            if is_heads_file(folder_paths.get_full_path(HEADS_FOLDER, name))]


def heads_that_fit(sites, family: str) -> list[str]:
    """The offered heads files made for a model of this family with these sites and
    widths (for an error that says which file to pick instead)."""
    fitting = []
    for name in heads_file_names():
        try:
            load_heads(folder_paths.get_full_path(HEADS_FOLDER, name)).check_fits(sites, family=family)
        except HeadsFileError:
            continue
        fitting.append(name)
    return fitting
