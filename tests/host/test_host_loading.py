"""The extension loads in the real host from custom_nodes/, through its V3 entrypoint."""
import logging
import os

import torch

from maskattn_lab.host import REPO

OUR_NODE_IDS = {"MaskAttnLoadDemoModel", "MaskAttnLoadHeads", "MaskAttnApplyMaskedCrossAttention",
                "MaskAttnEncodeRegionPrompt", "MaskAttnBindRegion", "MaskAttnRegionGuidance",
                "MaskAttnVisualizeGates", "MaskAttnLoadTrainingSet", "MaskAttnTrainHeads"}
# Core nodes + comfy_extras without API nodes, by host version; fewer means a host module
# failed to import (e.g. the `utils` shadowing trap). Other versions: every comfy_extras
# module the host lists must have loaded (the host's own list, read at test time).
CORE_NODE_COUNT = {"0.3.64": 382}


def our_records(records):
    return [r for r in records if "maskattn" in r.getMessage().lower()]


def test_host_registers_our_nodes_from_custom_nodes(host_nodes):
    nodes, records = host_nodes
    assert OUR_NODE_IDS <= set(nodes.NODE_CLASS_MAPPINGS)
    ours = [d for d in nodes.LOADED_MODULE_DIRS.values() if os.path.realpath(d) == str(REPO)]
    assert ours, f"the host did not load {REPO} from custom_nodes/: {nodes.LOADED_MODULE_DIRS}"
    for node_id in OUR_NODE_IDS:
        assert ".nodes.nodes_" in nodes.NODE_CLASS_MAPPINGS[node_id].__module__


def test_host_logged_no_import_failure(host_nodes):
    _, records = host_nodes
    failures = [r.getMessage() for r in records
                if r.levelno >= logging.WARNING and ("Cannot import" in r.getMessage() or "IMPORT FAILED" in r.getMessage())]
    assert not failures, failures
    assert not [r for r in our_records(records) if r.levelno >= logging.WARNING]


def test_core_nodes_all_imported(host_nodes):
    import comfyui_version
    nodes, records = host_nodes
    core = [k for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k not in OUR_NODE_IDS and
            not getattr(v, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes.")]
    expected = CORE_NODE_COUNT.get(comfyui_version.__version__)
    if expected is not None:
        assert len(core) >= expected, len(core)
    failed = [r.getMessage() for r in records if "import failed" in r.getMessage().lower()
              or "Cannot import" in r.getMessage()]
    assert not failed and len(core) > 300, (len(core), failed)


def test_heads_folder_keeps_user_paths_and_offers_heads_files_only(host_nodes, tmp_path):
    """models/maskattn and the shipped heads are added after the paths that
    extra_model_paths.yaml gave, and Load MaskAttn Heads offers only heads files: not a
    text file, not another safetensors file (a model put there, or the shipped demo model
    beside the shipped heads)."""
    import folder_paths
    from safetensors.torch import save_file

    from comfyui_maskattn.maskattn_ops.heads import HeadSet, save_heads
    from comfyui_maskattn.maskattn_ops.sites import Site
    from comfyui_maskattn.nodes.model_folders import HEADS_FOLDER, SHIPPED_HEADS, heads_file_names, register_heads_folder
    saved = folder_paths.folder_names_and_paths.pop(HEADS_FOLDER, None)
    try:
        user = tmp_path / "user_heads"
        user.mkdir()
        save_heads(HeadSet.for_sites([Site(("input", 4, 0), 2, 64, 4, 16, 64)]), user / "mine.safetensors")
        save_file({"w": torch.zeros(1)}, str(user / "a_model.safetensors"))
        (user / "notes.txt").write_text("not heads")
        folder_paths.add_model_folder_path(HEADS_FOLDER, str(user))     # what extra_model_paths.yaml does
        register_heads_folder()
        paths = folder_paths.get_folder_paths(HEADS_FOLDER)
        assert paths[0] == str(user) and paths[1].endswith("models/maskattn") and paths[2] == str(SHIPPED_HEADS)
        offered = heads_file_names()
        assert "mine.safetensors" in offered and "a_model.safetensors" not in offered
        assert {"shapes_sdxl_heads.safetensors", "shapes_sdxl_heads_masksup.safetensors"} <= set(offered)
        assert "shapes_sdxl.safetensors" not in offered and not [n for n in offered if not n.endswith(".safetensors")]
        register_heads_folder()                                         # idempotent
        assert folder_paths.get_folder_paths(HEADS_FOLDER) == paths
    finally:
        folder_paths.folder_names_and_paths.pop(HEADS_FOLDER, None)
        if saved is not None:
            folder_paths.folder_names_and_paths[HEADS_FOLDER] = saved
