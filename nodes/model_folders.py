"""The models/maskattn folder, registered with the host beside the user's own paths."""
from __future__ import annotations

import os

import folder_paths

HEADS_FOLDER = "maskattn"
HEADS_EXTENSIONS = {".safetensors"}


def register_heads_folder() -> None:
    """Adds models/maskattn without replacing paths that extra_model_paths.yaml gave.

    A folder name the host first hears of gets an EMPTY extension set, which lists every
    file; heads load from safetensors only, so say so.
    """
    folder_paths.add_model_folder_path(HEADS_FOLDER, os.path.join(folder_paths.models_dir, HEADS_FOLDER))
    folder_paths.folder_names_and_paths[HEADS_FOLDER][1].update(HEADS_EXTENSIONS)
